"""`st infer`: θ for documents a model has not seen, through the same LM, prompt and cache that
made its training inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from st import progress, records, vocab
from st.cache import LMCache
from st.embedder import features
from st.errors import InputError
from st.options import CHUNK_ROWS, EncodeOptions
from st.prompt import Prompt
from st.train import Fitted

if TYPE_CHECKING:
    from st.embedder import SentenceEmbedder
    from st.encoder import Encoder
    from st.known import Known
    from st.lm import LM

CHUNK = CHUNK_ROWS


def check_lm(model: Fitted, lm: LM | Known, what: str) -> None:
    """Refuse inputs from another LM: the encoder only understands the hidden states it was trained on."""
    want = model.config.get("input_source") or model.config
    expected = want.get("lm") or {}
    if want.get("embedder"):  # the LM beside a sentence embedder
        expected = want["embedder"].get("with_lm") or {}
    if expected.get("fingerprint") != lm.identity["fingerprint"]:
        raise InputError(
            f"{what} is {lm.identity['model']} (weights {lm.identity['fingerprint']}), but the model was trained on "
            f"inputs from {expected.get('model')} (weights {expected.get('fingerprint')}); use that LM (--lm)"
        )


def check_store(model: Fitted, attrs: dict[str, Any], name: str) -> None:
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
    documents: Iterable[records.Document],
    model: Fitted,
    load_lm: Callable[[], LM],
    cache: LMCache,
    batch_tokens: int | None = None,
    lm_batch_size: int | None = None,
    name: str = "the input",
    known: Callable[[], Known | None] | None = None,
) -> Iterator[tuple[list[records.Document], np.ndarray]]:
    """θ of documents, a chunk at a time, through the LM, prompt and cache that made the model's
    training inputs. The LM is loaded at the first chunk that needs it; with `known` (the LM as
    recorded when it was last loaded here, `st.known`), only for documents the cache lacks. Empty
    documents are left out; records that point into a store made with another LM or prompt are
    refused."""
    source = model.config.get("input_source") or model.config
    prompt = Prompt(**source["prompt"]) if source.get("prompt") else Prompt()
    max_tokens = int(source.get("max_tokens") or EncodeOptions.max_tokens)
    uses_lm = model.config["training"]["input"] == "hidden"
    embedding = source.get("embedder") if uses_lm else None
    embedder: SentenceEmbedder | None = None
    encoder: Encoder | None = None
    n = 0
    chunk: list[records.Document] = []

    def theta_of(texts: list[str]) -> np.ndarray:
        nonlocal encoder, embedder
        if embedding is not None and embedder is None:
            embedder = trained_embedder(embedding, cache)
        if uses_lm and (embedding is None or embedding.get("with_lm")):
            if encoder is None:
                from st.encoder import Encoder

                view = known() if known is not None else None
                lm = view if view is not None else load_lm()
                check_lm(model, lm, "the LM")
                encoder = Encoder(lm, cache, load_lm)
            x, _ = encoder.encode(texts, prompt, max_tokens, batch_tokens=batch_tokens, batch_size=lm_batch_size)
            if embedder is not None:
                x = features(embedder.embed(texts), x)
        elif embedder is not None:
            x = features(embedder.embed(texts), None)
        else:
            x = vocab.bag_of_words(texts, model.vocab).toarray()
        return model.theta(np.asarray(x, dtype=np.float32))

    # Each store a record points into is read once per call: a store re-created between two calls is seen anew.
    seen: dict[str, dict[str, Any] | None] = {}
    with progress.task("st infer") as bar:
        for doc in documents:
            if not doc.text:
                continue
            if isinstance(doc.record.get("_st"), dict):
                ref = doc.record["_st"]
                store_attrs = _store_attrs(ref.get("store"), seen)
                if store_attrs is not None:
                    check_store(model, store_attrs, f"{name}:{doc.line}")
            chunk.append(doc)
            if len(chunk) == CHUNK:
                yield list(chunk), theta_of([d.text for d in chunk])
                bar.advance(len(chunk))
                n += len(chunk)
                chunk.clear()
        if chunk:
            yield list(chunk), theta_of([d.text for d in chunk])
            bar.advance(len(chunk))
            n += len(chunk)
    if n == 0:
        raise InputError("no documents (the input is empty or has only empty texts)", name)


def trained_embedder(spec: dict[str, Any], cache: LMCache | None = None) -> SentenceEmbedder:
    """The sentence embedder a model was trained on, refused if its weights are not the same."""
    from st.embedder import SentenceEmbedder, resolve

    source = resolve(spec["name"])
    if source.fingerprint != spec["fingerprint"]:
        raise InputError(
            f"the sentence embedder {spec['name']} has other weights ({source.fingerprint}) than the one the model "
            f"was trained with ({spec['fingerprint']})"
        )
    return SentenceEmbedder(source, cache=cache)


def _store_attrs(path: object, seen: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The attributes of the store a record came from (never written), read once into `seen`."""
    from st.store import _read_attrs

    if not isinstance(path, str):
        return None
    if path not in seen:
        from pathlib import Path

        seen[path] = _read_attrs(Path(path))
    return seen[path]
