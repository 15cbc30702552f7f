"""`st infer`: θ for documents a model has not seen, through the same LM, prompt and cache that
made its training inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from st import console, records, vocab
from st.cache import LMCache
from st.errors import InputError
from st.prompt import Prompt
from st.train import TopicModel

if TYPE_CHECKING:
    from st.lm import LM

CHUNK = 1024


def check_lm(model: TopicModel, lm: LM, what: str) -> None:
    """Refuse inputs from another LM: the encoder only understands the hidden states it was trained on."""
    want = model.config.get("input_source") or model.config
    expected = want.get("lm") or {}
    if expected.get("fingerprint") != lm.identity["fingerprint"]:
        raise InputError(
            f"{what} is {lm.identity['model']} (weights {lm.identity['fingerprint']}), but the model was trained on "
            f"inputs from {expected.get('model')} (weights {expected.get('fingerprint')}); use that LM (--lm)"
        )


def check_store(model: TopicModel, attrs: dict[str, Any], name: str) -> None:
    want = model.config.get("input_source") or model.config
    source = attrs.get("hidden_source") or attrs
    for key in ("lm", "prompt", "max_tokens"):
        mine, theirs = want.get(key), source.get(key)
        if key == "lm":
            mine, theirs = (mine or {}).get("fingerprint"), (theirs or {}).get("fingerprint")
        if mine != theirs:
            raise InputError(
                f"the store's documents were encoded with another {key.replace('_', ' ')} than the model's "
                f"training documents ({theirs!r} vs {mine!r}); encode them again with the model's settings",
                name,
            )


def infer(
    path: str,
    model: TopicModel,
    load_lm: Callable[[], LM],
    cache: LMCache,
    out: IO[bytes],
    text_field: str = "text",
    lines: bool = False,
    batch_tokens: int | None = None,
    batch_size: int | None = None,
) -> int:
    """Print each document's record plus `theta` and `topic`; returns the number of documents."""
    name = records.source_name(path)
    source = model.config.get("input_source") or model.config
    prompt = Prompt(**source["prompt"]) if source.get("prompt") else Prompt()
    max_tokens = int(source.get("max_tokens") or 512)
    uses_lm = model.config["training"]["input"] == "hidden"
    lm: LM | None = None
    n = 0
    chunk: list[records.Document] = []

    def flush() -> None:
        nonlocal lm, n
        texts = [d.text for d in chunk]
        if uses_lm:
            if lm is None:
                lm = load_lm()
                check_lm(model, lm, "the LM")
            x, _ = lm.encode(texts, prompt, max_tokens, cache, batch_tokens=batch_tokens, batch_size=batch_size)
        else:
            x = vocab.bag_of_words(texts, model.vocab).toarray()
        theta = model.theta(np.asarray(x, dtype=np.float32))
        lines_out = []
        for d, t in zip(chunk, theta, strict=True):
            lines_out.append(
                records.dumps({**d.record, "theta": [round(float(v), 6) for v in t], "topic": int(t.argmax())}) + b"\n"
            )
        out.write(b"".join(lines_out))
        out.flush()
        n += len(chunk)
        chunk.clear()

    # Each store a record points into is read once per call: a store re-created between two calls is seen anew.
    seen: dict[str, dict[str, Any] | None] = {}
    with console.progress("st infer") as bar:
        for doc in records.read_documents(path, text_field, lines):
            if not doc.text:
                continue
            if isinstance(doc.record.get("_st"), dict):
                ref = doc.record["_st"]
                store_attrs = _store_attrs(ref.get("store"), seen)
                if store_attrs is not None:
                    check_store(model, store_attrs, f"{name}:{doc.line}")
            chunk.append(doc)
            if len(chunk) == CHUNK:
                flush()
                bar.advance(CHUNK)
        if chunk:
            bar.advance(len(chunk))
            flush()
    if n == 0:
        raise InputError("no documents (the input is empty or has only empty texts)", name)
    return n


def _store_attrs(path: object, seen: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The attributes of the store a record came from (never written), read once into `seen`."""
    from st.store import _read_attrs

    if not isinstance(path, str):
        return None
    if path not in seen:
        from pathlib import Path

        seen[path] = _read_attrs(Path(path))
    return seen[path]
