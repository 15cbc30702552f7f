"""The Ray backend at scale: a local Ray cluster of several LM workers and a tiny random LM (st.testing)
over up to 200,000 documents, against the local backend on the same documents, side by side in one run.

Reports each run's documents/s, the driver's peak RSS (its own VmHWM, not the workers'), whether the
Ray store equals the local one, and Ray's throughput per worker against the local backend's (the
local backend gets as many torch threads as one worker).

    python bench/ray_scale.py --sizes 50000 200000 --workers 2 --out bench/ray.md --readme README.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import zarr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import readme  # bench/readme.py  # noqa: E402

ST = str(Path(sys.executable).with_name("st"))
DATA = ROOT.parent / "shared" / "data"


def peak_rss(pid: int) -> float:
    """The process's own peak RSS so far, in MB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and the driver's peak RSS (read from /proc while it runs)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = 0.0
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(p.stderr.read() if p.stderr else b""))
    reader.start()
    while p.poll() is None:
        peak = max(peak, peak_rss(p.pid))
        time.sleep(0.2)
    reader.join()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{b''.join(stderr).decode()[-3000:]}")
    return time.perf_counter() - t, peak


def corpus(n: int, path: Path) -> Path:
    """n distinct documents: the shared StackOverflow titles, numbered so that none repeats."""
    titles = [orjson.loads(line)["text"] for line in (DATA / "stackoverflow.jsonl").read_bytes().splitlines()]
    with open(path, "wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"id": i, "text": f"{titles[i % len(titles)]} ({i // len(titles)})"}) + b"\n")
    return path


def compare(a: Path, b: Path) -> tuple[bool, float, float]:
    """Whether ids and records are equal, the share of rows whose hidden states are equal bit for
    bit, and the largest difference of a hidden state."""
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    same = all(np.array_equal(np.asarray(ga[k][:]), np.asarray(gb[k][:])) for k in ("ids", "records"))
    x, y = np.asarray(ga["hidden"][:]), np.asarray(gb["hidden"][:])
    return same, float((x == y).all(axis=1).mean()), float(np.abs(x - y).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--readme", type=Path)
    args = ap.parse_args()
    from st.lm import local_folder, resolve
    from st.testing import random_llama

    work = Path(tempfile.mkdtemp(prefix="st-ray-bench-"))
    try:
        models = Path(os.environ.get("ST_CACHE_DIR", Path.home() / ".cache" / "st")) / "models"
        model = random_llama(work / "tiny", local_folder(resolve(None), models.parent))
        vocab = work / "vocab.json"
        vocab.write_bytes(
            subprocess.run(
                [ST, "vocab", str(corpus(20_000, work / "v.jsonl")), "-q"], check=True, capture_output=True
            ).stdout
        )
        rows = []
        for n in args.sizes:
            docs = corpus(n, work / f"docs-{n}.jsonl")
            # The LM stage alone: a sentence embedder beside it would run in the driver, not the workers.
            common = ["softlabel", str(docs), "--lm", str(model), "--vocab", str(vocab), "--dtype", "float32", "-q"]
            common += ["--embedder", "none"]
            result: dict[str, object] = {"n": n}
            for backend in ("local", "ray"):
                cache = work / f"cache-{backend}-{n}"
                (cache).mkdir()
                (cache / "models").symlink_to(models, target_is_directory=True)
                env = {**os.environ, "ST_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
                extra = ["--backend", "ray", "--workers", str(args.workers), "--cpus-per-worker", "1"]
                cmd = [ST, *common, "-o", str(work / f"{backend}-{n}.zarr"), *(extra if backend == "ray" else [])]
                result[backend] = run(cmd, env)
                print(n, backend, result[backend], file=sys.stderr)
            result["same"] = compare(work / f"local-{n}.zarr", work / f"ray-{n}.zarr")
            rows.append(result)
            for backend in ("local", "ray"):
                shutil.rmtree(work / f"{backend}-{n}.zarr")
                shutil.rmtree(work / f"cache-{backend}-{n}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    publish(rows, args)


def publish(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        f"The Ray backend, a local cluster of {args.workers} LM workers (1 CPU, 1 torch thread each) against the "
        "local backend (1 torch thread), a tiny random Llama (st.testing), fresh caches, process start to exit:",
        "",
        "| documents | local docs/s | Ray docs/s | Ray per worker / local | driver peak RSS: local | Ray "
        "| same rows | hidden states equal bit for bit | largest difference |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        n = r["n"]
        (lt, lm), (rt, rm) = r["local"], r["ray"]
        per = (n / rt / args.workers) / (n / lt)
        same, equal, largest = r["same"]
        lines.append(
            f"| {n:,} | {n / lt:,.0f} | {n / rt:,.0f} | {per:.2f} | {lm:,.0f} MB | {rm:,.0f} MB | "
            f"{'yes' if same else 'NO'} | {equal:.1%} | {largest:.1e} |"
        )
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        lines += [
            "",
            f"Driver peak RSS for {b['n'] // a['n']}x the documents: {b['ray'][1] / a['ray'][1]:.2f}x. "
            "Where hidden states differ, they differ in float32's last bits: the CPU kernels round a "
            "document's batch a little differently depending on what the process computed before, and a "
            "local run of only the chunks one Ray worker had gives that worker's values bit for bit "
            "(docs/scale.md).",
        ]
    readme.publish("\n".join(lines), "ray", args.out, args.readme)


if __name__ == "__main__":
    main()
