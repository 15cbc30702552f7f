"""`make quality`: DSL against the classic topic models, side by side, on the shared labelled corpora.

For each corpus (a fixed, label-stratified subset of up to --docs documents), the embedded LM
encodes the documents once (`st softlabel`, through the shared cache), then for each K and seed
every model is trained with `st train` on the same store, vocabulary and documents and measured
with `st eval`. The table (mean ± std over seeds) goes to --out and, between the quality markers,
into --readme (`make quality`: docs/results.md). Finished runs are kept in WORK/results.jsonl, so
an interrupted run resumes.

The headline models run with every seed; the other backbones and the DSL variants (--extra) with
the first seed only, to keep `make quality` within a few hours on a 2-core CPU (--jobs trainings
run at once, one thread each).

BERTopic (bench/bertopic_baseline.py) needs the baselines extra: pip install '.[baselines]'.

Usage: python bench/quality.py [--docs 6000] [--k 20 50] [--seeds 0 1 2] [--models dsl,prodlda,ctm,lda,bertopic]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import readme  # bench/readme.py

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CORPORA = {"stackoverflow": "StackOverflow titles", "tweet_topic": "TweetTopic"}
METRICS = ["npmi", "cv", "td", "purity", "nmi", "p@10"]

# name: (label in the table, `st train` flags)
MODELS: dict[str, tuple[str, list[str]]] = {
    "dsl": (
        "DSL-ProdLDA (st default: the LM's hidden state and MiniLM's embedding side by side as input, calibrated "
        "target + 0.3 bag of words, mixed half and half with the mean target of the 10 nearest documents in a UMAP "
        "layout of the inputs (the LM's part and MiniLM's weighed alike), decoder norm 0.75 with a learned gain "
        "and shift, no dropout on θ, 256 documents per step, β started at k-means clusters of that layout, salient "
        "topic words, θ mixed half and half with the mean θ of its 30 nearest among 2,000 kept training documents)",
        [],
    ),
    "dsl-own-theta": (
        "DSL-ProdLDA, each document's own θ, not mixed with its nearest training documents' (the default before)",
        ["--theta-neighbours", "0"],
    ),
    "dsl-lm": ("DSL-ProdLDA on the LM's hidden state alone (the default before)", []),
    "dsl-own": ("DSL-ProdLDA, each document's own target: no neighbours", ["--neighbours", "0"]),
    "dsl-weight08": ("DSL-ProdLDA, neighbours' mean target weighted 0.8", ["--neighbour-weight", "0.8"]),
    "dsl-held": (
        "DSL-ProdLDA, θ held to the k-means clusters of the layout that its topics start from (`--cluster-weight 30`)",
        ["--cluster-weight", "30"],
    ),
    "dsl-whole": (
        "DSL-ProdLDA, the layout of the standardised inputs as a whole, where the LM's 576 dimensions outweigh "
        "MiniLM's 384 (the default before)",
        ["--no-balance-inputs"],
    ),
    "dsl-inputs": (
        "DSL-ProdLDA, neighbours and k-means start in the standardised inputs as a whole, not a UMAP layout (the "
        "default before that)",
        ["--layout", "inputs", "--no-balance-inputs"],
    ),
    "dsl-batch64": (
        "DSL-ProdLDA, 64 documents per step (ProdLDA's; the default before)",
        ["--batch-size", "64"],
    ),
    "dsl-noaff": (
        "DSL-ProdLDA, decoder norm 0.5 without the gain and shift, dropout 0.2 on θ, 64 documents per step (an "
        "earlier default)",
        ["--decoder-norm", "0.5", "--no-decoder-affine", "--theta-dropout", "0.2", "--batch-size", "64"],
    ),
    "dsl-theta-dropout": (
        "DSL-ProdLDA, dropout 0.2 on θ and 64 documents per step (ProdLDA's)",
        ["--theta-dropout", "0.2", "--batch-size", "64"],
    ),
    "dsl-beta": ("DSL-ProdLDA, topic words ranked by β (the paper's)", ["--topic-words", "beta"]),
    "dsl-pure": ("DSL-ProdLDA, the soft label alone (the paper's target)", ["--bow-weight", "0"]),
    "dsl-dec1": ("DSL-ProdLDA, decoder τ = 1 (default: the target's τ, 3)", ["--decoder-temperature", "1"]),
    "dsl-dec2": ("DSL-ProdLDA, decoder τ = 2", ["--decoder-temperature", "2"]),
    "dsl-bow5": ("DSL-ProdLDA, target + 0.5 bag of words", ["--bow-weight", "0.5"]),
    "dsl-ww8": ("DSL-ProdLDA, whole-word probabilities (8 per document)", []),
    "dsl-bn": (
        "DSL-ProdLDA, ProdLDA's batch-norm decoder, no calibration (the published setting)",
        [
            "--decoder-norm",
            "1",
            "--no-calibrate",
            "--no-decoder-affine",
            "--theta-dropout",
            "0.2",
            "--batch-size",
            "64",
        ],
    ),
    "ctm-dsl-decoder": (
        "Contextual BoW with DSL's decoder (norm 0.75, gain and shift)",
        ["--target", "bow", "--input", "hidden", "--decoder-norm", "0.75", "--decoder-affine"],
    ),
    "ctm-norm": (
        "Contextual BoW with decoder norm 0.5",
        ["--target", "bow", "--input", "hidden", "--decoder-norm", "0.5"],
    ),
    "dsl-bow7": ("DSL-ProdLDA, target + 0.7 bag of words", ["--bow-weight", "0.7"]),
    "dsl-kmeans": ("DSL-ProdLDA, β started at k-means clusters of the inputs", ["--init", "kmeans"]),
    "dsl-random": ("DSL-ProdLDA, β started at random (the default before)", ["--init", "random"]),
    "dsl-restarts3": (
        "DSL-ProdLDA, k-means start, best of 3 restarts by training objective",
        ["--restarts", "3", "--init", "kmeans"],
    ),
    "dsl-etm": ("DSL-ETM", ["--backbone", "etm"]),
    "dsl-ecrtm": ("DSL-ECRTM", ["--backbone", "ecrtm"]),
    "dsl-fastopic": ("DSL-FASTopic", ["--backbone", "fastopic"]),
    "prodlda": ("ProdLDA (bag of words)", ["--target", "bow", "--input", "bow"]),
    "ctm": ("Contextual BoW (CombinedTM-like), on DSL's inputs", ["--target", "bow", "--input", "hidden"]),
    "ctm-lm": ("Contextual BoW on the LM's hidden state alone", ["--target", "bow", "--input", "hidden"]),
    "lda": ("LDA (gensim)", ["--backbone", "lda"]),
    # Not an st model: bench/bertopic_baseline.py, measured with st eval's metrics.
    "bertopic": ("BERTopic (MiniLM, UMAP, k-means)", []),
    "bertopic-lm": ("BERTopic on the LM's hidden states (UMAP, k-means)", ["--lm-hidden"]),
    # DSL on a store whose hidden states `st embed --embedder` replaced (see EMBED).
    "dsl-minilm": ("DSL-ProdLDA on MiniLM's sentence embeddings alone", []),
}


def st(*args: str, stdin: bytes | None = None, threads: str | None = None) -> bytes:
    """`st` in a subprocess; one thread unless told, since --jobs trainings run side by side."""
    exe = Path(sys.executable).with_name("st")
    env = {**os.environ, "OMP_NUM_THREADS": threads or os.environ.get("OMP_NUM_THREADS", "1")}
    r = subprocess.run([str(exe), *args], input=stdin, capture_output=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"st {' '.join(args)} failed:\n{r.stderr.decode()[-2000:]}")
    return r.stdout


def stratified(name: str, n: int) -> list[bytes]:
    """Up to n documents, an equal share per label where the labels allow (file order within a label)."""
    lines = (DATA / f"{name}.jsonl").read_bytes().splitlines()
    by_label: dict[str, list[bytes]] = collections.defaultdict(list)
    for line in lines:
        by_label[orjson.loads(line)["label"]].append(line)
    if len(lines) <= n:
        return lines
    cap, chosen = 0, 0
    while chosen < n:  # raise the per-label cap until n documents fit
        cap += 1
        chosen = sum(min(cap, len(v)) for v in by_label.values())
    keep = {id(line) for v in by_label.values() for line in v[:cap]}
    return [line for line in lines if id(line) in keep][:n]


# Variants that need their own store: `st softlabel` flags, by model.
SOFTLABEL: dict[str, list[str]] = {
    "dsl-ww8": ["--whole-words", "8"],
    "dsl-lm": ["--embedder", "none"],
    "ctm-lm": ["--embedder", "none"],
    "bertopic-lm": ["--embedder", "none"],
}


def encode(name: str, n: int, work: Path, flags: list[str] | None = None) -> Path:
    """The corpus's store (one per set of `st softlabel` flags); LM time goes to WORK/lm-seconds.json."""
    flags = flags or []
    suffix = "".join(f.lstrip("-").replace("-", "") for f in flags)
    store = work / f"{name}{'-' + suffix if suffix else ''}.zarr"
    docs = work / f"{name}.jsonl"
    docs.write_bytes(b"\n".join(stratified(name, n)) + b"\n")
    t = time.perf_counter()
    st("softlabel", str(docs), "-o", str(store), "--force", *flags, threads=str(os.cpu_count() or 1))
    print(f"{name} {' '.join(flags)}: encoded in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return store


# Variants trained on a copy of the store whose hidden states `st embed` replaced: its flags, by model.
EMBED: dict[str, list[str]] = {
    "dsl-minilm": ["--embedder", "minilm"],
}


def embedded(store: Path, model: str) -> Path:
    """The copy of `store` with `st embed`'s hidden states for `model` (made once)."""
    flags = EMBED[model]
    out = store.with_name(f"{store.stem}-{model}.zarr")
    if not (out / "zarr.json").is_file() or "embedder" not in orjson.loads((out / "zarr.json").read_bytes()).get(
        "attributes", {}
    ).get("hidden_source", {}):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(store, out, ignore=shutil.ignore_patterns("models", "checkpoints", "theta", "log_theta"))
        docs = store.with_suffix(".jsonl")
        st("embed", str(docs), "-o", str(out), *flags, threads=str(os.cpu_count() or 1))
    return out


def bertopic(store: Path, k: int, seed: int, work: Path, flags: list[str] | None = None) -> dict:
    script = ROOT / "bench" / "bertopic_baseline.py"
    emb = work / f"{store.stem}.minilm.npy"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    cmd = [sys.executable, str(script), "--store", str(store), "-k", str(k), "--seed", str(seed)]
    cmd += ["--embeddings", str(emb), *(flags or [])]
    r = subprocess.run(cmd, capture_output=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr.decode()[-2000:]}")
    return {**orjson.loads(r.stdout.splitlines()[-1]), "train_s": time.perf_counter() - t}


def run_one(store: Path, model: str, k: int, seed: int, work: Path, epochs: int | None) -> dict:
    if model.startswith("bertopic"):
        return bertopic(store, k, seed, work, MODELS[model][1])
    if model in EMBED:
        store = embedded(store, model)
    folder = work / "models" / f"{store.stem}-{model}-k{k}-s{seed}"
    flags = MODELS[model][1] + (["--epochs", str(epochs)] if epochs and model != "lda" else [])
    t = time.perf_counter()
    st("train", "-q", "--store", str(store), "-k", str(k), "--seed", str(seed), "-o", str(folder), *flags)
    seconds = time.perf_counter() - t
    result = orjson.loads(st("eval", "-q", "--store", str(store), "-m", str(folder)).splitlines()[0])
    return {**result, "train_s": seconds}


def store_key(corpus: str, model: str) -> str | tuple[str, tuple[str, ...]]:
    return (corpus, tuple(SOFTLABEL[model])) if model in SOFTLABEL else corpus


def table(
    results: list[dict], corpora: list[str], ks: list[int], models: list[str], docs: dict[str, int], std: bool = True
) -> str:
    out = []
    for corpus in corpora:
        for k in ks:
            out.append(f"\n**{CORPORA[corpus]}** ({docs[corpus]:,} documents), K = {k}\n")
            names = [m.upper() if m != "p@10" else "P@10" for m in METRICS]
            out.append("| model | " + " | ".join(names) + (" | seeds |" if std else " |"))
            out.append("|---" * (len(METRICS) + 1 + std) + "|")
            for model in models:
                rows = [r for r in results if (r["corpus"], r["k"], r["name"]) == (corpus, k, model)]
                if not rows:
                    continue
                cells = []
                for m in METRICS:
                    v = np.array([r[m] for r in rows], dtype=float)
                    cells.append(f"{v.mean():.3f} ± {v.std():.3f}" if std else f"{v.mean():.3f}")
                out.append(f"| {MODELS[model][0]} | " + " | ".join(cells) + (f" | {len(rows)} |" if std else " |"))
    return "\n".join(out).lstrip("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=6000)
    ap.add_argument("--k", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", default="dsl,prodlda,ctm,lda,bertopic")
    extras = ",".join(
        [
            "dsl-batch64",
            "dsl-theta-dropout",
            "dsl-noaff",
            "dsl-bn",
            "ctm-dsl-decoder",
            "ctm-norm",
            "dsl-beta",
            "dsl-pure",
            "dsl-dec1",
            "dsl-ww8",
            "dsl-etm",
            "dsl-ecrtm",
            "dsl-fastopic",
        ]
    )
    ap.add_argument("--extra", default=extras)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--extra-k", type=int, nargs="+", default=None, help="Run the extras at these K only.")
    ap.add_argument("--table-only", action="store_true", help="Write the table from the finished runs; train nothing.")
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--epochs", type=int, default=None, help="Override the training epochs (quick runs).")
    ap.add_argument("--work", default=str(ROOT / "bench" / "quality-work"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "quality.md"))
    ap.add_argument("--readme", default=None)
    args = ap.parse_args()
    models = args.models.split(",")
    extra = [m for m in args.extra.split(",") if m]
    corpora = args.corpora.split(",")
    unknown = [m for m in models + extra if m not in MODELS] + [c for c in corpora if c not in CORPORA]
    if unknown:
        sys.exit(f"unknown model or corpus: {', '.join(unknown)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    done_file = work / "results.jsonl"
    results = [orjson.loads(x) for x in done_file.read_bytes().splitlines()] if done_file.exists() else []
    config = {"docs": args.docs, "epochs": args.epochs}
    results = [r for r in results if r.get("config") == config]
    docs, stores = {}, {}
    for corpus in corpora:
        if not args.table_only:
            stores[corpus] = encode(corpus, args.docs, work)
            for variant in sorted({tuple(SOFTLABEL[m]) for m in models + extra if m in SOFTLABEL}):
                stores[(corpus, variant)] = encode(corpus, args.docs, work, list(variant))
        docs[corpus] = len((work / f"{corpus}.jsonl").read_bytes().splitlines())
    extra_k = args.extra_k or args.k
    first = args.seeds[0]

    def priority(task: tuple[str, int, int, str]) -> tuple[int, ...]:
        """Most telling first, so that a run cut short still fills the main table: the headline
        models on the first seed, then the other seeds, then the variants."""
        corpus, k, seed, model = task
        rank = 0 if model in models and seed == first else 1 if model in models else 2 + extra.index(model)
        return (rank, args.seeds.index(seed), corpora.index(corpus), args.k.index(k))

    done = {(r["corpus"], r["k"], r["seed"], r["name"]) for r in results}
    todo = sorted(
        (
            (corpus, k, seed, model)
            for corpus in corpora
            for k in args.k
            for seed in args.seeds
            for model in models + (extra if seed == first and k in extra_k else [])
            if (corpus, k, seed, model) not in done and not args.table_only
        ),
        key=priority,
    )
    failed: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            pool.submit(run_one, stores[store_key(t[0], t[3])], t[3], t[1], t[2], work, args.epochs): t for t in todo
        }
        for future in concurrent.futures.as_completed(futures):
            corpus, k, seed, model = futures[future]
            try:
                r = future.result()
            except RuntimeError as e:  # the other runs go on; the table says what finished
                failed.append(f"{corpus} K={k} seed={seed} {model}: {e}")
                print(failed[-1], file=sys.stderr)
                continue
            r.update(corpus=corpus, k=k, seed=seed, name=model, config=config)
            results.append(r)
            with open(done_file, "ab") as f:
                f.write(orjson.dumps(r) + b"\n")
            summary = " ".join(f"{m}={r[m]:.3f}" for m in METRICS)
            print(f"{corpus} K={k} seed={seed} {model}: {summary} ({r['train_s']:.0f} s)", file=sys.stderr)
    text = table(results, corpora, args.k, models, docs)
    if extra:
        text += (
            f"\n\nOther backbones and DSL variants, seed {args.seeds[0]} only (the DSL-ProdLDA row repeats the "
            "default for comparison):\n\n"
            + table(
                [r for r in results if r["seed"] == args.seeds[0]], corpora, extra_k, ["dsl", *extra], docs, std=False
            )
        )
    head = (
        f"`make quality` ({time.strftime('%Y-%m-%d')}, embedded SmolLM2-135M-Instruct, τ = 3, "
        f"seeds {', '.join(map(str, args.seeds))}; mean ± std over the seeds that finished; NPMI and C_V on "
        "the corpus itself, top 10 words; TD on the top 25 words; P@10 by KL between θ):\n"
    )
    Path(args.out).write_text(head + "\n" + text + "\n")
    print(head + "\n" + text)
    if args.readme:
        readme.put(Path(args.readme), "quality", head + "\n" + text)
    if failed:
        sys.exit(f"{len(failed)} runs failed (see above)")


if __name__ == "__main__":
    main()
