"""`st report` at 20,000 documents: wall time of the whole command (process start to exit) and the
page's size, for a DSL model with K = 50 on StackOverflow titles. The store is made with a tiny
random LM (the report's work does not depend on which LM made the store); `make bench` runs this.

    python bench/report_bench.py --docs 20000 --readme README.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import readme  # bench/readme.py

import st
from st.cache import default_cache_dir
from st.lm import available_cores, cpu_flags, local_folder, resolve
from st.testing import random_llama

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
NOTED = {"amx_bf16", "avx512_bf16", "avx512f"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("-k", type=int, default=50)
    ap.add_argument("--readme", type=Path, default=None)
    args = ap.parse_args()

    rows = [orjson.loads(line) for line in (DATA / "stackoverflow.jsonl").open("rb")][: args.docs]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tiny = random_llama(tmp / "tiny", local_folder(resolve(None), default_cache_dir()))
        lm = st.LM(str(tiny), dtype="float32", cache_dir=tmp / "cache")
        corpus = st.softlabel(rows, lm=lm, store=tmp / "s.zarr")
        model = st.DSL(args.k, epochs=5, seed=0).fit(corpus)
        page = tmp / "report.html"
        cmd = [str(Path(sys.executable).parent / "st"), "report", "-m", f"{corpus.path}#{model.id}", "-o", str(page)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "ST_CACHE_DIR": str(tmp / "cache")})
        wall = time.perf_counter() - t0
        size = page.stat().st_size
    cpu = f"{available_cores()} cores, {', '.join(sorted(cpu_flags() & NOTED)) or 'AVX2 only'}"
    text = (
        f"`st report` on {len(rows):,} StackOverflow titles, K = {args.k} (a DSL model on a store made by a tiny "
        f"random LM), process start to exit ({cpu}): {wall:.1f} s; the page: {size / 1e6:.1f} MB (targets: "
        "under a minute, under 15 MB). The document map samples 2,000 documents (t-SNE), which bounds both."
    )
    print(text)
    if args.readme:
        readme.put(args.readme, "bench-report", text)


if __name__ == "__main__":
    main()
