"""Are the LM's topic names right? On StackOverflow titles (K = 20, the embedded LM), each topic's
name against the majority class of its documents, beside naming it by its top 3 words.

A name counts as right when it contains the class or one of the class's unambiguous names below
(the rule is fixed here, before looking at any name). Writes the table to --out and, between the
README's naming markers, to --readme.

    python bench/naming.py --docs 2000 --seeds 0 1 2 --out bench/naming.md --readme README.md
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import readme  # bench/readme.py

import st

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
README_ROWS = 6  # topics of the first seed shown in the README
# What clearly denotes each class besides its own name (products' other names, the language of a tool).
ALIASES = {
    "osx": ["os x", "mac", "macos"],
    "visual-studio": ["visual studio", "vs20"],
    "svn": ["subversion"],
    "bash": ["shell script"],
    "cocoa": ["objective-c"],
    "excel": ["vba"],
    "oracle": ["pl/sql", "plsql"],
}


def denotes(name: str, label: str) -> bool:
    text = " " + re.sub(r"[^a-z0-9/+#.\- ]", " ", name.lower()) + " "
    return any(re.search(rf"(?<![a-z]){re.escape(a)}(?![a-z])", text) for a in [label, *ALIASES.get(label, [])])


def balanced(n: int, skip: int = 0) -> list[dict]:
    """n titles, as many per class, after the first `skip` of each class."""
    rows = [orjson.loads(line) for line in (DATA / "stackoverflow.jsonl").open("rb")]
    per = n // len({r["label"] for r in rows})
    seen: collections.Counter[str] = collections.Counter()
    out = []
    for r in rows:
        seen[r["label"]] += 1
        if skip < seen[r["label"]] <= skip + per:
            out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument(
        "--skip", type=int, default=100, help="Titles per class left out: the prompt was chosen on the first 100."
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "naming")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--readme", type=Path, default=None)
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    rows = balanced(args.docs, args.skip)
    lm = st.LM()
    path = args.work / f"so-{args.docs}-after-{args.skip}.zarr"
    corpus = st.open_store(path) if path.exists() else st.softlabel(rows, lm=lm, store=path)
    labels = np.asarray([r["label"] for r in corpus.records()])
    # Names from an empty LM cache (the converted model shared), so the time is the LM's.
    fresh = Path(tempfile.mkdtemp(prefix="st-naming-"))
    (fresh / "models").symlink_to(lm.models_dir / "models", target_is_directory=True)
    namer = st.LM(cache_dir=fresh)
    per_seed, table = [], []
    for seed in args.seeds:
        model = st.DSL(args.k, seed=seed).fit(corpus)
        t0 = time.perf_counter()
        names = model.name_topics(corpus, lm=namer)
        naming_s = time.perf_counter() - t0
        main_topic = corpus.theta(model.id).argmax(axis=1)
        right = {"lm": 0, "words": 0}
        for t, words in enumerate(model.topics(10)):
            mine = labels[main_topic == t]
            if len(mine) == 0:
                majority, share = "-", 0.0
            else:
                majority, count = collections.Counter(mine.tolist()).most_common(1)[0]
                share = count / len(mine)
            by_words = " ".join(words[:3])
            ok_lm, ok_words = denotes(names[t], majority), denotes(by_words, majority)
            right["lm"] += ok_lm
            right["words"] += ok_words
            if seed == args.seeds[0]:
                table.append(
                    f"| {t} | {names[t]} | {by_words} | {majority} ({share:.0%} of {len(mine)}) | "
                    f"{'yes' if ok_lm else 'no'} | {'yes' if ok_words else 'no'} |"
                )
        per_seed.append((seed, right["lm"] / args.k, right["words"] / args.k, naming_s))
    shutil.rmtree(fresh)
    lm_shares = [s[1] for s in per_seed]
    word_shares = [s[2] for s in per_seed]
    lines = [
        f"`python bench/naming.py` ({time.strftime('%Y-%m-%d')}): {len(rows):,} StackOverflow titles "
        f"({len(rows) // 20} per class, after the first {args.skip} of each class, on which the naming prompt "
        f"was chosen), DSL K = {args.k} with the defaults, names by the embedded "
        f"SmolLM2-135M-Instruct (`st label`, greedy). A name is right when it contains the majority class of the "
        "topic's documents or an unambiguous name of it (fixed list in the script). Seed "
        f"{args.seeds[0]}:",
        "",
        "| # | LM name | top 3 words | majority class | LM name right | top 3 words right |",
        "|---|---|---|---|---|---|",
        *table,
        "",
        "Share of topics named right, per seed: "
        + "; ".join(f"seed {s}: LM {a:.0%}, top 3 words {b:.0%} (naming took {t:.0f} s)" for s, a, b, t in per_seed)
        + " (the first time includes loading the LM)"
        + f". Mean: LM {np.mean(lm_shares):.0%} ± {np.std(lm_shares):.0%}, "
        f"top 3 words {np.mean(word_shares):.0%} ± {np.std(word_shares):.0%}.",
    ]
    readme.publish("\n".join(lines), "naming", args.out, None)
    if args.readme:
        # The README shows the shares and the first rows; bench/naming.md (--out) has every topic.
        shown = README_ROWS + 4  # the heading, a blank line and the table's two header lines
        cut = [*lines[:shown], f"| … | ({args.k - README_ROWS} more topics: {args.out or 'the --out file'}) | | | | |"]
        readme.put(args.readme, "naming", "\n".join([*cut, "", lines[-1]]))


if __name__ == "__main__":
    main()
