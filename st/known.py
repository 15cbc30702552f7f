"""An LM as st already knows it, without loading it: its identity, hidden size, whether its logits
are its head applied to the hidden state, where the head's rows lie in its files, and the
vocabularies it has projected. The facts are recorded (and the head read from the files checked
bit for bit against the loaded weights) the first time the model is loaded; later, a run whose
every document is in the LM cache needs neither torch nor transformers.

Only on CPU: where a GPU may be present, only torch can tell which device (and so which dtype)
a run would use."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from st.lm_files import ModelSource, dtype_name, resolve

FACTS_VERSION = 2
GPU_DEVICES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg")


def gpu_possible() -> bool:
    """Whether torch might find a GPU here (NVIDIA, AMD ROCm, WSL, Apple): then ask torch."""
    return platform.system() == "Darwin" or any(os.path.exists(p) for p in GPU_DEVICES)


def facts_dir(cache_dir: Path, identity: dict[str, str]) -> Path:
    key = hashlib.sha256(json.dumps({**identity, "v": FACTS_VERSION}, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / "facts" / key


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: Any) -> None:
    """Atomically; facts are a cache, so a folder that cannot be written is left alone."""
    tmp = path.with_name(f".{path.name}-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values as a model of `dtype` holds them (round to nearest even, as torch casts)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        u = x.view(np.uint32).astype(np.uint64)
        rounded = (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) & np.uint64(0xFFFF0000)
        return rounded.astype(np.uint32).view(np.float32)
    return x


def head_file(folder: Path, tensor: str) -> Path | None:
    """The safetensors file that holds `tensor` (one file, or a sharded index)."""
    index = read_json(folder / "model.safetensors.index.json")
    if isinstance(index, dict):
        name = index.get("weight_map", {}).get(tensor)
        return folder / name if name else None
    single = folder / "model.safetensors"
    return single if single.is_file() else None


def read_head(folder: Path, head: dict[str, Any], token_ids: np.ndarray, dtype: str):
    """The head's rows (and bias) for `token_ids` from the model's files, as the loaded model has them."""
    from safetensors import safe_open

    rows = np.asarray(token_ids, dtype=np.int64)
    with safe_open(str(folder / head["file"]), framework="numpy") as f:
        w = round_to(f.get_tensor(head["tensor"])[rows], dtype)
        b = round_to(f.get_tensor(head["bias"])[rows], dtype) if head.get("bias") else None
    return w, b


# Words whose projection must agree between transformers' tokenizer and tokenizer.json read alone
# before the latter is trusted: plain, capitalised, hyphenated, digits, accents, CJK, rare pieces.
PROBE = (
    "the topic javascript jquery haskell Oracle SQL c++ c# .net node.js x86_64 e-mail 2024 naïve café "
    "straße Москва 東京 emoji🙂 qtwebkit nstableview don't U.S. well-known ß ŉ ﬁ tab\tword"
).split(" ")


class FastTokenizer:
    """A model's tokenizer.json through the tokenizers library alone (no transformers), with the
    two calls `st.vocab.project` makes."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        encoded = self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encoded]}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def same_projection(tokenizer: Any, folder: Path) -> bool:
    """Whether tokenizer.json alone projects words as the loaded tokenizer does."""
    from st import vocab

    try:
        fast = vocab.project(list(PROBE), FastTokenizer(folder / "tokenizer.json"))
        slow = vocab.project(list(PROBE), tokenizer)
    except Exception:  # no tokenizer.json, or one the library cannot read
        return False
    return fast.tokens == slow.tokens and fast.pieces == slow.pieces


@dataclass
class Known:
    """What the encoder asks of an LM when every document is cached (`st.lm.LM` answers the same)."""

    source: ModelSource
    identity: dict[str, str]
    hidden_size: int
    head_is_exact: bool
    folder: Path
    head: dict[str, Any] | None  # {"file", "tensor", "bias"}: where the output head's rows are
    facts: Path
    fast_tokenizer: bool = False  # tokenizer.json alone projects words as transformers does

    @classmethod
    def find(cls, model: str | None, device: str, dtype: str, cache_dir: Path) -> Known | None:
        """The LM's recorded facts, or None: not recorded yet, or a device only torch can decide."""
        if device not in ("auto", "cpu") or (device == "auto" and gpu_possible()):
            return None
        source = resolve(model)
        identity = {**source.identity, "dtype": dtype_name(dtype, "cpu")}
        where = facts_dir(cache_dir, identity)
        facts = read_json(where / "lm.json")
        if not isinstance(facts, dict) or facts.get("identity") != identity:
            return None
        folder = (
            source.path if source.path.is_dir() else cache_dir / "models" / f"{source.path.stem}-{source.fingerprint}"
        )
        if not (folder / "config.json").is_file():
            return None
        return cls(
            source,
            identity,
            int(facts["hidden_size"]),
            bool(facts["head_is_exact"]),
            folder,
            facts.get("head"),
            where,
            bool(facts.get("fast_tokenizer")),
        )

    def vocab_head(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The head's rows for the vocabulary, or None where they could not be read from the files."""
        if self.head is None:
            return None
        try:
            return read_head(self.folder, self.head, token_ids, self.identity["dtype"])
        except Exception:  # a file changed under us: the loaded model will answer
            return None

    def tokenizer(self) -> FastTokenizer | None:
        """What projects a new vocabulary without transformers, where that was checked to agree."""
        try:
            return FastTokenizer(self.folder / "tokenizer.json") if self.fast_tokenizer else None
        except Exception:
            return None

    def projection(self, fingerprint: str) -> Any:
        return read_json(self.facts / f"projection-{fingerprint}.json")


def recorded(cache_dir: Path, identity: dict[str, str]) -> bool:
    return isinstance(read_json(facts_dir(cache_dir, identity) / "lm.json"), dict)


def record(
    cache_dir: Path,
    identity: dict[str, str],
    folder: Path,
    hidden_size: int,
    head_is_exact: bool,
    names: list[str],
    bias_names: list[str],
    rows: int,
    loaded_rows: Any,
    tokenizer: Any = None,
) -> None:
    """Written by the loaded LM once per identity. `names`: what the head's weight may be called in
    the files (tied weights have several names; the files keep one). The location is kept only when
    the rows read from the files equal the loaded weights (`loaded_rows(ids)`) bit for bit."""
    ids = np.unique(np.r_[0 : min(16, rows), np.linspace(0, rows - 1, 64).astype(np.int64)])
    head = None
    for tensor in names:
        path = head_file(folder, tensor)
        if path is None:
            continue
        biases: list[str | None] = list(bias_names) or [None]
        for bias in biases:
            candidate = {"file": path.name, "tensor": tensor, "bias": bias}
            try:
                w, b = read_head(folder, candidate, ids, identity["dtype"])
                w_ref, b_ref = loaded_rows(ids)
                same = np.array_equal(w, w_ref) and (b is None) == (b_ref is None)
                same = same and (b is None or np.array_equal(b, b_ref))
            except Exception:  # not in this file, or not readable without torch: the loaded model answers
                same = False
            if same:
                head = candidate
                break
        if head is not None:
            break
    facts = {
        "identity": identity,
        "hidden_size": hidden_size,
        "head_is_exact": head_is_exact,
        "head": head,
        "fast_tokenizer": tokenizer is not None and same_projection(tokenizer, folder),
    }
    write_json(facts_dir(cache_dir, identity) / "lm.json", facts)


def record_projection(facts: Path, fingerprint: str, value: Any) -> None:
    write_json(facts / f"projection-{fingerprint}.json", value)
