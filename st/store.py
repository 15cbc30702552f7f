"""A corpus's arrays, one row per document: on disk, the store (a Zarr v3 folder); in memory, a
`MemoryCorpus` with the same reading interface (`Corpus`), for Python callers who want no files.

Root attributes say what made it (format and version, the LM, the prompt, the vocabulary's
fingerprint, τ) and how far it got: `rows` counts the rows written so far, `complete` turns true
only when the run that wrote it finished. Records printed on stdout point at rows below `rows`.
"""

from __future__ import annotations

import abc
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import sparse

from st.errors import InputError
from st.options import CHUNK_ROWS, LOGITS_DTYPE

FORMAT = "st-store"
VERSION = 1

warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
warnings.filterwarnings("ignore", category=UserWarning, module="zarr.*")


def _array(group: zarr.Group, name: str) -> zarr.Array:
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise InputError(f"{name!r} is not an array", str(group.store))
    return node


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


def spans(rows: np.ndarray, chunk: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """`rows` grouped by the store chunk they lie in: (first row, last row + 1, the positions in
    `rows` of that chunk's rows), chunk by chunk, so that each chunk is read once."""
    if len(rows) == 0:
        return
    order = np.argsort(rows, kind="stable")
    cuts = np.flatnonzero(np.diff(rows[order] // chunk)) + 1
    for where in np.split(order, cuts):
        yield int(rows[where].min()), int(rows[where].max()) + 1, where


def _check_finite(values: np.ndarray, name: str, where: str, first: int = 0) -> None:
    if values.dtype.kind == "f" and values.size:
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            remedy = "train the model again" if "theta" in name else "re-create the store with `st softlabel`"
            raise InputError(f"row {first + int(np.argmax(bad))} of {name!r} holds NaN or Inf; {remedy}", where)


class Corpus(abc.ABC):
    """What training, inference and evaluation read: the arrays of `st softlabel` / `st embed`
    (`ids`, `records`, `hidden`, `logits`, `vocab`, the bag of words), the attributes that say what
    made them, and each model's θ. `path` is None for a corpus in memory."""

    path: Path | None
    attrs: dict[str, Any]
    rows: int

    @abc.abstractmethod
    def __contains__(self, name: str) -> bool:
        """Whether the corpus holds the array `name` (e.g. `logits`, `theta/MODEL-ID`)."""

    @abc.abstractmethod
    def array(self, name: str) -> np.ndarray:
        """The array `name`, one row per document (`vocab`: one per word)."""

    @abc.abstractmethod
    def bow(self) -> sparse.csr_matrix:
        """Documents x vocabulary word counts."""

    @abc.abstractmethod
    def write_theta(self, model_id: str, theta: np.ndarray, attrs: dict[str, Any]) -> None:
        """Keeps θ of every document under `theta/<model id>`."""

    @property
    def name(self) -> str:
        """How messages name it."""
        return str(self.path) if self.path is not None else "the corpus"

    def take(self, name: str, rows: Sequence[int]) -> list[Any]:
        """A few rows of an array, without reading the rest (search hits out of millions)."""
        values = self.array(name)
        return [values[j] for j in rows]

    def field(self, name: str, rows: Sequence[int] | None = None) -> list[Any]:
        """One field of the records of `rows` (all by default; None where a record lacks it),
        parsed a chunk at a time, so that a million records never sit in memory at once."""
        from st.records import parse_object

        if rows is not None:
            found = self.take("records", rows)
            return [parse_object(str(r), self.name, j).get(name) for r, j in zip(found, rows, strict=True)]
        out = []
        for start in range(0, self.rows, self.chunk_rows):
            part = self.read("records", start, start + self.chunk_rows)
            out += [parse_object(str(r), self.name, start + i).get(name) for i, r in enumerate(part)]
        return out

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start to stop of an array, without reading the rest."""
        return self.array(name)[start:stop]

    def bow_rows(self, start: int, stop: int) -> sparse.csr_matrix:
        """Rows start to stop of the bag of words, without reading the rest."""
        return self.bow()[start:stop]

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """The given rows (sorted, distinct) of an array, without reading the rest."""
        return self.array(name)[rows]

    def bow_of(self, rows: np.ndarray) -> sparse.csr_matrix:
        """The bag of words of the given rows (sorted, distinct), without reading the rest."""
        return self.bow()[rows]

    @property
    def vocab_size(self) -> int:
        return len(self.array("vocab"))

    @property
    def chunk_rows(self) -> int:
        """Rows that are read together: a store's chunk (reading part of one costs the whole)."""
        return CHUNK_ROWS

    def vocab(self) -> list[str]:
        return [str(w) for w in self.array("vocab")]

    def ids(self) -> list[str]:
        return [str(i) for i in self.array("ids")]

    def records(self) -> list[dict[str, Any]]:
        from st.records import parse_object

        return [parse_object(str(r), self.name, i) for i, r in enumerate(self.array("records"))]

    def theta(self, model_id: str) -> np.ndarray | None:
        key = f"theta/{model_id}"
        return self.array(key) if key in self else None

    @property
    def temperature(self) -> float | None:
        """τ the soft labels were made with."""
        tau = self.attrs.get("temperature")
        return None if tau is None else float(tau)

    def soft_label(self, temperature: float | None = None) -> np.ndarray:
        """softmax(logits / τ) of every document (τ: the corpus's own unless given)."""
        from st.train import soft_label

        tau = temperature if temperature is not None else self.temperature
        if tau is None:
            raise InputError("the corpus has no soft labels (no 'logits'); make it with `st softlabel`", self.name)
        return soft_label(self.array("logits"), tau)

    def __len__(self) -> int:
        return self.rows


class MemoryCorpus(Corpus):
    """A corpus held in memory: what `st.softlabel(texts)` returns when no store is asked for."""

    def __init__(self, attrs: dict[str, Any], arrays: dict[str, np.ndarray], bow: sparse.csr_matrix | None) -> None:
        self.path = None
        self.attrs = attrs
        self.arrays = arrays
        self._bow = bow
        self.rows = len(arrays["ids"])

    def __contains__(self, name: str) -> bool:
        return name in self.arrays or (name.startswith("bow") and self._bow is not None)

    def array(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise InputError(f"the corpus has no {name!r} array")
        return self.arrays[name]

    def bow(self) -> sparse.csr_matrix:
        if self._bow is None:
            raise InputError("the corpus has no bag of words; make it with `st softlabel`")
        return self._bow

    def write_theta(self, model_id: str, theta: np.ndarray, attrs: dict[str, Any]) -> None:
        self.arrays[f"theta/{model_id}"] = theta.astype(np.float32)

    def __repr__(self) -> str:
        kind = self.attrs.get("kind", "corpus")
        return f"<st.MemoryCorpus {kind}: {self.rows} documents>"


class MemoryWriter:
    """The in-memory counterpart of `StoreWriter`."""

    def __init__(
        self,
        attrs: dict[str, Any],
        hidden_size: int,
        vocab: Sequence[str] | None = None,
        logits_dtype: str = LOGITS_DTYPE,
    ) -> None:
        self.attrs = {"format": FORMAT, "version": VERSION, **attrs}
        self.logits_dtype = np.dtype(logits_dtype)
        self.vocab = None if vocab is None else np.asarray(list(vocab), dtype=object)
        self.parts: dict[str, list[Any]] = {"ids": [], "records": [], "hidden": [], "logits": [], "bow": []}
        self.hidden_size = hidden_size
        self.rows = 0
        self.corpus: MemoryCorpus | None = None

    def append(
        self,
        ids: Sequence[str],
        records: Sequence[str],
        hidden: np.ndarray,
        logits: np.ndarray | None = None,
        bow: sparse.csr_matrix | None = None,
    ) -> int:
        for name, value in (("ids", list(ids)), ("records", list(records)), ("hidden", hidden)):
            self.parts[name].append(value)
        if self.vocab is not None:
            self.parts["logits"].append(np.asarray(logits, dtype=self.logits_dtype))
            self.parts["bow"].append(bow)
        first = self.rows
        self.rows += len(ids)
        return first

    def finish(self) -> None:
        p = self.parts
        arrays = {
            "ids": np.asarray([i for part in p["ids"] for i in part], dtype=object),
            "records": np.asarray([r for part in p["records"] for r in part], dtype=object),
            "hidden": np.concatenate(p["hidden"]) if p["hidden"] else np.zeros((0, self.hidden_size), np.float32),
        }
        bow = None
        if self.vocab is not None:
            arrays["vocab"] = self.vocab
            empty = np.zeros((0, len(self.vocab)), self.logits_dtype)
            arrays["logits"] = np.concatenate(p["logits"]) if p["logits"] else empty
            bow = sparse.vstack(p["bow"], format="csr") if p["bow"] else sparse.csr_matrix((0, len(self.vocab)))
        self.corpus = MemoryCorpus({**self.attrs, "rows": self.rows, "complete": True}, arrays, bow)


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
        logits_dtype: str = LOGITS_DTYPE,
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
            g.create_array("logits", shape=(0, v), dtype=logits_dtype, chunks=(chunk_rows, v))
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
        _array(g, "ids").append(np.asarray(ids, dtype=object))
        _array(g, "records").append(np.asarray(records, dtype=object))
        _array(g, "hidden").append(hidden)
        if self.has_vocab:
            assert logits is not None and bow is not None
            _array(g, "logits").append(np.asarray(logits, dtype=_array(g, "logits").dtype))
            indptr = _array(g, "bow/indptr")
            nnz = int(np.asarray(indptr[-1]))
            _array(g, "bow/indices").append(bow.indices.astype(np.int32))
            _array(g, "bow/data").append(bow.data.astype(np.float32))
            indptr.append(bow.indptr[1:].astype(np.int64) + nnz)
        first = self.rows
        self.rows += len(ids)
        g.attrs["rows"] = self.rows  # last: a reader never sees a row that is not all there
        return first

    def finish(self) -> None:
        self.group.attrs["complete"] = True


class Store(Corpus):
    """A store opened for reading; refuses what it cannot trust."""

    path: Path

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
        self._nodes: dict[str, zarr.Array] = {}
        self._indptr: np.ndarray | None = None

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
            values = np.asarray(self.node(name)[: self.rows] if name != "vocab" else self.node(name)[:])
        except Exception as e:
            raise InputError(
                f"damaged {name!r} array ({type(e).__name__}); re-create the store", str(self.path)
            ) from None
        _check_finite(values, name, str(self.path))
        return values

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        if name not in self:
            raise InputError(f"the store has no {name!r} array", str(self.path))
        stop = min(stop, self.rows)
        try:
            values = np.asarray(self.node(name)[start:stop])
        except Exception as e:
            raise InputError(
                f"damaged {name!r} array ({type(e).__name__}); re-create the store", str(self.path)
            ) from None
        _check_finite(values, name, str(self.path), start)
        return values

    def bow(self) -> sparse.csr_matrix:
        return self.bow_rows(0, self.rows)

    def bow_rows(self, start: int, stop: int) -> sparse.csr_matrix:
        stop = min(stop, self.rows)
        indptr = self.bow_index()[start : stop + 1]
        first, last = int(indptr[0]), int(indptr[-1])
        indices = np.asarray(self.node("bow/indices")[first:last])
        data = np.asarray(self.node("bow/data")[first:last])
        return sparse.csr_matrix((data, indices, indptr - first), shape=(stop - start, self.vocab_size))

    def bow_index(self) -> np.ndarray:
        """The bag of words' CSR index (8 bytes a document), read once: a chunk then costs two reads."""
        if self._indptr is None:
            self._indptr = np.asarray(self.node("bow/indptr")[: self.rows + 1])
        return self._indptr

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        if name not in self:
            raise InputError(f"the store has no {name!r} array", str(self.path))
        node = self.node(name)
        try:
            values = np.asarray(node.oindex[(rows,) + (slice(None),) * (node.ndim - 1)])
        except Exception as e:
            raise InputError(
                f"damaged {name!r} array ({type(e).__name__}); re-create the store", str(self.path)
            ) from None
        _check_finite(values, name, str(self.path), int(rows[0]) if len(rows) else 0)
        return values

    def bow_of(self, rows: np.ndarray) -> sparse.csr_matrix:
        index = self.bow_index()
        starts, ends = index[rows], index[np.asarray(rows) + 1]
        lengths = ends - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        # The positions of every row's entries, in one request per array.
        where = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        if len(where):
            indices = np.asarray(self.node("bow/indices").oindex[where])
            data = np.asarray(self.node("bow/data").oindex[where])
        else:
            indices, data = np.zeros(0, np.int32), np.zeros(0, np.float32)
        return sparse.csr_matrix((data, indices, indptr), shape=(len(rows), self.vocab_size))

    @property
    def vocab_size(self) -> int:
        return int(self.node("vocab").shape[0])

    def node(self, name: str) -> zarr.Array:
        """The array `name`, opened once (opening reads its metadata from disk)."""
        if name not in self._nodes:
            self._nodes[name] = _array(self.group, name)
        return self._nodes[name]

    @property
    def chunk_rows(self) -> int:
        node = self.group.get("logits") or self.group.get("hidden")
        return int(node.chunks[0]) if isinstance(node, zarr.Array) else CHUNK_ROWS

    def take(self, name: str, rows: Sequence[int]) -> list[Any]:
        wanted = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(wanted) and not (0 <= wanted.min() and wanted.max() < self.rows):
            raise InputError(f"no row {int(wanted.max())} in the store ({self.rows} rows)", str(self.path))
        out: list[Any] = [None] * len(wanted)
        for start, stop, where in spans(wanted, self.chunk_rows):  # each chunk read once
            block = self.read(name, start, stop)
            for w in where.tolist():
                out[w] = block[wanted[w] - start]
        return out

    def write_theta(self, model_id: str, theta: np.ndarray, attrs: dict[str, Any]) -> None:
        """θ of every row under `theta/<model id>`, beside other models' θ."""
        group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
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

    def __repr__(self) -> str:
        return f"<st.Store {self.path}: {self.rows} documents>"


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
    swap = group.attrs[SWAP]
    assert isinstance(swap, dict)
    attrs = {k: v for k, v in group.attrs.items() if k != SWAP}
    group.attrs.put({**attrs, **swap})


def embed_target(path: str | Path) -> Store | None:
    """The finished soft-label store at `path` that `st embed` should add to, if there is one."""
    attrs = _read_attrs(Path(path))
    if attrs is None or attrs.get("kind") != "softlabel" or not attrs.get("complete"):
        return None
    return Store(path)
