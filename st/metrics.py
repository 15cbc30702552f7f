"""`st eval`: the measurements topic-model papers report, computed the way they compute them.

Coherence is gensim's CoherenceModel itself (NPMI `c_npmi`, `c_v`). Retrieval precision@k ranks,
for every document, all others by KL(θ_i ‖ θ_j) (or Jensen–Shannon), in blocks of matrix
products: memory stays bounded whatever the number of documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from st.errors import InputError

METRICS = (
    "npmi",
    "cv",
    "td",
    "irbo",
    "purity",
    "inverse_purity",
    "harmonic_purity",
    "nmi",
    "ari",
    "p@1",
    "p@5",
    "p@10",
)
LABEL_METRICS = {"purity", "inverse_purity", "harmonic_purity", "nmi", "ari", "p@1", "p@5", "p@10"}
EPS = 1e-12


def parse_metrics(spec: str | None) -> list[str]:
    if not spec:
        return list(METRICS)
    names = [m.strip().lower() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric {unknown[0]!r}; valid: {', '.join(METRICS)}")
    return names


# --- coherence and diversity --------------------------------------------------------------------


def coherence(topics: Sequence[Sequence[str]], texts: Sequence[Sequence[str]], measure: str, topn: int = 10) -> float:
    """Mean coherence over topics, by gensim's CoherenceModel ('c_npmi' or 'c_v'). Topic words the
    reference texts never contain are left out (gensim cannot score them)."""
    from gensim.corpora import Dictionary
    from gensim.models.coherencemodel import CoherenceModel

    dictionary = Dictionary(texts)
    known = [[w for w in t if w in dictionary.token2id][:topn] for t in topics]
    known = [t for t in known if len(t) >= 2]
    if not known:
        return float("nan")
    model = CoherenceModel(topics=known, texts=texts, dictionary=dictionary, coherence=measure, topn=topn, processes=1)
    return float(np.mean(model.get_coherence_per_topic()))


def topic_diversity(topics: Sequence[Sequence[str]], topn: int = 25) -> float:
    """Unique words among all topics' top `topn`, over topn · K."""
    words = [w for t in topics for w in t[:topn]]
    return len(set(words)) / (topn * len(topics))


def rbo(a: Sequence[str], b: Sequence[str], p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap (Webber et al. 2010) of two rankings of equal length."""
    k = min(len(a), len(b))
    if k == 0:
        return 0.0
    total, seen_a, seen_b, overlap = 0.0, set(), set(), 0
    for d in range(1, k + 1):
        x, y = a[d - 1], b[d - 1]
        if x == y:
            overlap += 1
        else:
            overlap += (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += overlap / d * p**d
    return overlap / k * p**k + (1 - p) / p * total


def inverted_rbo(topics: Sequence[Sequence[str]], topn: int = 10, p: float = 0.9) -> float:
    """1 − mean RBO over all pairs of topics' top `topn` words."""
    pairs = [(i, j) for i in range(len(topics)) for j in range(i + 1, len(topics))]
    if not pairs:
        return 1.0
    return 1.0 - float(np.mean([rbo(topics[i][:topn], topics[j][:topn], p) for i, j in pairs]))


# --- clustering against gold labels ---------------------------------------------------------------


def _contingency(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    _, g = np.unique(gold, return_inverse=True)
    _, c = np.unique(pred, return_inverse=True)
    table = np.zeros((c.max() + 1, g.max() + 1), dtype=np.int64)
    np.add.at(table, (c, g), 1)
    return table


def purity(pred: np.ndarray, gold: np.ndarray) -> float:
    table = _contingency(pred, gold)
    return float(table.max(axis=1).sum() / table.sum())


def inverse_purity(pred: np.ndarray, gold: np.ndarray) -> float:
    table = _contingency(pred, gold)
    return float(table.max(axis=0).sum() / table.sum())


def harmonic_purity(pred: np.ndarray, gold: np.ndarray) -> float:
    p, ip = purity(pred, gold), inverse_purity(pred, gold)
    return 2 * p * ip / (p + ip) if p + ip else 0.0


# --- retrieval ------------------------------------------------------------------------------------


def nearest(
    theta: np.ndarray, queries: np.ndarray, k: int, divergence: str = "kl", block: int | None = None
) -> np.ndarray:
    """For each query row i of θ, the indices of the k documents j ≠ i with the smallest
    divergence D(θ_i ‖ θ_j), best first (ties: lower index first). Blocked: O(block · N) memory.

    KL(p ‖ q) = Σ p log p − p · log q is one matrix product per block, done in float32 to find
    candidates (the best 2k + 8), which are then scored again in float64: the ranking is that of
    an exact computation at a fraction of its cost."""
    theta = np.asarray(theta, dtype=np.float64)
    log_theta = np.log(np.clip(theta, EPS, None))
    n = len(theta)
    k = min(k, n - 1)
    # At most 2^26 divergences (256 MB of float32) at a time, whatever N is.
    block = block or max(16, min(1024, 2**26 // max(n, 1)))
    out = np.empty((len(queries), k), dtype=np.int64)
    neg_entropy = (theta * log_theta).sum(axis=1)
    if divergence == "kl":
        import torch  # its matrix product and top-k are multi-threaded; numpy's argpartition is not

        theta32 = torch.from_numpy(theta.astype(np.float32))
        log_t32 = torch.from_numpy(np.ascontiguousarray(log_theta.T, dtype=np.float32))
        ne32 = torch.from_numpy(neg_entropy.astype(np.float32))
        c = min(n, 2 * k + 8)
    elif divergence == "js":
        block = max(1, min(block, int(2**26 // max(1, n * theta.shape[1]))))
    else:
        raise InputError(f"unknown divergence {divergence!r}; use kl or js")
    for start in range(0, len(queries), block):
        rows = queries[start : start + block]
        if divergence == "kl":
            t_rows = torch.from_numpy(rows)
            rough = ne32[t_rows, None] - theta32[t_rows] @ log_t32
            rough[torch.arange(len(rows)), t_rows] = float("inf")
            cand = torch.topk(rough, c, dim=1, largest=False, sorted=False).indices.numpy()
            d = neg_entropy[rows, None] - np.einsum("bk,bck->bc", theta[rows], log_theta[cand])
            d[cand == rows[:, None]] = np.inf
        else:
            p = theta[rows][:, None, :]
            m = 0.5 * (p + theta[None, :, :])
            log_m = np.log(np.clip(m, EPS, None))
            d = 0.5 * (neg_entropy[rows, None] - (p * log_m).sum(-1)) + 0.5 * (
                neg_entropy[None, :] - (theta[None, :, :] * log_m).sum(-1)
            )
            d[np.arange(len(rows)), rows] = np.inf
            cand = np.tile(np.arange(n), (len(rows), 1))
        order = np.lexsort((cand, d), axis=1)[:, :k]
        out[start : start + len(rows)] = np.take_along_axis(cand, order, axis=1)
    return out


def precision_at(theta: np.ndarray, labels: np.ndarray, ks: Sequence[int], divergence: str = "kl") -> dict[int, float]:
    """Mean over documents of the share of its k nearest others (by divergence of θ) with its label."""
    queries = np.arange(len(theta))
    same = labels[nearest(theta, queries, max(ks), divergence)] == labels[queries, None]
    return {k: float(same[:, :k].mean(axis=1).mean()) for k in ks}


def balanced_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to n documents with the labels as evenly represented as the data allows."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(p) for p in pools):
        for p in pools:
            if depth < len(p) and len(picked) < n:
                picked.append(int(p[depth]))
        depth += 1
    return np.sort(np.asarray(picked, dtype=np.int64))


RATING_QUESTION = (
    "Here are the top words of a topic found in a collection of documents: {words}.\n"
    "How related are these words to each other? Answer with one number: 1 (not related), "
    "2 (somewhat related) or 3 (very related)."
)


def llm_rating(topics: Sequence[Sequence[str]], lm, cache, topn: int = 10) -> list[float]:
    """Each topic's rating by an instruction-tuned LM: the expected value of its next-token
    distribution over "1", "2" and "3", asked through the shared backend (and its cache)."""
    from st.encoder import Encoder
    from st.prompt import Prompt

    tok = lm.tokenizer
    questions = [RATING_QUESTION.format(words=", ".join(t[:topn])) for t in topics]
    if getattr(tok, "chat_template", None):
        texts = [
            tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions
        ]
    else:
        texts = [q + "\nAnswer:" for q in questions]
    digits = np.asarray([tok.encode(d, add_special_tokens=False)[-1] for d in "123"])
    _, logits = Encoder(lm, cache).encode(
        texts, Prompt(template="{document}", instruction=""), 4096, vocab_token_ids=digits
    )
    assert logits is not None
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return (p @ np.array([1.0, 2.0, 3.0])).tolist()


def measure(
    m: str,
    topics: Sequence[Sequence[str]],
    texts: Sequence[Sequence[str]] | None,
    theta: np.ndarray,
    gold: np.ndarray | None,
    top_words: int = 10,
    divergence: str = "kl",
    balanced: int | None = None,
    memo: dict[str, Any] | None = None,
) -> float:
    """One metric of `st eval` for a model's topics and θ (`memo` keeps P@k between calls)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    memo = {} if memo is None else memo
    if m in ("npmi", "cv"):
        assert texts is not None
        return round(coherence(topics, texts, "c_npmi" if m == "npmi" else "c_v", top_words), 6)
    if m == "td":
        return round(topic_diversity(topics, 25), 6)
    if m == "irbo":
        return round(inverted_rbo(topics, top_words), 6)
    assert gold is not None
    pred = theta.argmax(axis=1)
    scores = {
        "purity": purity,
        "inverse_purity": inverse_purity,
        "harmonic_purity": harmonic_purity,
        "nmi": lambda p, g: normalized_mutual_info_score(g, p),
        "ari": lambda p, g: adjusted_rand_score(g, p),
    }
    if m in scores:
        return round(float(scores[m](pred, gold)), 6)
    if "_p@k" not in memo:
        rows = balanced_subset(gold, balanced) if balanced else np.arange(len(theta))
        memo["_p@k"] = precision_at(theta[rows], gold[rows], (1, 5, 10), divergence)
    return round(memo["_p@k"][int(m[2:])], 6)
