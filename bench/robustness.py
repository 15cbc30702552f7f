"""`make robustness`: does the default hold on every seed, K, corpus size and corpus?

For each shared corpus and size (a label-stratified subset, `bench/quality.py`'s), the embedded LM
encodes the documents once (through the shared LM cache); then for each K and seed each model is
trained with `st train` and measured with `st eval` (BERTopic by bench/bertopic_baseline.py, with
the same metrics). Reported per cell (corpus, size, K, model): mean, std and worst seed of purity,
NMI, P@10, NPMI and TD, the training time, and the issue's checks for the default:

- spread: seed std of purity and NMI ≤ 0.02;
- floor: its worst seed's purity and NMI above the contextual baseline's mean;
- BERTopic: its mean above BERTopic's on purity, NMI, P@10 and NPMI (K ≥ 10).

The same checks are shown for the DSL variants (the levers), so that each can be judged as a default.

Finished runs are kept in WORK/results.jsonl, so an interrupted run resumes; `--table-only` writes
the tables from them. Levers (other `st train` flags) are models of bench/quality.py's MODELS.

Usage: python bench/robustness.py [--corpora stackoverflow,tweet_topic] [--sizes 1000 2500 6000]
           [--k 5 10 20 50] [--seeds 0 1 2 3 4] [--models dsl,dsl-own-theta,ctm,bertopic] [--jobs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import quality  # bench/quality.py
import readme  # bench/readme.py

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["purity", "nmi", "p@10", "npmi", "td"]
SPREAD = 0.02  # the largest seed std of purity and NMI the default may have
BEAT = ["purity", "nmi", "p@10", "npmi"]


def stats(rows: list[dict], metric: str) -> tuple[float, float, float]:
    v = np.array([r[metric] for r in rows], dtype=float)
    return float(v.mean()), float(v.std()), float(v.min())


def checks(cell: dict[str, list[dict]], default: str, k: int) -> list[str]:
    """The issue's conditions for the default in one cell; each names what failed."""
    out = []
    mine = cell.get(default, [])
    if not mine:
        return out
    for m in ("purity", "nmi"):
        if len(mine) > 1 and stats(mine, m)[1] > SPREAD:
            out.append(f"std {m}")
        if cell.get("ctm") and stats(mine, m)[2] <= stats(cell["ctm"], m)[0]:
            out.append(f"worst {m} ≤ ctm")
    if k >= 10 and cell.get("bertopic"):
        out += [f"{m} ≤ BERTopic" for m in BEAT if stats(mine, m)[0] <= stats(cell["bertopic"], m)[0]]
    return out


def tables(
    results: list[dict], corpora: list[str], sizes: list[int], ks: list[int], models: list[str]
) -> tuple[str, str]:
    """How many cells each DSL row passes (one line), and the full tables: every model, every cell."""
    out = []
    cells = 0
    passing = {m: 0 for m in models if m.startswith("dsl")}  # cells where each DSL row meets every check
    for corpus in corpora:
        for size in sizes:
            rows_here = [r for r in results if r["corpus"] == corpus and r["size"] == size]
            if not rows_here:
                continue
            docs = rows_here[0]["documents"]
            out.append(f"\n**{quality.CORPORA[corpus]}**, {docs:,} documents\n")
            head = " | ".join(f"{m.upper() if m != 'p@10' else 'P@10'} mean ± std (worst)" for m in METRICS)
            out.append(f"| K | model | {head} | seeds | train s | checks |")
            out.append("|---" * (len(METRICS) + 5) + "|")
            for k in ks:
                cell = {m: [r for r in rows_here if r["k"] == k and r["name"] == m] for m in models}
                # A cell without the baselines' runs is checked for the spread alone, and says so.
                missing = [m for m in ("ctm", "bertopic") if not cell.get(m) and (m != "bertopic" or k >= 10)]
                if cell[models[0]] and not missing:
                    cells += 1
                    for m in passing:
                        passing[m] += bool(cell[m]) and not checks(cell, m, k)
                for model in models:
                    rows = cell[model]
                    if not rows:
                        continue
                    values = " | ".join("{:.3f} ± {:.3f} ({:.3f})".format(*stats(rows, m)) for m in METRICS)
                    seconds = np.mean([r["train_s"] for r in rows])
                    failed = checks(cell, model, k)  # the default's checks, and those of DSL's other levers
                    verdict = ("✗ " + ", ".join(failed) if failed else "✓") if model.startswith("dsl") else ""
                    if verdict and missing:
                        verdict += f" (no {' or '.join(missing)} runs: spread only)"
                    label = model if model != "dsl" else "**dsl**"
                    out.append(f"| {k} | {label} | {values} | {len(rows)} | {seconds:.0f} | {verdict} |")
    met = passing.pop(models[0], 0)
    summary = f"The default ({models[0]}) meets every check in {met} of the {cells} cells with baselines"
    summary += "".join(f"; {m}, in {n}" for m, n in passing.items()) + "."
    legend = "; ".join(f"{m}: {quality.MODELS[m][0]}" for m in models)
    return summary, "Models — " + legend + ".\n" + "\n".join(out)


def default_rows(results: list[dict], corpora: list[str], sizes: list[int], ks: list[int], models: list[str]) -> str:
    """The README's block: per corpus, one row per size and K with the default's mean ± std beside
    BERTopic's mean, its worst seed beside the contextual baseline's mean, and the checks; the full
    tables (every model, worst seeds, times) are in bench/robustness.md."""
    default = models[0]
    out = []
    for corpus in corpora:
        rows_here = [r for r in results if r["corpus"] == corpus and r["size"] in sizes]
        if not rows_here:
            continue
        out.append(f"\n**{quality.CORPORA[corpus]}**: {default} mean ± std over the seeds (BERTopic's mean)\n")
        head = " | ".join("P@10" if m == "p@10" else m.upper() if m in ("nmi", "npmi", "td") else m for m in METRICS)
        out.append(f"| documents | K | {head} | worst purity / NMI (ctm's mean) | checks |")
        out.append("|---" * (len(METRICS) + 4) + "|")
        for size in sizes:
            for k in ks:
                cell = {
                    m: [r for r in rows_here if r["size"] == size and r["k"] == k and r["name"] == m] for m in models
                }
                mine = cell.get(default, [])
                if not mine:
                    continue
                values = []
                for m in METRICS:
                    mean, std, _ = stats(mine, m)
                    theirs = f" ({stats(cell['bertopic'], m)[0]:.3f})" if cell.get("bertopic") else ""
                    values.append(f"{mean:.3f} ± {std:.3f}{theirs}")
                worst = " / ".join(f"{stats(mine, m)[2]:.3f}" for m in ("purity", "nmi"))
                if cell.get("ctm"):
                    worst += " (" + " / ".join(f"{stats(cell['ctm'], m)[0]:.3f}" for m in ("purity", "nmi")) + ")"
                failed = checks(cell, default, k)
                verdict = "✗ " + ", ".join(failed) if failed else "✓"
                out.append(f"| {mine[0]['documents']:,} | {k} | " + " | ".join(values) + f" | {worst} | {verdict} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default=",".join(quality.CORPORA))
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2500, 6000])
    ap.add_argument("--k", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument(
        "--models",
        default="dsl,dsl-own-theta,ctm,bertopic",
        help="The first is the one checked.",
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="Override the training epochs (quick runs).")
    ap.add_argument("--table-only", action="store_true", help="Write the tables from the finished runs.")
    ap.add_argument("--work", default=str(ROOT / "bench" / "robustness-work"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "robustness.md"))
    ap.add_argument("--readme", default=None)
    args = ap.parse_args()
    corpora, models = args.corpora.split(","), args.models.split(",")
    unknown = [m for m in models if m not in quality.MODELS] + [c for c in corpora if c not in quality.CORPORA]
    if unknown:
        sys.exit(f"unknown model or corpus: {', '.join(unknown)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    done_file = work / "results.jsonl"
    results = [orjson.loads(x) for x in done_file.read_bytes().splitlines()] if done_file.exists() else []
    results = [r for r in results if r.get("epochs") == args.epochs]
    done = {(r["corpus"], r["size"], r["k"], r["seed"], r["name"]) for r in results}
    stores: dict[tuple[str, int, str], Path] = {}  # (corpus, size, model): its store
    if not args.table_only:
        for corpus in corpora:
            for size in args.sizes:
                folder = work / f"{corpus}-{size}"
                folder.mkdir(exist_ok=True)
                default = quality.encode(corpus, size, folder)
                for model in models:  # before the runs, which would otherwise make them side by side
                    flags = quality.SOFTLABEL.get(model)
                    stores[corpus, size, model] = quality.encode(corpus, size, folder, flags) if flags else default
                    if model in quality.EMBED:
                        quality.embedded(default, model)
    # The first seed of every cell first, so that a run cut short still covers every cell.
    todo = [
        (corpus, size, k, seed, model)
        for seed in args.seeds
        for corpus in corpora
        for size in args.sizes
        for k in args.k
        for model in models
        if (corpus, size, k, seed, model) not in done and not args.table_only
    ]
    failed = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            pool.submit(quality.run_one, stores[c, n, m], m, k, s, stores[c, n, m].parent, args.epochs): (c, n, k, s, m)
            for c, n, k, s, m in todo
        }
        for future in concurrent.futures.as_completed(futures):
            corpus, size, k, seed, model = futures[future]
            try:
                r = future.result()
            except RuntimeError as e:  # the others go on; the table says what finished
                failed.append(f"{corpus} {size} K={k} seed={seed} {model}: {e}")
                print(failed[-1], file=sys.stderr)
                continue
            r.update(corpus=corpus, size=size, k=k, seed=seed, name=model, epochs=args.epochs)
            results.append(r)
            with open(done_file, "ab") as f:
                f.write(orjson.dumps(r) + b"\n")
            summary = " ".join(f"{m}={r[m]:.3f}" for m in METRICS)
            print(f"{corpus} {size} K={k} seed={seed} {model}: {summary} ({r['train_s']:.0f} s)", file=sys.stderr)
    head = (
        f"`make robustness` ({time.strftime('%Y-%m-%d')}, embedded SmolLM2-135M-Instruct, τ = 3, seeds "
        f"{', '.join(map(str, args.seeds))}; P@10 by KL between θ; NPMI on the corpus itself, top 10 words; "
        "TD on the top 25{}):\n"
    )
    planned = len(corpora) * len(args.sizes) * len(args.k) * len(args.seeds) * len(models)
    finished = {
        (r["corpus"], r["size"], r["k"], r["seed"], r["name"])
        for r in results
        if r["corpus"] in corpora
        and r["size"] in args.sizes
        and r["k"] in args.k
        and r["seed"] in args.seeds
        and r["name"] in models
    }
    if len(finished) < planned:  # a table cut short says so
        head += f"\n{len(finished)} of the {planned} planned trainings have finished.\n"
    full_head = head.format("; each cell: mean ± std (worst seed); train s: one training, 1 thread")
    passed, full = tables(results, corpora, args.sizes, args.k, models)
    readme.publish(f"{full_head}\n{passed}\n\n{full}", "robustness", Path(args.out), None)
    if args.readme:  # the README gets the default's rows; bench/robustness.md keeps every model's
        short = default_rows(results, corpora, args.sizes, args.k, models)
        readme.put(Path(args.readme), "robustness", f"{head.format('')}\n{passed}\n{short}")
    if failed:
        sys.exit(f"{len(failed)} runs failed (see above)")


if __name__ == "__main__":
    main()
