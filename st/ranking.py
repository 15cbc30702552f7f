"""`st search`: documents ranked by how close their θ is to a query's (a text, a stored document,
or one topic). One matrix-vector product over the stored log θ per query."""

from __future__ import annotations

import numpy as np

from st.metrics import EPS


def log_theta(theta: np.ndarray) -> np.ndarray:
    return np.log(np.clip(theta, EPS, None)).astype(np.float32)


def rank(
    theta: np.ndarray,
    query: np.ndarray,
    n: int,
    divergence: str = "kl",
    exclude: int | None = None,
    log_t: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The n rows j with the smallest D(query ‖ θ_j), best first, and their divergences.
    With the stored log θ (`log_t`), KL is one matrix-vector product."""
    q = np.clip(query.astype(np.float64), EPS, None)
    if divergence == "kl":
        lt = log_theta(theta) if log_t is None else log_t
        d = float((q * np.log(q)).sum()) - (lt @ q.astype(lt.dtype)).astype(np.float64)
    else:
        m = 0.5 * (theta + q[None, :])
        log_m = np.log(np.clip(m, EPS, None))
        d = 0.5 * ((q * np.log(q)).sum() - log_m @ q) + 0.5 * (
            (theta * np.log(np.clip(theta, EPS, None))).sum(axis=1) - (theta * log_m).sum(axis=1)
        )
    return _top(d, n, exclude)


def rank_topic(theta: np.ndarray, topic: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n documents most about one topic (largest θ_k), best first."""
    idx, neg = _top(-theta[:, topic].astype(np.float64), n, None)
    return idx, -neg


def _top(d: np.ndarray, n: int, exclude: int | None) -> tuple[np.ndarray, np.ndarray]:
    d = np.array(d, dtype=np.float64)
    if exclude is not None:
        d[exclude] = np.inf
    n = min(n, len(d) - (exclude is not None))
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    part = np.argpartition(d, n - 1)[:n] if n < len(d) else np.arange(len(d))
    order = np.lexsort((part, d[part]))
    best = part[order][:n]
    return best, d[best]
