"""`st train`: fit a topic model on a store's soft labels (or bag of words), write θ back into the
store, save the model. Also the model folder format, which `st infer`, `st eval` and `st search` read.

A model folder holds `config.json` (every hyper-parameter, the vocabulary's fingerprint, the LM and
prompt that produced the inputs), `model.safetensors`, `vocab.json` and `topics.json`. Nothing in it
is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy import sparse

from st import progress
from st.errors import InputError
from st.models import VAE, FASTopic, GensimLDA, ProdLDA, TopicConfig, build
from st.options import TEMPERATURE, TOP_WORDS, TrainOptions
from st.store import Corpus, Store, spans

MODEL_FORMAT = "st-model"
MODEL_VERSION = 1


@dataclass
class Fitted:
    """A trained topic model as training and loading make it; `st.TopicModel` is its public face."""

    model: VAE | FASTopic | GensimLDA
    config: dict[str, Any]
    vocab: list[str]
    salience: np.ndarray | None = None  # K x V, see `salience`
    names: list[str] | None = None  # written by `st label` (st.naming), kept in topics.json
    folder: Path | None = None  # where it was saved or loaded from
    memory: ThetaMemory | None = None  # with --theta-neighbours: the kept documents each θ is mixed with

    @property
    def id(self) -> str:
        return str(self.config["id"])

    def topic_word(self) -> np.ndarray:
        """K x V: each topic's distribution over the vocabulary (β)."""
        if isinstance(self.model, GensimLDA):
            return self.model.topic_word()
        return self.model.topic_word().numpy()

    def word_scores(self) -> np.ndarray:
        """K x V: what a topic's words are ranked by, β or the words' salience."""
        ranking = self.config["training"].get("topic_words", "beta")
        return self.salience if ranking == "salient" and self.salience is not None else self.topic_word()

    def topics(self, top_words: int = TOP_WORDS) -> list[dict[str, Any]]:
        weights = self.word_scores()
        out = []
        for i, row in enumerate(weights):
            top = np.argsort(-row, kind="stable")[:top_words].tolist()
            rec: dict[str, Any] = {"topic": i}
            if self.names is not None:
                rec["name"] = self.names[i]
            rec.update(words=[self.vocab[j] for j in top], weights=[round(float(row[j]), 6) for j in top])
            out.append(rec)
        return out

    def theta(self, x: np.ndarray, batch: int = 4096, mixed: bool = True) -> np.ndarray:
        """θ of documents with inputs `x`; `mixed`: with their nearest training documents' (`ThetaMemory`)."""
        training = self.config["training"]
        if isinstance(self.model, GensimLDA):
            return self.model.theta(x, training["seed"])
        parts = []
        for i in range(0, len(x), batch):
            part = self.model.theta(torch.from_numpy(x[i : i + batch]).float(), training["samples"], training["seed"])
            own = part.numpy().astype(np.float32)
            parts.append(self.memory.mixed(x[i : i + batch], own) if self.memory is not None and mixed else own)
        return np.concatenate(parts) if parts else np.zeros((0, self.model.config.k), np.float32)

    def theta_of(self, corpus: Corpus) -> np.ndarray:
        """θ of every document of the corpus, read a few store chunks at a time."""
        return self.thetas_of(corpus)[0]

    def thetas_of(self, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
        """θ of every document of the corpus, and the encoder's own θ before the mix with the kept
        documents' (the same array for a model without them), from one read of the inputs."""
        kind = self.config["training"]["input"]
        out = np.zeros((corpus.rows, int(self.config["training"]["k"])), np.float32)
        own = out if self.memory is None else np.zeros_like(out)
        step = corpus.chunk_rows * max(1, THETA_ROWS // corpus.chunk_rows)
        with progress.task("θ", total=corpus.rows) as bar:
            for start in range(0, corpus.rows, step):
                stop = min(start + step, corpus.rows)
                x = model_inputs(corpus, kind, start, stop)
                own[start:stop] = self.theta(x, mixed=False)
                if self.memory is not None:
                    out[start:stop] = self.memory.mixed(x, own[start:stop])
                bar.advance(stop - start)
        return out, own

    def state(self) -> dict[str, torch.Tensor]:
        if isinstance(self.model, GensimLDA):
            state = self.model.state()
        else:
            state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        if self.salience is not None:
            state[SALIENCE_KEY] = torch.from_numpy(np.ascontiguousarray(self.salience, dtype=np.float32))
        if self.memory is not None:
            state.update(self.memory.state())
        return state


SALIENCE_KEY = "st.salience"
THETA_ROWS = 16384  # documents whose inputs are in memory at once when θ is computed
TARGET_ROWS = 4096  # documents whose targets are computed at once (in float64: 64 MB at V = 2,000)


def salience(theta: np.ndarray, bow: Any, beta: np.ndarray) -> np.ndarray:
    """K x V: p(w|k)·log(p(w|k)/p(w)), each word's share of how far a topic's documents' words
    stand apart from the corpus's (its term of KL(p(·|k) ‖ p(·))). p(w|k) comes from the training
    documents' word counts weighted by their θ, so a topic is named by words its documents use
    together, which is what coherence rewards; β (the LM's label words) often names a theme with
    words the documents never contain. A topic without documents, or a corpus without vocabulary
    words, keeps β."""
    counts = np.asarray((bow.T @ theta).T, dtype=np.float64)  # K x V, θ-weighted word counts
    return salience_of_counts(counts, np.asarray(bow.sum(axis=0), dtype=np.float64).ravel(), beta)


def salience_of_counts(counts: np.ndarray, corpus: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """`salience` from the θ-weighted word counts (K x V) and the corpus's word counts (V)."""
    if corpus.sum() == 0:
        return beta.astype(np.float32)
    p_w = corpus / corpus.sum()
    mass = counts.sum(axis=1, keepdims=True)
    p_wk = counts / np.where(mass == 0, 1, mass)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(p_wk > 0, p_wk * np.log(p_wk / np.where(p_w > 0, p_w, 1)), 0.0)
    score = np.where(mass > 0, score, beta)
    return score.astype(np.float32)


def with_salience(model: Fitted, store: Corpus, rows: np.ndarray, theta: np.ndarray | None = None) -> Fitted:
    """The model with its words' salience over the training documents (`salience`), counted a
    store chunk at a time, by the documents' own θ (not mixed with their neighbours'). `theta`: that θ
    of every store row, when already computed."""
    if model.config["training"].get("topic_words") != "salient":
        return model
    kind = model.config["training"]["input"]
    beta = model.topic_word()
    counts = np.zeros(beta.shape, np.float64)
    corpus = np.zeros(beta.shape[1], np.float64)
    for start, stop, where in spans(rows, store.chunk_rows):
        local = rows[where] - start
        bow = store.bow_rows(start, stop)[local]
        if theta is not None:
            t = theta[rows[where]]
        else:
            t = model.theta(model_inputs(store, kind, start, stop)[local], mixed=False)
        counts += np.asarray((bow.T @ t.astype(np.float64)).T)
        corpus += np.asarray(bow.sum(axis=0), dtype=np.float64).ravel()
    model.salience = salience_of_counts(counts, corpus, beta)
    return model


# --- data, a window at a time -------------------------------------------------------------------


def soft_label(
    logits: np.ndarray, temperature: float, topk: int | None = None, sparsity: float | None = None
) -> np.ndarray:
    """softmax(logits / τ), optionally keeping only each row's top entries (the rest get 0)."""
    z = logits.astype(np.float64) / temperature
    v = z.shape[1]
    keep = topk if topk is not None else (max(1, int(round(v * (1 - sparsity)))) if sparsity is not None else None)
    if keep is not None and keep < v:
        cut = np.partition(z, v - keep, axis=1)[:, v - keep : v - keep + 1]
        z = np.where(z >= cut, z, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def model_inputs(store: Corpus, kind: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """What the encoder reads for store rows start to stop (all by default)."""
    stop = store.rows if stop is None else stop
    if kind == "hidden":
        return store.read("hidden", start, stop).astype(np.float32)
    return store.bow_rows(start, stop).toarray().astype(np.float32)


def normalized(bow: Any) -> np.ndarray:
    dense = bow.toarray().astype(np.float64)
    total = dense.sum(axis=1, keepdims=True)
    return dense / np.where(total == 0, 1, total)


def rows_bow(store: Corpus, rows: np.ndarray) -> sparse.csr_matrix:
    """The bag of words of `rows`, in that order, read a chunk at a time."""
    parts, where = [], []
    for start, stop, w in spans(rows, store.chunk_rows):
        parts.append(store.bow_rows(start, stop)[rows[w] - start])
        where.append(w)
    return sparse.vstack(parts, format="csr")[np.argsort(np.concatenate(where))]


@dataclass
class TrainingData:
    """The training documents' inputs and targets, read from the corpus a store chunk at a time.
    Each epoch visits the chunks in a random order, `window` documents of them in memory at once,
    shuffled within the window. A window that covers every document is read once and kept: the
    in-memory training of a corpus that fits."""

    corpus: Corpus
    rows: np.ndarray  # the training documents' store rows, in the caller's order
    opts: TrainOptions  # resolved
    tau: float
    mean: np.ndarray | None  # each word's mean logit over the training documents, when calibrating
    # with --neighbours (or a k-means start in the UMAP layout): the documents targets are mixed with
    neighbourhood: Neighbourhood | None = None

    @classmethod
    def of(cls, corpus: Corpus, rows: np.ndarray, opts: TrainOptions) -> TrainingData:
        opts = resolved(opts, len(rows))
        if opts.target == "bow":
            return cls(corpus, rows, opts, 1.0, None)
        if "logits" not in corpus:
            raise InputError("the store has no soft labels (no 'logits'); make it with `st softlabel`", corpus.name)
        tau = opts.temperature if opts.temperature is not None else float(corpus.attrs.get("temperature", TEMPERATURE))
        if opts.topk is not None and opts.topk > len(corpus.vocab()):
            raise InputError(f"--topk {opts.topk} is larger than the vocabulary ({len(corpus.vocab())} words)")
        data = cls(corpus, rows, opts, tau, None)
        if opts.calibrate:
            data.mean = data.mean_logits()
        if opts.neighbours or (opts.layout == "umap" and opts.init == "kmeans"):
            data.neighbourhood = Neighbourhood.of(data)
        return data

    @property
    def whole(self) -> bool:
        return not self.opts.window or self.opts.window >= len(self.rows)

    def mean_logits(self) -> np.ndarray:
        """Each word's mean logit over the training documents. What the LM says of every document
        alike, such as favouring words that share a common first sub-token, is no one document's
        topic: calibration subtracts it (contextual calibration)."""
        total = np.zeros(len(self.corpus.vocab()), np.float64)
        for start, stop, where in spans(self.rows, self.corpus.chunk_rows):
            block = self.corpus.read("logits", start, stop)
            total += block[self.rows[where] - start].astype(np.float64).sum(axis=0)
        return total / max(len(self.rows), 1)

    def targets(self, start: int, stop: int) -> np.ndarray:
        """The reconstruction target of store rows start to stop."""
        logits = None if self.opts.target == "bow" else self.corpus.read("logits", start, stop)
        target = self.target(logits, self.corpus.bow_rows(start, stop))
        if self.neighbourhood is None:
            return target
        x = model_inputs(self.corpus, self.opts.input, start, stop)
        return self.neighbourhood.mixed(np.arange(start, stop), x, target)

    def target(self, logits: np.ndarray | None, bow: Any) -> np.ndarray:
        """The reconstruction target of documents with these logits and bag of words."""
        opts = self.opts
        if logits is None:
            return normalized(bow).astype(np.float32)
        z = logits.astype(np.float64)
        if self.mean is not None:
            z -= self.mean
        target = soft_label(z, self.tau, opts.topk, opts.sparsity)
        if opts.bow_weight > 0:
            # Anchor the LM's guess in the words the document actually has; a document without a
            # vocabulary word keeps its soft label whole.
            words = normalized(bow)
            weight = np.where(words.sum(axis=1, keepdims=True) > 0, opts.bow_weight, 0.0)
            target = ((1 - weight) * target + weight * words).astype(np.float32)
        return target

    def read(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the documents at `positions` (into `rows`): in that order for the
        whole corpus, in store order for a window (which training shuffles anyway), so that its
        rows need no copy. Each array is fetched in a few requests (the store reads their chunks
        concurrently); targets are computed a block at a time, their float64 work bounded."""
        rows = self.rows[positions]
        if not self.whole:
            rows = np.sort(rows)
        distinct, back = np.unique(rows, return_inverse=True)
        corpus = self.corpus
        x = corpus.read_rows("hidden", distinct).astype(np.float32) if self.opts.input == "hidden" else None
        if x is None:
            x = np.empty((len(distinct), corpus.vocab_size), np.float32)
        y = np.empty((len(distinct), corpus.vocab_size), np.float32)
        for b in range(0, len(distinct), TARGET_ROWS):
            block = distinct[b : b + TARGET_ROWS]
            bow = corpus.bow_of(block)
            logits = corpus.read_rows("logits", block) if self.opts.target != "bow" else None
            y[b : b + TARGET_ROWS] = self.target(logits, bow)
            if self.opts.input == "bow":
                x[b : b + TARGET_ROWS] = bow.toarray()
        if self.neighbourhood is not None:
            y = self.neighbourhood.mixed(distinct, x, y)
        if len(distinct) < len(rows) or not np.array_equal(distinct, rows):
            x, y = x[back], y[back]
        return torch.from_numpy(x), torch.from_numpy(y)

    def windows(self, shuffle: torch.Generator) -> Iterator[np.ndarray]:
        """One epoch's windows, as positions into `rows`."""
        if self.whole:
            yield np.arange(len(self.rows))
            return
        blocks = [where for _, _, where in spans(self.rows, self.corpus.chunk_rows)]
        window: list[np.ndarray] = []
        size = 0
        for b in torch.randperm(len(blocks), generator=shuffle).tolist():
            window.append(blocks[b])
            size += len(blocks[b])
            if size >= int(self.opts.window):
                yield np.concatenate(window)
                window, size = [], 0
        if window:
            yield np.concatenate(window)


# Training documents whose targets the others' are mixed with: all of a corpus up to this size, a
# sample beyond it, so that each document's neighbours cost the same in a corpus of millions.
NEIGHBOUR_ROWS = 20000
NEIGHBOUR_BLOCK = 1024  # documents whose similarities to the sample are in memory at once
# The UMAP layout (`--layout umap`): BERTopic's settings, which cluster sentence embeddings well.
LAYOUT_DIMENSIONS = 5
LAYOUT_NEIGHBOURS = 15


@dataclass
class Neighbourhood:
    """The training documents (or a fixed sample of them) that `--neighbours` looks among: their
    store rows (sorted), their inputs in `neighbourhood_space`, and their own targets; and each
    training document's k nearest among them, found once (a windowed training reads every document
    again each epoch). Neighbours are nearest by cosine there (or in its UMAP layout); a document is
    never its own neighbour."""

    rows: np.ndarray
    inputs: np.ndarray  # float32, unit rows
    targets: np.ndarray  # float32
    centre: np.ndarray
    scale: np.ndarray
    k: int  # neighbours per document
    weight: float  # their mean target's share
    known: np.ndarray  # the training documents' store rows, sorted
    nearest: np.ndarray  # len(known) × k: positions in `rows` of each one's neighbours
    layout: np.ndarray | None = None  # with --layout umap: len(rows) × LAYOUT_DIMENSIONS
    cut: int | None = None  # where the LM's hidden state ends and a sentence embedder's begins

    @classmethod
    def of(cls, data: TrainingData) -> Neighbourhood:
        n = len(data.rows)
        # A fixed sample, not the training seed's: the target is part of the data, the same for every seed.
        positions = np.arange(n)
        if n > NEIGHBOUR_ROWS:
            positions = np.sort(np.random.default_rng(0).choice(n, NEIGHBOUR_ROWS, replace=False))
        rows = data.rows[positions]
        order = np.argsort(rows, kind="stable")
        x, y = data.read(positions[order])  # no neighbourhood yet: the documents' own targets
        inputs = x.numpy().astype(np.float64)
        centre, scale = inputs.mean(0), inputs.std(0) + 1e-6
        k = min(int(data.opts.neighbours or 0), len(rows) - 1)
        cut = input_parts(data.corpus, data.opts, inputs)
        inputs = neighbourhood_space(inputs, centre, scale, cut)
        none = np.zeros((0, max(k, 0)), np.int32)
        weight = data.opts.neighbour_weight
        hood = cls(rows[order], inputs, y.numpy(), centre, scale, k, weight, rows[:0], none, cut=cut)
        if data.opts.layout == "umap":
            hood.layout = umap_layout(inputs)
        known = np.unique(data.rows)
        nearest = np.empty((len(known), max(k, 0)), np.int32)
        if k >= 1:
            # Documents in the sample find theirs in the layout; the rest (past NEIGHBOUR_ROWS training
            # documents) by their inputs, since the layout has no place for them.
            at = np.searchsorted(hood.rows, known).clip(max=len(hood.rows) - 1)
            layout = hood.layout
            placed = (hood.rows[at] == known) if layout is not None else np.zeros(len(known), bool)
            if layout is not None and placed.any():
                nearest[placed] = nearest_in(layout, at[placed], k)
            todo = np.flatnonzero(~placed)
            with progress.task("neighbours", total=len(todo)) as bar:
                for start, stop, where in spans(known[todo], data.corpus.chunk_rows):
                    part = todo[where]
                    x_part = model_inputs(data.corpus, data.opts.input, start, stop)[known[part] - start]
                    nearest[part] = hood.nearest_of(known[part], x_part)
                    bar.advance(len(part))
        hood.known, hood.nearest = known, nearest
        return hood

    def nearest_of(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Positions in `self.rows` of the k nearest of documents at store `rows` with inputs `x`."""
        out = np.empty((len(rows), self.k), np.int32)
        for b in range(0, len(rows), NEIGHBOUR_BLOCK):
            part = slice(b, b + NEIGHBOUR_BLOCK)
            q = neighbourhood_space(np.asarray(x[part], np.float64), self.centre, self.scale, self.cut)
            sims = q @ self.inputs.T
            where = np.searchsorted(self.rows, rows[part]).clip(max=len(self.rows) - 1)
            own = self.rows[where] == rows[part]
            sims[np.flatnonzero(own), where[own]] = -np.inf
            out[part] = np.argpartition(-sims, self.k - 1, axis=1)[:, : self.k]
        return out

    def mixed(self, rows: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Targets `y` of store `rows` (inputs `x`), each mixed with the mean target of its k nearest."""
        if self.k < 1 or self.weight == 0:
            return y
        where = np.searchsorted(self.known, rows).clip(max=max(len(self.known) - 1, 0))
        known = self.known[where] == rows if len(self.known) else np.zeros(len(rows), bool)
        nearest = np.empty((len(rows), self.k), np.int32)
        nearest[known] = self.nearest[where[known]]
        if not known.all():  # documents outside the training set (`targets` of a whole store)
            nearest[~known] = self.nearest_of(rows[~known], x[~known])
        out = np.empty_like(y)
        for b in range(0, len(rows), NEIGHBOUR_BLOCK):  # k targets per document in memory at once
            part = slice(b, b + NEIGHBOUR_BLOCK)
            out[part] = (1 - self.weight) * y[part] + self.weight * self.targets[nearest[part]].mean(axis=1)
        return out


def input_parts(corpus: Corpus, opts: TrainOptions, x: np.ndarray) -> int | None:
    """Where the encoder's input `x` (rows of a sample) splits into the LM's hidden state and a
    sentence embedder's, when the store holds both side by side (`--embedder` beside the LM: two
    unit vectors); None for an input of one part."""
    source = input_source(corpus, opts) or {}
    if not opts.balance_inputs or not (source.get("embedder") or {}).get("with_lm"):
        return None
    # No store records the split: it is where each row's first part reaches unit length.
    rows = x[np.abs(np.square(x).sum(1) - 2) < 1e-3][:64]  # an empty text's zero part gives no clue
    if not len(rows):
        return None
    off = np.abs(np.cumsum(np.square(rows), axis=1) - 1).max(axis=0)
    cut = int(np.argmin(off[:-1])) + 1
    return cut if off[cut - 1] < 1e-3 else None


def neighbourhood_space(x: np.ndarray, centre: np.ndarray, scale: np.ndarray, cut: int | None) -> np.ndarray:
    """Inputs where neighbours are found: standardised, so that no one large dimension decides, and
    rows of unit length (float32) for cosine. With two parts (`cut`), each is scaled to unit length
    first, so that both weigh alike: standardised, the LM's 576 dimensions would outweigh MiniLM's
    384. Chosen on StackOverflow titles, confirmed on TweetTopic (see docs/robustness.md)."""
    z = unit((x - centre) / scale)
    if cut is None:
        return z
    return unit(np.hstack([unit(z[:, :cut]), unit(z[:, cut:])]).astype(np.float64))


def umap_layout(inputs: np.ndarray) -> np.ndarray | None:
    """A UMAP layout of unit-length `inputs` (cosine), the same for every training seed; None for
    too few documents to lay out, where the inputs themselves serve."""
    if len(inputs) <= 2 * LAYOUT_NEIGHBOURS:
        return None
    import warnings

    threads = torch.get_num_threads()
    with progress.task("layout (UMAP)", total=1) as bar, warnings.catch_warnings():
        # "n_jobs overridden by random_state": one thread is the price of a layout that a seed fixes.
        warnings.simplefilter("ignore")
        import umap

        try:
            fitted = umap.UMAP(
                n_neighbors=LAYOUT_NEIGHBOURS,
                n_components=LAYOUT_DIMENSIONS,
                min_dist=0.0,
                metric="cosine",
                random_state=0,
            ).fit_transform(inputs)
        finally:
            # numba's OpenMP pool shares torch's: leaving a fit, it sets every core, overriding
            # OMP_NUM_THREADS for the training that follows (two trainings side by side then fight).
            torch.set_num_threads(threads)
        bar.advance()
    return np.asarray(fitted, np.float32)


def nearest_in(points: np.ndarray, at: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k points nearest (Euclidean) to each of `points[at]`, itself left out."""
    from sklearn.neighbors import NearestNeighbors

    _, found = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points[at])
    self_at = found == at[:, None]
    # Itself is among the k + 1 unless k + 1 duplicates tie with it; then the farthest goes.
    drop = np.where(self_at.any(axis=1), self_at.argmax(axis=1), k)
    keep = np.ones_like(found, bool)
    keep[np.arange(len(at)), drop] = False
    return found[keep].reshape(len(at), k).astype(np.int32)


# Training documents a model keeps for --theta-neighbours: enough that each document's nearest are of
# its theme (1,000 kept nearly all of the gain of every training document on 5,790 tweets and 6,000
# StackOverflow titles), few enough that the model stays a few MB.
THETA_MEMORY_ROWS = 2000
THETA_MEMORY_KEY = "st.theta_memory."


@dataclass
class ThetaMemory:
    """A fixed sample of training documents (their inputs where neighbours are found, and their own
    θ) that `--theta-neighbours` mixes each document's θ with: θ ← (1 − w)·θ + w·mean θ of its k
    nearest there. Averaging over documents alike takes out what the encoder gets wrong about one
    document alone. Kept in the model, so that a document's θ depends on it alone (a training
    document in the sample counts among its own nearest), at training and at `st infer` alike."""

    vectors: np.ndarray  # float32 rows of unit length, from float16 (what is saved)
    theta: np.ndarray  # float32, their θ before mixing
    centre: np.ndarray  # float32
    scale: np.ndarray  # float32
    cut: int | None  # see `input_parts`
    k: int
    weight: float

    @classmethod
    def of(cls, fitted: Fitted, data: TrainingData, whole: tuple[torch.Tensor, torch.Tensor] | None) -> ThetaMemory:
        n = len(data.rows)
        opts = data.opts
        positions = np.arange(n)
        if n > THETA_MEMORY_ROWS:  # a sample of the data, not of the seed's
            positions = np.sort(np.random.default_rng(0).choice(n, THETA_MEMORY_ROWS, replace=False))
        x = (whole[0][positions] if whole is not None else data.read(positions)[0]).numpy()
        inputs = x.astype(np.float64)
        centre = inputs.mean(0).astype(np.float32)
        scale = (inputs.std(0) + 1e-6).astype(np.float32)
        cut = input_parts(data.corpus, opts, inputs)
        vectors = neighbourhood_space(inputs, centre, scale, cut).astype(np.float16).astype(np.float32)
        k, weight = int(opts.theta_neighbours or 0), float(opts.theta_neighbour_weight)
        return cls(vectors, fitted.theta(x), centre, scale, cut, k, weight)

    def mixed(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """θ of documents with inputs `x` and own θ `theta`, each mixed with its nearest's."""
        k = min(self.k, len(self.vectors))
        if k < 1 or self.weight == 0 or not len(x):
            return theta
        out = np.empty_like(theta, dtype=np.float32)
        for b in range(0, len(x), NEIGHBOUR_BLOCK):  # similarities of a block to the kept documents at once
            part = slice(b, b + NEIGHBOUR_BLOCK)
            q = neighbourhood_space(np.asarray(x[part], np.float64), self.centre, self.scale, self.cut)
            nearest = np.argpartition(-(q.astype(np.float32) @ self.vectors.T), k - 1, axis=1)[:, :k]
            out[part] = (1 - self.weight) * theta[part] + self.weight * self.theta[nearest].mean(axis=1)
        return out

    def state(self) -> dict[str, torch.Tensor]:
        arrays = {
            "vectors": self.vectors.astype(np.float16),
            "theta": self.theta,
            "centre": self.centre,
            "scale": self.scale,
            "cut": np.array([-1 if self.cut is None else self.cut], np.int64),
        }
        return {THETA_MEMORY_KEY + name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], training: dict[str, Any]) -> ThetaMemory | None:
        """The memory saved in a model's `state` (its entries taken out), or None for a model without one."""
        keys = [key for key in state if key.startswith(THETA_MEMORY_KEY)]
        found = {key[len(THETA_MEMORY_KEY) :]: state.pop(key) for key in keys}
        if not found:
            return None
        cut = int(found["cut"][0])
        return cls(
            found["vectors"].numpy().astype(np.float32),
            found["theta"].numpy(),
            found["centre"].numpy(),
            found["scale"].numpy(),
            None if cut < 0 else cut,
            int(training.get("theta_neighbours") or 0),
            float(training.get("theta_neighbour_weight", 0.0)),
        )


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm == 0, 1, norm)).astype(np.float32)


def targets(store: Corpus, opts: TrainOptions, rows: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The reconstruction target of every store row; `rows` are the training documents, over which
    `opts.calibrate` averages."""
    data = TrainingData.of(store, np.arange(store.rows) if rows is None else np.asarray(rows), opts)
    return data.targets(0, store.rows), data.tau


# --- training -----------------------------------------------------------------------------------


def model_id(opts: TrainOptions, store: Corpus, rows: np.ndarray) -> str:
    name = {("softlabel", "hidden"): "dsl", ("bow", "bow"): "prodlda", ("bow", "hidden"): "ctm"}.get(
        (opts.target, opts.input), f"{opts.target}-{opts.input}"
    )
    if opts.backbone == "lda" or (opts.backbone != "prodlda" and name == "prodlda"):
        name = opts.backbone  # the classic models: LDA, ETM, ECRTM, FASTopic on the bag of words
    elif opts.backbone != "prodlda":
        name = f"{name}-{opts.backbone}"
    identity = {k: v for k, v in asdict(opts).items() if k != "checkpoint_every"}
    if not opts.window or opts.window >= len(rows):  # the same training whatever the window
        identity.pop("window")
    kept = (
        ("restarts", 1),
        ("init", "random"),
        ("neighbours", 0),
        ("layout", "inputs"),
        ("balance_inputs", False),
        ("cluster_weight", 0.0),
        ("theta_neighbours", 0),
    )
    for added, default in kept:  # the ids of models trained before each option was added
        if identity[added] == default:
            identity.pop(added)
    if "neighbours" not in identity:
        identity.pop("neighbour_weight")
    if "theta_neighbours" not in identity:
        identity.pop("theta_neighbour_weight")
    source = input_source(store, opts)
    spec = json.dumps([identity, store.attrs.get("vocab_fingerprint"), store.attrs.get("lm"), source], sort_keys=True)
    digest = hashlib.sha256(spec.encode() + rows.astype(np.int64).tobytes()).hexdigest()[:8]
    return f"{name}-k{opts.k}-{digest}"


def input_source(store: Any, opts: TrainOptions) -> dict[str, Any] | None:
    """What made the encoder's input, where it is not the hidden state of the store's LM under its
    prompt: hidden states `st embed` put in its place, or a sentence embedder's beside them. It is
    part of the model (its id, and what `st infer` runs new documents through)."""
    if opts.input != "hidden":
        return None
    attrs = store.attrs
    if attrs.get("hidden_source"):
        return dict(attrs["hidden_source"])
    if attrs.get("embedder"):
        return {key: attrs.get(key) for key in ("lm", "prompt", "max_tokens", "embedder")}
    return None


FASTOPIC_LAMBDA = 10.0


# DSL-ProdLDA's decoder norm: three quarters of the way from centring to ProdLDA's full batch norm,
# with a learned gain and shift per word (see docs/results.md); the bag-of-words models and the
# other backbones keep the published batch norm.
DSL_DECODER_NORM = 0.75
# With the learned gain, dropout on θ measured a flatter θ, and the salient words of topics that
# split one theme ran together; ProdLDA's 0.2 stays for the others (see docs/results.md).
DSL_THETA_DROPOUT = 0.0
# Fewer, larger steps than ProdLDA's 64 documents: on 6,000 documents, DSL-ProdLDA's topics then
# split fewer themes into topics that share their words (more diversity), and purity rose at K = 50.
# Neither the same steps at 64 (25 epochs) nor 256 at four times the epochs did both. On 1,000
# documents, 4 steps per epoch were too few: 64 did better; on 2,500, 128 did. So: the largest of
# these batches that still gives DSL_MIN_STEPS steps per epoch (see docs/results.md).
DSL_BATCH_SIZES = (256, 128, 64)
# DSL-ProdLDA's topics start at k-means clusters of the inputs: chosen on StackOverflow titles
# (1,000 documents, K = 5 to 50, 5 seeds), confirmed on TweetTopic and at 6,000 documents (see
# docs/robustness.md). Random starts let two topics share a theme and leave another to none.
DSL_INIT = "kmeans"
# DSL-ProdLDA's target is half the document's own, half the mean of its 10 nearest documents': a
# small LM's soft label for one short text is noisy, and its neighbours, read by the encoder alike,
# mostly share its theme. Chosen on TweetTopic (2,500 documents, K = 10, 20, 50, 3 seeds: purity
# +0.02 to +0.04, NMI +0.01 to +0.05, P@10 +0.02 to +0.04), confirmed on StackOverflow titles
# (purity +0.01, NMI +0.01 to +0.04, P@10 +0.01 to +0.03); see docs/robustness.md. Weight 0.8 did
# little more on TweetTopic and cost topic diversity at K = 50 on both; 30 neighbours did no better.
DSL_NEIGHBOURS = 10
# Those neighbours, and the k-means start, are found in a UMAP layout of the inputs (BERTopic's: 5
# dimensions, 15 neighbours, cosine), which draws each theme's documents together. Chosen on
# TweetTopic (2,500 documents, K = 10, 20, 50, 3 seeds: purity +0.01 to +0.03, NMI +0.01 to +0.03,
# NPMI −0.035 at K = 20 and 50); on StackOverflow titles purity and NMI rose at K = 20 and 50 (up to
# +0.04) and NMI fell 0.02 at K = 10, where 20 classes share 10 topics; see docs/robustness.md.
DSL_LAYOUT = "umap"
# There, the LM's hidden state and MiniLM's embedding count alike (`neighbourhood_space`). Chosen on
# StackOverflow titles (k-means of the layouts, then 2,500 documents, K = 10, 20, 50, 3 seeds: NMI
# +0.023 at K = 10, level at 20 and 50), confirmed on TweetTopic at 2,500; over the whole protocol
# NMI rose in 17 of 24 cells and every check held in 17 against 16 (see docs/robustness.md).
DSL_BALANCE_INPUTS = True
# θ is not held to the k-means clusters by default (`--cluster-weight`, 0). On the tweets, training
# to the soft labels alone moves θ away from the layout's clusters, which separate the classes
# better: weight 30 raised NMI by 0.025 on TweetTopic's 5,790 documents (K = 10 and 20, 3 seeds),
# and cost under 0.008 on 6,000 StackOverflow titles. Over the whole protocol (seeds 0–2) it
# lowered P@10 in 17 of 24 cells and NPMI in most (by up to 0.038 and 0.034) and met every check in
# as many cells as without it, so it is an option for noisy corpora; see docs/robustness.md.
DSL_CLUSTER_WEIGHT = 0.0
# DSL-ProdLDA's θ is half its own, half the mean θ of its 30 nearest kept training documents
# (`ThetaMemory`). Chosen on TweetTopic (all 12 cells of the protocol, seeds 0–2, on the trained
# default: 10 or 30 neighbours, weight 0.5 or 0.8, mixed once or three times; the simplest within
# 0.001 of the best: purity up in 12 of 12 cells, NMI in 9, P@10 in 12), confirmed on StackOverflow
# titles (purity and NMI up in 11 of 12, P@10 in 12); β is untouched, so coherence and diversity
# are too. See docs/robustness.md.
DSL_THETA_NEIGHBOURS = 30
DSL_MIN_STEPS = 16


def dsl_batch_size(documents: int) -> int:
    """DSL-ProdLDA's default documents per step for a training set of `documents`."""
    return next((b for b in DSL_BATCH_SIZES if documents >= b * DSL_MIN_STEPS), DSL_BATCH_SIZES[-1])


def resolved(opts: TrainOptions, documents: int | None = None) -> TrainOptions:
    """Options with target- and backbone-dependent defaults filled in. DSL-ProdLDA's batch size
    depends on the number of training `documents` too; without it, it stays unset."""
    lam = opts.lam if opts.lam is not None else (FASTOPIC_LAMBDA if opts.backbone == "fastopic" else 1000.0)
    dsl = opts.target == "softlabel" and opts.backbone == "prodlda"
    calibrate = opts.calibrate if opts.calibrate is not None else dsl
    norm = opts.decoder_norm if opts.decoder_norm is not None else (DSL_DECODER_NORM if dsl else 1.0)
    affine = opts.decoder_affine if opts.decoder_affine is not None else dsl
    theta_dropout = opts.theta_dropout if opts.theta_dropout is not None else (DSL_THETA_DROPOUT if dsl else 0.2)
    init = opts.init if opts.init is not None else (DSL_INIT if dsl else "random")
    neighbours = opts.neighbours if opts.neighbours is not None else (DSL_NEIGHBOURS if dsl else 0)
    layout = opts.layout if opts.layout is not None else (DSL_LAYOUT if dsl else "inputs")
    balance = opts.balance_inputs if opts.balance_inputs is not None else (DSL_BALANCE_INPUTS and dsl)
    theta_neighbours = opts.theta_neighbours
    if theta_neighbours is None:
        theta_neighbours = DSL_THETA_NEIGHBOURS if dsl else 0
    cluster_weight = opts.cluster_weight
    if cluster_weight is None:
        cluster_weight = DSL_CLUSTER_WEIGHT if dsl and init == "kmeans" else 0.0
    batch_size = opts.batch_size
    if batch_size is None and (not dsl or documents is not None):
        batch_size = dsl_batch_size(documents or 0) if dsl else 64
    filled = {
        "calibrate": calibrate,
        "decoder_norm": norm,
        "decoder_affine": affine,
        "theta_dropout": theta_dropout,
        "batch_size": batch_size,
        "init": init,
        "neighbours": neighbours,
        "layout": layout,
        "balance_inputs": balance,
        "cluster_weight": cluster_weight,
        "theta_neighbours": theta_neighbours,
    }
    return TrainOptions(**{**asdict(opts), "lam": lam, **filled})


def fit_model(store: Corpus, rows: np.ndarray, opts: TrainOptions) -> tuple[Fitted, list[float]]:
    """Fit on the given store rows. Reproducible for a seed on one machine (CPU). With
    `opts.checkpoint_every`, the state is checkpointed inside the store and a re-run of the same
    training resumes from it, to the same result bit for bit."""
    opts = resolved(opts, len(rows))
    if opts.backbone == "lda":
        if opts.theta_neighbours:
            raise InputError("--theta-neighbours mixes an encoder's θ; the lda backbone has none")
        return train_lda(store, rows, opts), []
    if len(rows) < 2:
        raise InputError("at least 2 documents are needed to train", store.name)
    data = TrainingData.of(store, rows, opts)
    tau = data.tau
    whole = data.read(np.arange(len(rows))) if data.whole else None
    input_size = whole[0].shape[1] if whole is not None else model_inputs(store, opts.input, 0, 1).shape[1]
    config = TopicConfig(
        input_size=input_size,
        vocab_size=len(store.vocab()),
        k=opts.k,
        backbone=opts.backbone,
        hidden=list(opts.hidden),
        dropout=opts.dropout,
        theta_dropout=float(opts.theta_dropout or 0.0),
        decoder_temperature=opts.decoder_temperature if opts.decoder_temperature is not None else tau,
        decoder_norm=float(opts.decoder_norm if opts.decoder_norm is not None else 1.0),  # `resolved` filled it in
        decoder_affine=bool(opts.decoder_affine),
        embedding_size=opts.embedding_size,
    )

    identity = model_id(opts, store, rows)
    if opts.init != "random" and opts.backbone != "prodlda":
        raise InputError(f"--init {opts.init} is for the prodlda backbone")
    if opts.cluster_weight and opts.init != "kmeans":
        raise InputError("--cluster-weight holds θ to the k-means start's clusters: it needs --init kmeans")
    best: tuple[float, VAE | FASTopic, list[float]] | None = None
    objectives: list[float] = []
    for restart in range(opts.restarts):
        seed = restart_seed(opts.seed, restart)
        # Each restart resumes from its own checkpoint; the first keeps the model's own name.
        name = identity if restart == 0 else f"{identity}-restart{restart}"
        checkpoint = checkpoint_path(store, name) if opts.checkpoint_every and store.path is not None else None
        # A finished restart is kept too (when there are others to run), so an interruption loses none.
        model, losses = fit_once(data, whole, config, opts, seed, checkpoint, keep_last=opts.restarts > 1)
        if opts.restarts == 1:
            best = (0.0, model, losses)
            break
        objective = training_objective(model, data, whole, opts)
        objectives.append(objective)
        progress.info(f"st train: restart {restart + 1} of {opts.restarts} (seed {seed}): objective {objective:.4f}")
        if best is None or objective < best[0]:
            best = (objective, model, losses)
    assert best is not None
    _, model, losses = best
    for restart in range(1, opts.restarts):
        drop_checkpoint(store, f"{identity}-restart{restart}")
    model.eval()
    full = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "id": identity,
        "backbone": opts.backbone,
        "model": config.to_dict(),
        "training": {
            **asdict(opts),
            "temperature": tau if opts.target == "softlabel" else None,
            "documents": int(len(rows)),
            "final_loss": losses[-1] if losses else None,
            **({"restart_objectives": objectives} if objectives else {}),
        },
        "vocab_fingerprint": store.attrs.get("vocab_fingerprint"),
        "lm": store.attrs.get("lm"),
        "prompt": store.attrs.get("prompt"),
        "max_tokens": store.attrs.get("max_tokens"),
        "input_source": input_source(store, opts),
    }
    fitted = Fitted(model, full, store.vocab())
    if opts.theta_neighbours:
        fitted.memory = ThetaMemory.of(fitted, data, whole)
    return fitted, losses


def restart_seed(seed: int, restart: int) -> int:
    """The seed of a restart: the run's own for the first; for the others, one derived from both,
    so that the restarts of seeds 0 and 1 share no training."""
    if restart == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/{restart}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def fit_once(
    data: TrainingData,
    whole: tuple[torch.Tensor, torch.Tensor] | None,
    config: TopicConfig,
    opts: TrainOptions,
    seed: int,
    checkpoint: Path | None,
    keep_last: bool = False,
) -> tuple[VAE | FASTopic, list[float]]:
    """One training from `seed`, resumed from `checkpoint` where one is left; with `keep_last`,
    the finished state is checkpointed too."""

    clusters: np.ndarray | None = None  # each training document's k-means cluster, for --cluster-weight

    def fresh() -> tuple[VAE | FASTopic, torch.optim.Optimizer, torch.Generator]:
        nonlocal clusters
        torch.manual_seed(seed)
        model = build(config)
        if opts.init == "kmeans":
            assert isinstance(model, ProdLDA)
            clusters = cluster_beta(model, data, whole, seed)
        return (
            model,
            torch.optim.Adam(model.parameters(), lr=opts.lr, betas=opts.betas),
            torch.Generator().manual_seed(seed),
        )

    model, optimizer, shuffle = fresh()
    lam = float(opts.lam or 0.0)
    losses: list[float] = []
    if checkpoint is not None and checkpoint.is_file():
        restored = restore_checkpoint(checkpoint, model, optimizer, shuffle)
        if restored is None:
            model, optimizer, shuffle = fresh()
        else:
            losses = restored
            progress.info(f"st train: resuming {checkpoint.stem} after epoch {len(losses)} of {opts.epochs}")
    model.train()
    with progress.task("st train", total=opts.epochs, unit="epochs") as bar:
        bar.advance(len(losses))
        for epoch in range(len(losses), opts.epochs):
            total, seen = 0.0, 0
            for positions in data.windows(shuffle):
                x, y = whole if whole is not None else data.read(positions)
                held = torch.from_numpy(clusters[positions]) if clusters is not None and opts.cluster_weight else None
                order = torch.randperm(len(x), generator=shuffle)
                # FASTopic's transport plans are between all documents and all topics: one step per window.
                batch_size = len(x) if opts.backbone == "fastopic" else int(opts.batch_size or 64)
                for start in range(0, len(x), batch_size):
                    idx = order[start : start + batch_size]
                    if len(idx) < 2:  # batch norm needs two documents
                        continue
                    if held is not None:
                        assert isinstance(model, VAE)
                        loss = model.loss(x[idx], y[idx], lam, opts.loss, (held[idx], float(opts.cluster_weight or 0)))
                    else:
                        loss = model.loss(x[idx], y[idx], lam, opts.loss)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(idx)
                    seen += len(idx)
                del x, y  # before the next window is read: one window in memory at a time
            losses.append(total / max(seen, 1))
            bar.advance()
            if checkpoint is not None:  # every --checkpoint-every epochs, and at the end with `keep_last`
                last = epoch + 1 == opts.epochs
                if (keep_last and last) or (not last and (epoch + 1) % opts.checkpoint_every == 0):
                    save_checkpoint(checkpoint, model, optimizer, shuffle, losses)
    model.eval()
    return model, losses


# Documents k-means sees when it starts β: a sample, so that a corpus of millions costs no more.
KMEANS_ROWS = 20000


@torch.no_grad()
def cluster_beta(
    model: ProdLDA, data: TrainingData, whole: tuple[torch.Tensor, torch.Tensor] | None, seed: int
) -> np.ndarray | None:
    """Start each topic at a cluster of the documents: k-means of the encoder's inputs (standardised),
    and β_k the log of the cluster's mean target, centred over the topics (the decoder norm centres
    each word anyway). Random starts let two topics share one theme and leave another to none, the
    main source of the spread between seeds; clusters start them apart. Returns each training
    document's cluster (−1 for one outside the sample k-means saw), or None where there are fewer
    documents than topics."""
    from sklearn.cluster import KMeans

    hood = data.neighbourhood
    n = len(data.rows)
    if hood is not None and hood.layout is not None:  # --layout umap: cluster the laid-out sample
        features = hood.layout.astype(np.float64)
        y = torch.from_numpy(hood.mixed(hood.rows, hood.inputs, hood.targets))
        at = np.searchsorted(hood.rows, data.rows).clip(max=len(hood.rows) - 1)
        sample, where = np.flatnonzero(hood.rows[at] == data.rows), at[hood.rows[at] == data.rows]
    else:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, KMEANS_ROWS, replace=False)) if n > KMEANS_ROWS else np.arange(n)
        where = np.arange(len(sample))
        x, y = (whole[0][sample], whole[1][sample]) if whole is not None else data.read(sample)
        features = x.double().numpy()
        features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    k = model.config.k
    if len(features) < k:
        return None  # fewer documents than topics: nothing to cluster, the random start stays
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(features)
    target = y.double().numpy()
    means = np.stack([target[labels == c].mean(0) if (labels == c).any() else target.mean(0) for c in range(k)])
    log = np.log(means + 1e-12)
    model.beta.copy_(torch.from_numpy(log - log.mean(0)).to(model.beta.dtype))
    clusters = np.full(n, -1, np.int64)
    clusters[sample] = labels[where]
    return clusters


@torch.no_grad()
def training_objective(
    model: VAE | FASTopic, data: TrainingData, whole: tuple[torch.Tensor, torch.Tensor] | None, opts: TrainOptions
) -> float:
    """The training loss over every training document, in eval mode (no dropout) and with fixed draws:
    what `--restarts` compares, the same for every restart."""
    model.eval()
    lam = float(opts.lam or 0.0)
    total, seen = 0.0, 0
    windows = [np.arange(len(data.rows))] if whole is not None else data.windows(torch.Generator().manual_seed(0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for positions in windows:
            x, y = whole if whole is not None else data.read(positions)
            batch = len(x) if opts.backbone == "fastopic" else 4096
            for start in range(0, len(x), batch):
                xb, yb = x[start : start + batch], y[start : start + batch]
                total += float(model.loss(xb, yb, lam, opts.loss)) * len(xb)
                seen += len(xb)
    return total / max(seen, 1)


def train(store: Corpus, rows: np.ndarray, opts: TrainOptions) -> tuple[Fitted, list[float]]:
    """Fit on the given store rows (`fit_model`), with the salience of the topics' words."""
    model, losses = fit_model(store, rows, opts)
    return with_salience(model, store, rows), losses


# --- checkpoints (safetensors and JSON, like model folders: nothing is unpickled) ----------------


def checkpoint_path(store: Corpus, identity: str) -> Path:
    assert store.path is not None
    return store.path / "checkpoints" / f"{identity}.safetensors"


def save_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, shuffle: torch.Generator, losses: list[float]
) -> None:
    """One file, written aside and renamed over the last one: a checkpoint that exists is whole."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).contiguous()
    tensors["rng.global"] = torch.get_rng_state()
    tensors["rng.shuffle"] = shuffle.get_state()
    meta = {"losses": losses, "param_groups": state["param_groups"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"st": json.dumps(meta)})
    os.replace(tmp, path)


def restore_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, shuffle: torch.Generator
) -> list[float] | None:
    """The losses of the epochs done; None (and the checkpoint removed) if it cannot be used."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["st"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # safe_open has no __iter__
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optim_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                optim_state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.global"])
        shuffle.set_state(tensors["rng.shuffle"])
        return [float(v) for v in meta["losses"]]
    except Exception as e:  # any damage means the same: start over
        progress.warn(f"ignoring a damaged training checkpoint ({type(e).__name__}), starting over: {path}")
        path.unlink(missing_ok=True)
        return None


def drop_checkpoint(store: Corpus, identity: str) -> None:
    if store.path is not None:
        checkpoint_path(store, identity).unlink(missing_ok=True)


def fit(
    corpus: Corpus,
    rows: np.ndarray | None,
    opts: TrainOptions,
    output: str | Path | None = None,
    top_words: int = TOP_WORDS,
) -> tuple[Fitted, np.ndarray]:
    """Train on `rows` of the corpus (None: all), write θ of every document into it, save the
    model (in `output`, or inside a store), and drop the training checkpoint: the whole of
    `st train`, for Python callers too. Returns the model and θ."""
    rows = np.arange(corpus.rows) if rows is None else np.asarray(rows)
    model, _ = fit_model(corpus, rows, opts)
    theta, own = model.thetas_of(corpus)
    # Words are salient by the documents' own θ: the neighbours' share is about the documents, and
    # spread over their topics it blurs the words (NPMI down on TweetTopic).
    with_salience(model, corpus, rows, own)
    corpus.write_theta(model.id, theta, {"model": model.id, "k": opts.k})
    if output is not None:
        save(model, Path(output), top_words)
        progress.info(f"model saved in {Path(output).absolute()}")
    elif corpus.path is not None:
        save(model, corpus.path / "models" / model.id, top_words)
        progress.info(f"model saved as {corpus.path}#{model.id}")
    drop_checkpoint(corpus, model.id)
    return model, theta


def train_lda(store: Corpus, rows: np.ndarray, opts: TrainOptions) -> Fitted:
    """gensim's LdaModel on the store's bag of words and vocabulary."""
    if len(rows) < 2:
        raise InputError("at least 2 documents are needed to train", store.name)
    bow = rows_bow(store, rows)
    if bow.nnz == 0:
        raise InputError("no document holds a vocabulary word; LDA has nothing to learn from", store.name)
    opts = TrainOptions(**{**asdict(opts), "target": "bow", "input": "bow"})
    with progress.status("st train: gensim LDA"):
        lda = GensimLDA.fit(bow, opts.k, opts.passes, opts.iterations, opts.seed)
    config = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "id": model_id(opts, store, rows),
        "backbone": "lda",
        "model": {"k": opts.k, "vocab_size": int(bow.shape[1])},
        "training": {**asdict(opts), "documents": int(len(rows))},
        "vocab_fingerprint": store.attrs.get("vocab_fingerprint"),
        "lm": store.attrs.get("lm"),
        "prompt": store.attrs.get("prompt"),
        "max_tokens": store.attrs.get("max_tokens"),
        "input_source": None,
    }
    return Fitted(lda, config, store.vocab())


# --- saving and loading -------------------------------------------------------------------------


def save(model: Fitted, folder: Path, top_words: int = TOP_WORDS) -> None:
    """Written under a temporary name and renamed into place: a folder that exists is whole."""
    folder = folder.absolute()
    if folder.exists() and not (folder / "config.json").is_file() and any(folder.iterdir()):
        raise InputError("exists and is not an st model folder; name another -o or remove it", str(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(model.config, indent=2))
        save_file(model.state(), str(tmp / "model.safetensors"))
        (tmp / "vocab.json").write_text(json.dumps(model.vocab, ensure_ascii=False))
        (tmp / "topics.json").write_text(json.dumps(model.topics(top_words), ensure_ascii=False, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    model.folder = folder


def save_names(model: Fitted, top_words: int = TOP_WORDS) -> None:
    """Rewrite the model folder's topics.json with the names (the weights are left as they are)."""
    if model.folder is None:
        return
    path = model.folder / "topics.json"
    try:
        saved = json.loads(path.read_text())
        top_words = len(saved[0]["words"]) if saved else top_words
    except (OSError, ValueError, LookupError, TypeError):
        pass
    tmp = path.with_name(f".topics-{os.getpid()}.json")
    try:
        tmp.write_text(json.dumps(model.topics(top_words), ensure_ascii=False, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        why = e.strerror or e
        raise InputError(f"cannot write the names into the model folder ({why})", str(model.folder)) from None
    finally:
        tmp.unlink(missing_ok=True)


def save_metrics(model: Fitted, corpus: str, row: dict[str, Any]) -> None:
    """Keep `st eval`'s measurements in the model folder (metrics.json, by corpus) for `st report`;
    a folder that cannot be written is left alone: the measurements were printed anyway."""
    if model.folder is None:
        return
    path = model.folder / "metrics.json"
    try:
        saved = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        saved = {}
    key = str(Path(corpus).absolute())
    saved[key] = {**saved.get(key, {}), **row}  # measured in parts (--metrics) add up
    tmp = path.with_name(f".metrics-{os.getpid()}.json")
    try:
        tmp.write_text(json.dumps(saved, ensure_ascii=False, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def saved_metrics(model: Fitted, corpus: str) -> dict[str, Any] | None:
    if model.folder is None:
        return None
    try:
        saved = json.loads((model.folder / "metrics.json").read_text())
        return dict(saved[str(Path(corpus).absolute())])
    except (OSError, ValueError, LookupError, TypeError):
        return None


def saved_names(folder: Path, k: int) -> list[str] | None:
    """The names in a model folder's topics.json, if every topic has one."""
    try:
        saved = json.loads((folder / "topics.json").read_text())
        names = [str(t["name"]) for t in saved]
    except (OSError, ValueError, LookupError, TypeError):
        return None
    return names if len(names) == k else None


def load(spec: str) -> tuple[Fitted, Store | None]:
    """A model folder, or `store.zarr#model-id` for a model saved inside a store."""
    store = None
    folder = Path(spec)
    if "#" in spec and not folder.exists():
        store_path, model_name = spec.rsplit("#", 1)
        store = Store(store_path)
        if "/" in model_name or model_name in ("", ".", ".."):
            raise InputError("not a model id", spec)
        folder = store.path / "models" / model_name
        if not folder.is_dir():
            known = sorted(p.name for p in (store.path / "models").glob("*") if p.is_dir())
            raise InputError(f"no model {model_name!r} in the store (it has: {', '.join(known) or 'none'})", spec)
    if not (folder / "config.json").is_file():
        raise InputError("not an st model folder (no config.json); make one with `st train -o`", spec)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"damaged config.json ({e}); train the model again", spec) from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT or config.get("version") != MODEL_VERSION:
        raise InputError(f"not an st model of format version {MODEL_VERSION}", spec)
    try:
        vocab = json.loads((folder / "vocab.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"damaged model folder ({e}); train it again", spec) from None
    try:
        state = load_file(str(folder / "model.safetensors"))
        salient = state.pop(SALIENCE_KEY, None)
        memory = ThetaMemory.from_state(state, config["training"])
        if config.get("backbone") == "lda":
            t = config["training"]
            model: VAE | FASTopic | GensimLDA = GensimLDA.from_state(state, t["seed"], t["passes"], t["iterations"])
        else:
            model = build(TopicConfig(**config["model"]))
            model.load_state_dict(state)
            model.eval()
    except Exception as e:  # safetensors, torch and OS errors all mean the same here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"missing or damaged model.safetensors ({first}); train it again", spec) from None
    k = int(config["training"]["k"])
    fitted = Fitted(model, config, vocab, None if salient is None else salient.numpy(), saved_names(folder, k), folder)
    fitted.memory = memory
    return fitted, store
