"""Every stage at 100,000 and 1,000,000 documents: wall time and peak RSS, each stage its own process.

The store has the real layout and real values: 2,000 StackOverflow titles encoded by the embedded
LM (`st softlabel`, through the shared LM cache), tiled to N rows (ids made unique, texts repeated).
Because the texts repeat, `st infer` finds every document in the LM cache: its figure is infer's
own cost (reading, cache, the encoder, θ), the LM's time per document is `make bench`'s.

    python bench/scale.py --sizes 100000 1000000 --out bench/scale.md --readme README.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import readme  # bench/readme.py  # noqa: E402
from quality import stratified  # noqa: E402

from st.lm_files import cpu_flags  # noqa: E402
from st.store import Store, StoreWriter  # noqa: E402

ST = str(Path(sys.executable).with_name("st"))
BLOCK = 8192


def run(cmd: list[str], stdin: Path | None = None) -> tuple[float, float, bytes]:
    """Wall seconds and peak RSS (MB) of one process (os.wait4: this child's own), and its stdout."""
    t = time.perf_counter()
    with open(stdin or os.devnull, "rb") as inp:
        out = subprocess.PIPE if cmd[1] in ("eval", "search") else subprocess.DEVNULL
        p = subprocess.Popen(cmd, stdin=inp, stdout=out, stderr=subprocess.PIPE)
        stdout = b""
        if out == subprocess.PIPE:
            assert p.stdout is not None
            stdout = p.stdout.read()
        assert p.stderr is not None
        stderr = p.stderr.read()
        _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{stderr.decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout


def source_store(work: Path, n: int) -> Path:
    docs = work / "source.jsonl"
    docs.write_bytes(b"\n".join(stratified("stackoverflow", n)) + b"\n")
    store = work / "source.zarr"
    subprocess.run(
        [ST, "softlabel", str(docs), "-o", str(store), "--force", "-q"], check=True, stdout=subprocess.DEVNULL
    )
    return store


def tiled(source: Path, n: int, work: Path) -> tuple[Path, Path]:
    """A store of n rows tiling the source's, and the matching documents as JSONL."""
    src = Store(source)
    path, docs = work / f"tiled-{n}.zarr", work / f"tiled-{n}.jsonl"
    if docs.is_file() and (path / "zarr.json").is_file():
        kept = Store(path, require_complete=False)
        if kept.attrs.get("complete") and kept.rows == n:
            return path, docs  # kept (--keep) from an earlier run
    m = src.rows
    hidden, logits, bow = src.array("hidden"), src.array("logits"), src.bow()
    recs = [orjson.loads(r) for r in src.array("records")]
    attrs = {k: v for k, v in src.attrs.items() if k not in ("format", "version", "rows", "complete")}
    writer = StoreWriter(path, attrs, hidden.shape[1], src.vocab(), force=True)
    with open(docs, "wb") as f:
        for start in range(0, n, BLOCK):
            idx = np.arange(start, min(start + BLOCK, n)) % m
            copy = np.arange(start, min(start + BLOCK, n)) // m
            rows = [{**recs[i], "id": f"{recs[i]['id']}~{c}"} for i, c in zip(idx.tolist(), copy.tolist(), strict=True)]
            lines = [orjson.dumps(r) for r in rows]
            writer.append([r["id"] for r in rows], [x.decode() for x in lines], hidden[idx], logits[idx], bow[idx])
            f.write(b"\n".join(lines) + b"\n")
    writer.finish()
    return path, docs


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def stages(store: Path, docs: Path, work: Path, k: int, balanced: int) -> dict[str, tuple[float, float]]:
    model = work / f"model-{store.stem}"
    shutil.rmtree(model, ignore_errors=True)
    out: dict[str, tuple[float, float]] = {}
    train = [ST, "train", "-q", "--store", str(store), "-k", str(k)]
    one = run([*train, "--epochs", "1", "-o", str(model)])
    three = run([*train, "--epochs", "3", "-o", str(work / f"model3-{store.stem}")])
    out["train, 1 epoch"] = one[:2]
    out["train, 3 epochs"] = three[:2]
    out["one more epoch"] = ((three[0] - one[0]) / 2, float("nan"))
    out["infer"] = run([ST, "infer", "-q", "-m", str(model)], stdin=docs)[:2]
    ev = run([ST, "eval", "-q", "--store", str(store), "-m", str(model), "--balanced", str(balanced)])
    out["eval"] = ev[:2]
    first_id = orjson.loads(docs.open("rb").readline())["id"]
    out["search"] = run([ST, "search", "-q", "--store", str(store), "-m", str(model), "--like", first_id])[:2]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--source", type=int, default=2000, help="real documents tiled")
    ap.add_argument("-k", type=int, default=50)
    ap.add_argument("--balanced", type=int, default=10_000, help="documents st eval's retrieval is measured on")
    ap.add_argument("--work", default=str(ROOT / "bench" / "scale-work"))
    ap.add_argument("--keep", action="store_true", help="keep the tiled stores")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--readme", type=Path)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = source_store(work, args.source)
    results = {}
    for n in args.sizes:
        t = time.perf_counter()
        store, docs = tiled(source, n, work)
        print(f"{n}: store written in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        s = Store(store)
        v, h = len(s.vocab()), int(s.attrs["hidden_size"])
        results[n] = {
            "disk": size_mb(store),
            "float32": n * (v + h) * 4 / 1e6,
            "dtype": str(s.group["logits"].dtype),
            "stages": stages(store, docs, work, args.k, args.balanced),
        }
        print(n, results[n], file=sys.stderr)
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
            docs.unlink(missing_ok=True)
    publish(results, args, v, h)


def publish(results: dict[int, dict], args: argparse.Namespace, v: int, h: int) -> None:
    sizes = sorted(results)
    flags = ", ".join(f for f in cpu_flags() if f.startswith(("amx", "avx512_bf16", "avx512f"))) or "AVX2 only"
    head = "| stage | " + " | ".join(f"{n:,} docs: time | peak RSS" for n in sizes) + " |"
    lines = [
        f"Every stage at {' and '.join(f'{n:,}' for n in sizes)} documents (2 cores, {flags}; each stage its own "
        f"process, process start to exit; K = {args.k}, V = {v}, H = {h}; the store tiles {args.source:,} "
        "StackOverflow titles encoded by the embedded LM, so infer's documents all come from the LM cache):",
        "",
        head,
        "|---|" + "---:|---:|" * len(sizes),
    ]
    names = list(results[sizes[0]]["stages"])
    for name in names:
        cells = []
        for n in sizes:
            sec, rss = results[n]["stages"][name]
            cells += [f"{sec:.1f} s", "" if rss != rss else f"{rss / 1024:.2f} GB"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in sizes:
        r = results[n]
        lines.append(
            f"- {n:,} documents: the store {r['disk'] / 1e3:.1f} GB on disk (logits in {r['dtype']}); "
            f"its hidden states and logits in float32 would be {r['float32'] / 1e3:.1f} GB."
        )
    if len(sizes) == 2:
        a, b = (results[n]["stages"] for n in sizes)
        ratio = b["train, 3 epochs"][1] / a["train, 3 epochs"][1]
        epoch = b["one more epoch"][0] / a["one more epoch"][0]
        lines.append(
            f"- `st train` peak RSS {sizes[1] // sizes[0]}x the documents: {ratio:.2f}x (target ≤ 1.3); "
            f"time per epoch: {epoch:.1f}x (target 8–12x). `st eval` measures retrieval (P@k) on a "
            f"label-balanced {args.balanced:,} documents (`--balanced`); the exact all-pairs P@k is O(N²)."
        )
    readme.publish("\n".join(lines), "scale", args.out, args.readme)


if __name__ == "__main__":
    main()
