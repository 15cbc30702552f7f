"""The store: a Zarr v3 folder that holds a corpus's arrays, one row per document.

Root attributes say what made it (format and version, the LM, the prompt, the vocabulary's
fingerprint, τ) and how far it got: `rows` counts the rows written so far, `complete` turns true
only when the run that wrote it finished. Records printed on stdout point at rows below `rows`.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import sparse

from st.errors import InputError

FORMAT = "st-store"
VERSION = 1
CHUNK_ROWS = 1024

warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
warnings.filterwarnings("ignore", category=UserWarning, module="zarr.*")


def _read_attrs(path: Path) -> dict[str, Any] | None:
    """The root attributes if `path` is an st store (complete or not), else None."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    return attrs if isinstance(attrs, dict) and attrs.get("format") == FORMAT else None


class StoreWriter:
    """Appends chunks of rows; a chunk's arrays are written before `rows` says they exist."""

    def __init__(
        self,
        path: str | Path,
        attrs: dict[str, Any],
        hidden_size: int,
        vocab: Sequence[str] | None = None,
        chunk_rows: int = CHUNK_ROWS,
        force: bool = False,
    ) -> None:
        self.path = Path(path).absolute()
        if self.path.exists():
            if _read_attrs(self.path) is None and not (self.path.is_dir() and not any(self.path.iterdir())):
                raise InputError("exists and is not an st store; name another output or remove it", str(path))
            models = self.path / "models"
            if not force and models.is_dir() and any(models.iterdir()):
                raise InputError(
                    "this store holds trained models, which replacing it would delete; "
                    "name another output, or pass --force",
                    str(path),
                )
            shutil.rmtree(self.path)
        try:
            self.group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
        except OSError as e:
            raise InputError(f"cannot create the store: {e.strerror}", str(path)) from None
        self.group.attrs.update({"format": FORMAT, "version": VERSION, **attrs, "rows": 0, "complete": False})
        g = self.group
        g.create_array("ids", shape=(0,), dtype=str, chunks=(chunk_rows,))
        g.create_array("records", shape=(0,), dtype=str, chunks=(chunk_rows,))
        g.create_array("hidden", shape=(0, hidden_size), dtype="float32", chunks=(chunk_rows, hidden_size))
        self.has_vocab = vocab is not None
        if vocab is not None:
            v = len(vocab)
            g.create_array("vocab", shape=(v,), dtype=str, chunks=(max(v, 1),))[:] = np.asarray(vocab, dtype=object)
            g.create_array("logits", shape=(0, v), dtype="float32", chunks=(chunk_rows, v))
            bow = g.create_group("bow")
            bow.create_array("indptr", shape=(1,), dtype="int64", chunks=(1 << 16,))[:] = np.zeros(1, np.int64)
            bow.create_array("indices", shape=(0,), dtype="int32", chunks=(1 << 18,))
            bow.create_array("data", shape=(0,), dtype="float32", chunks=(1 << 18,))
        self.rows = 0

    def append(
        self,
        ids: Sequence[str],
        records: Sequence[str],
        hidden: np.ndarray,
        logits: np.ndarray | None = None,
        bow: sparse.csr_matrix | None = None,
    ) -> int:
        """Writes the rows and returns the index of the first."""
        g = self.group
        g["ids"].append(np.asarray(ids, dtype=object))
        g["records"].append(np.asarray(records, dtype=object))
        g["hidden"].append(hidden)
        if self.has_vocab:
            assert logits is not None and bow is not None
            g["logits"].append(logits)
            indptr = g["bow/indptr"]
            nnz = int(indptr[-1])
            g["bow/indices"].append(bow.indices.astype(np.int32))
            g["bow/data"].append(bow.data.astype(np.float32))
            indptr.append(bow.indptr[1:].astype(np.int64) + nnz)
        first = self.rows
        self.rows += len(ids)
        g.attrs["rows"] = self.rows  # last: a reader never sees a row that is not all there
        return first

    def finish(self) -> None:
        self.group.attrs["complete"] = True


class Store:
    """A store opened for reading; refuses what it cannot trust."""

    def __init__(self, path: str | Path, require_complete: bool = True) -> None:
        self.path = Path(path).absolute()
        name = str(path)
        if not self.path.is_dir():
            raise InputError("no such store (make one with `st softlabel -o`)", name)
        meta = self.path / "zarr.json"
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
        except (OSError, ValueError, AttributeError):
            raise InputError("not a readable st store (zarr.json missing or truncated)", name) from None
        if attrs.get("format") != FORMAT:
            raise InputError("not an st store", name)
        if attrs.get("version") != VERSION:
            raise InputError(
                f"store format version {attrs.get('version')} is not supported by this st (version {VERSION}); "
                "re-create it with `st softlabel`",
                name,
            )
        if SWAP in attrs:  # an `st embed` onto this store was interrupted while swapping: finish it
            try:
                finish_hidden_swap(self.path)
                attrs = json.loads(meta.read_text()).get("attributes", {})
            except OSError as e:
                raise InputError(
                    f"an interrupted `st embed` left this store half-updated and it cannot be finished "
                    f"here ({e.strerror}); run that `st embed` again",
                    name,
                ) from None
        if require_complete and not attrs.get("complete"):
            raise InputError(
                f"incomplete store: its run stopped after {attrs.get('rows', 0)} rows; run the same command "
                "again to finish it (finished work is cached)",
                name,
            )
        try:
            self.group = zarr.open_group(str(self.path), mode="r", zarr_format=3)
        except Exception as e:  # zarr raises many kinds for a damaged folder
            raise InputError(f"damaged store ({type(e).__name__}); re-create it with `st softlabel`", name) from None
        self.attrs: dict[str, Any] = dict(attrs)
        self.rows = int(attrs.get("rows", 0))

    def __contains__(self, name: str) -> bool:
        try:
            self.group[name]
        except KeyError:
            return False
        return True

    def array(self, name: str) -> np.ndarray:
        if name not in self:
            raise InputError(f"the store has no {name!r} array", str(self.path))
        try:
            values = np.asarray(self.group[name][: self.rows] if name != "vocab" else self.group[name][:])
        except Exception as e:
            raise InputError(
                f"damaged {name!r} array ({type(e).__name__}); re-create the store", str(self.path)
            ) from None
        if values.dtype.kind == "f":
            bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
            if bad.any():
                remedy = "train the model again" if "theta" in name else "re-create the store with `st softlabel`"
                raise InputError(f"row {int(np.argmax(bad))} of {name!r} holds NaN or Inf; {remedy}", str(self.path))
        return values

    def vocab(self) -> list[str]:
        return [str(w) for w in self.array("vocab")]

    def ids(self) -> list[str]:
        return [str(i) for i in self.array("ids")]

    def bow(self) -> sparse.csr_matrix:
        indptr = np.asarray(self.group["bow/indptr"][: self.rows + 1])
        nnz = int(indptr[-1])
        indices = np.asarray(self.group["bow/indices"][:nnz])
        data = np.asarray(self.group["bow/data"][:nnz])
        return sparse.csr_matrix((data, indices, indptr), shape=(self.rows, len(self.vocab())))


class HiddenWriter:
    """`st embed` into a finished soft-label store of the same documents: the new hidden states are
    written beside the old ones and swapped in only when all rows are there, so the store stays
    complete and its soft labels are never lost, whatever happens midway."""

    def __init__(self, store: Store, hidden_size: int, source: dict[str, Any], chunk_rows: int = CHUNK_ROWS) -> None:
        self.store = store
        self.path = store.path
        self.expected = store.ids()
        self.source = source
        self.rows = 0
        self.tmp = self.path / "hidden-new"
        shutil.rmtree(self.tmp, ignore_errors=True)  # left by an interrupted run
        group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        self.array = group.create_array(
            "hidden-new", shape=(0, hidden_size), dtype="float32", chunks=(chunk_rows, hidden_size)
        )

    def append(self, ids: Sequence[str], records: Sequence[str], hidden: np.ndarray, *_: object) -> int:
        for i, doc_id in enumerate(ids):
            row = self.rows + i
            if row >= len(self.expected) or self.expected[row] != doc_id:
                shutil.rmtree(self.tmp, ignore_errors=True)
                found = self.expected[row] if row < len(self.expected) else "nothing"
                raise InputError(
                    f"row {row} holds {found!r}, the input has {doc_id!r}: st embed adds hidden states to a store "
                    "of the same documents only; name another -o",
                    str(self.path),
                )
        self.array.append(hidden)
        first = self.rows
        self.rows += len(ids)
        return first

    def finish(self) -> None:
        if self.rows != len(self.expected):
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise InputError(
                f"the input has {self.rows} documents, the store {len(self.expected)}: st embed adds hidden states "
                "to a store of the same documents only; name another -o",
                str(self.path),
            )
        # The intent goes into the root attributes first (an atomic write); from then on any opening
        # of the store finishes the swap, whatever step a kill interrupted.
        group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        group.attrs[SWAP] = {"hidden_source": self.source, "hidden_size": int(self.array.shape[1])}
        finish_hidden_swap(self.path)


SWAP = "hidden_swap"


def finish_hidden_swap(path: Path) -> None:
    """Moves `hidden-new` in place of `hidden` and records its source, as `HiddenWriter.finish`
    began to; each step can be repeated, so a swap killed anywhere is finished by the next open."""
    new, current, old = path / "hidden-new", path / "hidden", path / "hidden-old"
    if new.is_dir():
        if current.is_dir():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(current, old)
        os.rename(new, current)
    shutil.rmtree(old, ignore_errors=True)
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    swap = dict(group.attrs[SWAP])
    attrs = {k: v for k, v in group.attrs.items() if k != SWAP}
    group.attrs.put({**attrs, **swap})


def embed_target(path: str | Path) -> Store | None:
    """The finished soft-label store at `path` that `st embed` should add to, if there is one."""
    attrs = _read_attrs(Path(path))
    if attrs is None or attrs.get("kind") != "softlabel" or not attrs.get("complete"):
        return None
    return Store(path)


def write_theta(store: Store, model_id: str, theta: np.ndarray, attrs: dict[str, Any]) -> None:
    """θ of every row of the store under `theta/<model id>`, beside other models' θ."""
    group = zarr.open_group(str(store.path), mode="r+", zarr_format=3)
    k = theta.shape[1]
    arr = group.create_array(
        f"theta/{model_id}", shape=theta.shape, dtype="float32", chunks=(CHUNK_ROWS, k), overwrite=True
    )
    arr[:] = theta
    arr.attrs.update(attrs)
    # log θ too: a search query is then one matrix-vector product over it.
    log = group.create_array(
        f"log_theta/{model_id}", shape=theta.shape, dtype="float32", chunks=(CHUNK_ROWS, k), overwrite=True
    )
    log[:] = np.log(np.clip(theta, 1e-12, None)).astype(np.float32)
