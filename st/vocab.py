"""The topic vocabulary: which words a soft label (and a topic) is spread over.

Words are the lowercased text's alphabetic runs longer than two characters, minus English stop
words. A word's projection index is the LM token that `" " + word` starts with: the soft label
reads the next-token logit of that token.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from scipy import sparse

from st.errors import InputError

# A word with an optional apostrophe suffix: possessives keep their stem ("google's" -> google),
# other contractions ("don't", "i'm") are function words and are dropped whole.
_WORD = re.compile(r"([^\W\d_]+)(?:['’]([^\W\d_]+))?")


@functools.cache
def stop_words() -> frozenset[str]:
    """scikit-learn's English stop words. Importing scikit-learn takes seconds, a large share of a
    short run's start-up, so the module that holds the list (it imports nothing) is loaded alone;
    the package import stays the fallback."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "feature_extraction" / "_stop_words.py"
        module_spec = importlib.util.spec_from_file_location("_st_sklearn_stop_words", path)
        if path.is_file() and module_spec is not None and module_spec.loader is not None:
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return frozenset(module.ENGLISH_STOP_WORDS)
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def tokenize(text: str) -> list[str]:
    """The words of a text as the vocabulary, the bag of words and coherence see them."""
    stop = stop_words()
    return [w for w, suffix in _WORD.findall(text.lower()) if suffix in ("", "s") and len(w) > 2 and w not in stop]


def build(texts: Iterable[str], size: int, min_df: int = 1, max_df: float = 1.0) -> tuple[list[str], int]:
    """Top `size` words by corpus frequency, among those in at least `min_df` documents and at
    most a `max_df` share of them. Returns the words (most frequent first) and the corpus size."""
    tf: Counter[str] = Counter()
    df: Counter[str] = Counter()
    n = 0
    for text in texts:
        words = tokenize(text)
        tf.update(words)
        df.update(set(words))
        n += 1
    limit = max_df * n
    kept = [w for w in tf if df[w] >= min_df and df[w] <= limit]
    kept.sort(key=lambda w: (-tf[w], w))
    return kept[:size], n


def fingerprint(words: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(words).encode()).hexdigest()[:16]


def load(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"cannot read vocabulary: {e.strerror}", path) from None
    try:
        words = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InputError(f"not a JSON list of words ({e.msg}); make one with `st vocab`", path) from None
    if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
        raise InputError("a vocabulary must be a JSON list of non-empty strings; make one with `st vocab`", path)
    if not words:
        raise InputError("the vocabulary is empty", path)
    dup = [w for w, c in Counter(words).items() if c > 1]
    if dup:
        raise InputError(f"the vocabulary lists {dup[0]!r} more than once", path)
    return words


@dataclass
class Projection:
    """Where each vocabulary word reads its logit in the LM's output."""

    token_ids: np.ndarray  # (V,) first sub-token of " " + word
    collisions: dict[int, list[str]]  # token id -> the words (2 or more) that share it
    tokens: list[list[int]]  # each word's sub-tokens
    pieces: dict[int, str]  # each shared token's text, for the report

    @property
    def n_colliding_words(self) -> int:
        return sum(len(ws) for ws in self.collisions.values())

    @classmethod
    def of(cls, words: Sequence[str], tokens: list[list[int]], pieces: dict[int, str]) -> Projection:
        ids = np.asarray([t[0] for t in tokens], dtype=np.int64)
        groups: dict[int, list[str]] = {}
        for word, t in zip(words, ids.tolist(), strict=True):
            groups.setdefault(t, []).append(word)
        collisions = {t: ws for t, ws in groups.items() if len(ws) > 1}
        return cls(ids, collisions, tokens, {t: pieces[t] for t in collisions})

    def to_json(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "pieces": {str(t): p for t, p in self.pieces.items()}}

    @classmethod
    def from_json(cls, words: Sequence[str], value: Any) -> Projection | None:
        """A projection recorded for these words; None when it does not fit them."""
        try:
            tokens = [[int(t) for t in ts] for ts in value["tokens"]]
            pieces = {int(t): str(p) for t, p in value["pieces"].items()}
            if len(tokens) != len(words) or not all(tokens):
                return None
            return cls.of(words, tokens, pieces)
        except (KeyError, TypeError, ValueError):
            return None


def project(words: Sequence[str], tokenizer) -> Projection:  # a transformers tokenizer
    encoded = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    tokens = []
    for word, toks in zip(words, encoded, strict=True):
        # SentencePiece tokenizers may emit a bare space piece first; it says nothing about the word.
        while len(toks) > 1 and not tokenizer.decode(toks[:1]).strip():
            toks = toks[1:]
        if not toks:
            raise InputError(f"the LM tokenizer gives no token for the word {word!r}")
        tokens.append(list(toks))
    firsts = {t[0] for t in tokens}
    projection = Projection.of(words, tokens, {t: "" for t in firsts})
    return Projection.of(words, tokens, {t: tokenizer.decode([t]) for t in projection.collisions})


def unique_prefix(words: Sequence[str], projection: Projection) -> list[str]:
    """Keep the first (most frequent) word of each group sharing a first sub-token."""
    drop = {w for ws in projection.collisions.values() for w in ws[1:]}
    return [w for w in words if w not in drop]


def collision_report(projection: Projection, examples: int = 3) -> str:
    groups = sorted(projection.collisions.items(), key=lambda kv: -len(kv[1]))
    shown = "; ".join(
        f"{projection.pieces[t]!r}: {', '.join(ws[:6])}{', ...' if len(ws) > 6 else ''}" for t, ws in groups[:examples]
    )
    return (
        f"{projection.n_colliding_words} words share {len(groups)} first sub-tokens and so get identical "
        f"soft-label probabilities (e.g. {shown}); `st softlabel --whole-words 8` tells them apart, "
        "--unique-prefix keeps the most frequent word of each"
    )


def bag_of_words(texts: Sequence[str], words: Sequence[str]) -> sparse.csr_matrix:
    """Counts of vocabulary words per document (N x V, CSR, float32)."""
    index = {w: i for i, w in enumerate(words)}
    indptr = [0]
    indices: list[int] = []
    data: list[int] = []
    for text in texts:
        counts = Counter(index[w] for w in tokenize(text) if w in index)
        for j in sorted(counts):
            indices.append(j)
            data.append(counts[j])
        indptr.append(len(indices))
    return sparse.csr_matrix(
        (np.asarray(data, dtype=np.float32), np.asarray(indices, dtype=np.int32), np.asarray(indptr, dtype=np.int64)),
        shape=(len(texts), len(words)),
    )
