"""`make bench`: the LM stage of st against a naive transformers loop, side by side in one run.

For each corpus, the same documents go through
  - st: the shared backend (length-sorted, token-budget batches, last position only, cache), and
  - naive: transformers called per batch of 32 in input order, padded to the longest, full logits,
in alternating blocks of 1,024 documents, so that whatever else the machine does slows both alike.
Then a cached re-run, peak memory of `st softlabel` as a process, and the float32/bfloat16 choice.

Usage: python bench/bench.py [--docs 2000] [--out bench/results.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import readme  # bench/readme.py
import torch

from st.cache import Cache
from st.encoder import Encoder
from st.lm import LM, cpu_flags, cpu_has_fast_bf16
from st.prompt import Prompt
from st.train import dsl_batch_size

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BLOCK = 1024


def load(name: str, n: int) -> list[str]:
    texts = []
    with open(DATA / f"{name}.jsonl", "rb") as f:
        for line in f:
            texts.append(orjson.loads(line)["text"])
            if len(texts) == n:
                break
    return texts


def naive(lm: LM, texts: list[str]) -> None:
    tok = lm.tokenizer
    tok.padding_side = "left"
    prompts = [Prompt().render(t) for t in texts]
    with torch.inference_mode():
        for i in range(0, len(prompts), 32):
            enc = tok(prompts[i : i + 32], return_tensors="pt", padding=True, truncation=True, max_length=512 + 32)
            lm.model(**enc).logits[:, -1]


def side_by_side(lm: LM, texts: list[str]) -> dict[str, float]:
    tokens = sum(len(t) for t in lm.tokenize_prompts(texts, Prompt(), 512))
    times = {"st": 0.0, "naive": 0.0}
    computed = lm.tokens_computed
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = Cache(Path(cache_dir))
        for start in range(0, len(texts), BLOCK):
            block = texts[start : start + BLOCK]
            t = time.perf_counter()
            Encoder(lm, cache).encode(block, Prompt(), 512)
            times["st"] += time.perf_counter() - t
            t = time.perf_counter()
            naive(lm, block)
            times["naive"] += time.perf_counter() - t
            print(f"  {start + len(block)}/{len(texts)} docs", file=sys.stderr)
        computed = lm.tokens_computed - computed
        t = time.perf_counter()
        before = lm.documents_computed
        for start in range(0, len(texts), BLOCK):
            Encoder(lm, cache).encode(texts[start : start + BLOCK], Prompt(), 512)
        assert lm.documents_computed == before, "the cached re-run ran the LM"
        cached = time.perf_counter() - t
    n = len(texts)
    return {
        "docs": n,
        "tokens": tokens,
        "st_docs_s": n / times["st"],
        "st_tok_s": tokens / times["st"],
        "naive_docs_s": n / times["naive"],
        "naive_tok_s": tokens / times["naive"],
        "ratio": times["naive"] / times["st"],
        "cached_s": cached,
        "st_s": times["st"],
        "computed_tokens": computed,
        "flops": lm_flops(lm, computed, n),
    }


def lm_flops(lm: LM, tokens: int, docs: int, vocab: int = 2000) -> float:
    """The LM stage's work: 2 x non-embedding parameters per computed token, the attention terms
    (each token against the whole prompt, an upper bound), and one head row per vocabulary word."""
    body = sum(p.numel() for name, p in lm.body.named_parameters() if "embed" not in name)
    cfg = lm.model.config
    context = tokens / max(docs, 1) + 17  # the reused instruction prefix is attended to as well
    attention = 4 * cfg.num_hidden_layers * cfg.hidden_size * context * tokens
    return 2 * body * tokens + attention + 2 * cfg.hidden_size * vocab * docs


def matmul_limit(lm: LM, tokens: int = 1024, repeats: int = 20) -> float:
    """FLOP/s of this machine's matrix multiplies at the model's own layer shapes (a batch of
    `tokens` tokens through q, k, v, o and the MLP's three projections), in the dtype in use."""
    cfg = lm.model.config
    h, m = cfg.hidden_size, cfg.intermediate_size
    kv = h * cfg.num_key_value_heads // cfg.num_attention_heads
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, m), (h, m), (m, h)]
    device = lm.device
    x = {i: torch.randn(tokens, i, dtype=lm.dtype, device=device) for i in {h, m}}
    weights = [torch.randn(o, i, dtype=lm.dtype, device=device) for i, o in shapes]
    flops = sum(2 * tokens * i * o for i, o in shapes)

    def once() -> None:
        for w, (i, _o) in zip(weights, shapes, strict=True):
            torch.nn.functional.linear(x[i], w)
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(3):
            once()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            once()
            best = min(best, time.perf_counter() - t)
    return flops / best


MODELS = Path(os.environ.get("ST_CACHE_DIR", Path.home() / ".cache" / "st")) / "models"


def sample(corpus: str, n: int, tmp: Path) -> tuple[Path, dict[str, str]]:
    """The first n documents of a corpus as a file, and an environment with a fresh LM cache that
    shares the converted models."""
    src = tmp / "docs.jsonl"
    with open(DATA / f"{corpus}.jsonl", "rb") as f, open(src, "wb") as out:
        for i, line in enumerate(f):
            if i == n:
                break
            out.write(line)
    (tmp / "cache").mkdir()
    if MODELS.is_dir():
        (tmp / "cache" / "models").symlink_to(MODELS)
    return src, dict(os.environ, ST_CACHE_DIR=str(tmp / "cache"))


def peak_rss_mb(corpus: str, n: int, model: Path | None = None) -> float:
    """Peak resident memory of `st softlabel` over n documents, as its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        src, env = sample(corpus, n, Path(tmp))
        cmd = [sys.executable, "-m", "st", "softlabel", str(src), "-o", str(Path(tmp) / "s.zarr"), "-q"]
        if model is not None:
            cmd += ["--lm", str(model)]
        code = (
            "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        out = subprocess.run([sys.executable, "-c", code, *cmd], env=env, capture_output=True, check=True)
        return int(out.stdout) / 1024


NAIVE_SCRIPT = """
import sys, orjson, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, src = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder)
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
instruction = "Generate a label that capture the overall theme of the document below."
texts = [orjson.loads(line)["text"] for line in open(src, "rb")]
prompts = [f"{instruction}\\n\\nDocument: {t}\\n\\nTopic:" for t in texts]
with torch.inference_mode():
    for i in range(0, len(prompts), 32):
        enc = tok(prompts[i : i + 32], return_tensors="pt", padding=True, truncation=True, max_length=544)
        model(**enc).logits[:, -1]
"""


def end_to_end(corpus: str, n: int, repeats: int = 3) -> dict[str, float]:
    """What a user waits for, process start to exit: `st softlabel` with default settings on a fresh
    LM cache (the model already converted) and again on a warm one, against the naive float32
    transformers loop as a script of its own.

    Both first run once on two documents, so that neither pays for reading its libraries and model
    files from disk (the warm model both are promised); then the two alternate `repeats` times, each
    st run on a fresh cache, and the medians are compared: a shared machine's slow spells then fall
    on both, and one of them does not decide the ratio."""
    from st.lm import local_folder, resolve

    with tempfile.TemporaryDirectory() as tmp:
        folder = local_folder(resolve(None), MODELS.parent)
        src, env = sample(corpus, n, Path(tmp))
        two = Path(tmp) / "two.jsonl"
        two.write_bytes(b"".join(src.read_bytes().splitlines(keepends=True)[:2]))
        st_exe = str(Path(sys.executable).parent / "st")  # the installed command, as a user runs it

        def st_run(docs: Path, cache: str) -> list[str]:
            (Path(tmp) / cache).mkdir(exist_ok=True)
            if MODELS.is_dir() and not (Path(tmp) / cache / "models").exists():
                (Path(tmp) / cache / "models").symlink_to(MODELS)
            out = Path(tmp) / f"{cache}-{docs.stem}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            return ["env", f"ST_CACHE_DIR={Path(tmp) / cache}", st_exe, "softlabel", str(docs), "-o", str(out), "-q"]

        def timed(name: str, cmd: list[str]) -> float:
            t = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t
            print(f"  end to end {name}: {seconds:.1f} s", file=sys.stderr)
            return seconds

        naive_cmd = [sys.executable, "-c", NAIVE_SCRIPT, str(folder)]
        timed("st warm-up", st_run(two, "warm-up"))
        timed("naive warm-up", [*naive_cmd, str(two)])
        cold, naive = [], []
        for r in range(repeats):
            cold.append(timed(f"st_cold {r + 1}", st_run(src, f"fresh-{r}")))
            naive.append(timed(f"naive {r + 1}", [*naive_cmd, str(src)]))
        times = {
            "st_cold": float(np.median(cold)),
            "naive": float(np.median(naive)),
            "st_warm": timed("st_warm", st_run(src, "fresh-0")),
            "st_two": timed("st_two", st_run(two, "fresh-0")),
        }
    spread = {"ratio_min": min(naive) / max(cold), "ratio_max": max(naive) / min(cold), "repeats": repeats}
    return {"docs": n, **times, **spread, "ratio": times["naive"] / times["st_cold"]}


def dtype_rates(texts: list[str]) -> dict[str, float]:
    """Documents/s per dtype on a small sample, and what bfloat16 changes in the logits."""
    rates, logits = {}, {}
    for dtype in ("float32", "bfloat16"):
        lm = LM(None, device="cpu", dtype=dtype)
        with tempfile.TemporaryDirectory() as cache_dir:
            ids = np.asarray([lm.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in VOCAB_SAMPLE])
            t = time.perf_counter()
            _, logits[dtype] = Encoder(lm, Cache(Path(cache_dir))).encode(texts, Prompt(), 512, vocab_token_ids=ids)
            rates[dtype] = len(texts) / (time.perf_counter() - t)
    diff = float(np.abs(logits["float32"] - logits["bfloat16"]).max())
    top = [
        len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10])) / 10
        for a, b in zip(logits["float32"], logits["bfloat16"], strict=True)
    ]
    return {**rates, "max_dlogit": diff, "top10_overlap": float(np.mean(top))}


VOCAB_SAMPLE = (
    "java python database server windows file error code data function string table query web application "
    "sql linux image network class object array list page user system program memory value time text "
    "music sports news game film love life world people family school health business art food travel"
).split()


def train_rate(n: int = 20_000, v: int = 2000, k: int = 50, epochs: int = 4) -> tuple[float, float]:
    """Documents x epochs per second of `st train` (DSL-ProdLDA) on a synthetic store of N x V, and
    the seconds a training spends before its first epoch (reading the store, the UMAP layout, the
    neighbours, the k-means start)."""
    from scipy import sparse

    from st.options import TrainOptions
    from st.store import Store, StoreWriter
    from st.train import train

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        w = StoreWriter(
            Path(tmp) / "s.zarr", {"kind": "softlabel", "temperature": 3.0}, 576, [f"w{i}" for i in range(v)]
        )
        for start in range(0, n, BLOCK):
            m = min(BLOCK, n - start)
            w.append(
                [str(start + i) for i in range(m)],
                ["{}"] * m,
                rng.standard_normal((m, 576), dtype=np.float32),
                rng.standard_normal((m, v), dtype=np.float32),
                sparse.csr_matrix((m, v), dtype=np.float32),
            )
        w.finish()
        store = Store(Path(tmp) / "s.zarr")
        seconds = []
        # The first training compiles UMAP's numba code, which the difference would count against
        # the shorter run (it once made the rate negative): that one is a warm-up, not timed.
        for e in (1, 1, 1 + epochs):
            t = time.perf_counter()
            train(store, np.arange(n), TrainOptions(k=k, epochs=e, checkpoint_every=0))
            seconds.append(time.perf_counter() - t)
        per_epoch = (seconds[2] - seconds[1]) / epochs
        return n / per_epoch, seconds[1] - per_epoch


def retrieval_rates(n: int = 20_000, k: int = 50, stored: int = 1_000_000) -> dict[str, float]:
    """P@10 over n documents: st eval's blocked KL against the common per-document loop; and one
    `st search` query over `stored` documents."""
    from st.metrics import precision_at
    from st.ranking import log_theta, rank

    rng = np.random.default_rng(0)
    theta = rng.dirichlet(np.full(k, 0.1), size=n)
    labels = rng.integers(0, 20, size=n)
    t = time.perf_counter()
    fast = precision_at(theta, labels, (10,))[10]
    blocked = time.perf_counter() - t
    t = time.perf_counter()
    log_th = np.log(np.clip(theta, 1e-12, None))
    hits = 0.0
    for i in range(n):  # the common implementation: a KL vector per document, then argsort
        d = (theta[i] * (log_th[i] - log_th)).sum(axis=1)
        d[i] = np.inf
        hits += (labels[np.argsort(d, kind="stable")[:10]] == labels[i]).mean()
    naive = time.perf_counter() - t
    assert abs(hits / n - fast) < 1e-9, "the blocked and naive P@10 differ"
    big = rng.dirichlet(np.full(k, 0.1), size=stored).astype(np.float32)
    log_big = log_theta(big)  # stored beside θ by st train
    rank(big, big[0], 10, log_t=log_big)
    t = time.perf_counter()
    for i in range(5):
        rank(big, big[i], 10, log_t=log_big)
    return {
        "blocked_s": blocked,
        "naive_s": naive,
        "ratio": naive / blocked,
        "search_ms": (time.perf_counter() - t) / 5 * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--readme", type=Path, default=None, help="Put the table between the bench markers there.")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    lm = LM(None, device="cpu")
    rows = []
    for corpus in ("stackoverflow", "tweet_topic"):
        print(f"{corpus}: {args.docs} documents", file=sys.stderr)
        rows.append((corpus, side_by_side(lm, load(corpus, args.docs))))
        print(f"  {corpus}: {rows[-1][1]}", file=sys.stderr)
    train_docs_s, train_setup_s = train_rate()
    retrieval = retrieval_rates()
    mem_docs = min(args.docs, 500)
    mem_small = peak_rss_mb("stackoverflow", mem_docs)
    limit = matmul_limit(lm)
    with tempfile.TemporaryDirectory() as tmp:
        # st's own memory, isolated from the LM's: a tiny random model with the embedded tokenizer.
        from st.lm import local_folder, resolve
        from st.testing import random_llama

        tiny = random_llama(Path(tmp) / "tiny", local_folder(resolve(None), lm.cache_dir))
        mem_scaling = {n: peak_rss_mb("stackoverflow", n, tiny) for n in (2_000, 20_000)}
    rates = dtype_rates(load("stackoverflow", 64))
    e2e = end_to_end("stackoverflow", 640)
    flags = sorted(f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"))

    lines = [
        f"LM stage, embedded {lm.source.name.removeprefix('embedded:')} on CPU ({torch.get_num_threads()} threads, "
        f"{lm.identity['dtype']}), {args.docs} documents per corpus, st and naive side by side in one run:",
        "",
        "| corpus | prompt tokens | st docs/s | st tokens/s | naive docs/s | naive tokens/s | ratio | cached re-run "
        "| tokens computed | GFLOP/s | of the matmul limit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for corpus, r in rows:
        rate = r["flops"] / r["st_s"]
        lines.append(
            f"| {corpus} | {r['tokens']} | {r['st_docs_s']:.1f} | {r['st_tok_s']:.0f} | {r['naive_docs_s']:.1f} | "
            f"{r['naive_tok_s']:.0f} | {r['ratio']:.2f}x | {r['cached_s']:.2f} s | {r['computed_tokens']} | "
            f"{rate / 1e9:.1f} | {rate / limit:.0%} |"
        )
    lines += [
        "",
        f"Matrix-multiply limit of this machine at the model's layer shapes (1,024 tokens x hidden "
        f"{lm.model.config.hidden_size} x MLP {lm.model.config.intermediate_size}, {lm.identity['dtype']}): "
        f"{limit / 1e9:.1f} GFLOP/s. The LM's work counts 2 x non-embedding parameters per computed token (the "
        "reused instruction prefix and padding are not computed), attention against the whole prompt, and one "
        "output-head row per vocabulary word.",
        "",
        f"Peak RSS of `st softlabel` on {mem_docs} stackoverflow documents (a fresh cache): {mem_small:.0f} MB. "
        f"With a tiny random model (st's own memory, without the LM's): {mem_scaling[2_000]:.0f} MB for 2,000 "
        f"documents, {mem_scaling[20_000]:.0f} MB for 20,000: ratio {mem_scaling[20_000] / mem_scaling[2_000]:.2f} "
        "(target < 2).",
        "",
        f"dtype on this CPU (AMX/AVX-512 BF16: {'yes' if cpu_has_fast_bf16() else 'no'}): float32 "
        f"{rates['float32']:.1f} docs/s, bfloat16 {rates['bfloat16']:.1f} docs/s; bfloat16 changes logits by up to "
        f"{rates['max_dlogit']:.3f}, top-10 word overlap {rates['top10_overlap']:.2f}. "
        f"`--dtype auto` picks {'bfloat16' if cpu_has_fast_bf16() else 'float32'} here "
        f"(CPU flags: {', '.join(flags) or 'none of avx2, avx512f, avx512_bf16, amx'}).",
        "",
        f"End to end, process start to exit, {e2e['docs']} stackoverflow titles, default settings (the LM and "
        f"MiniLM), the model already converted and read once (a warm-up on two titles), the median of "
        f"{e2e['repeats']} runs of each, alternating: `st softlabel` {e2e['st_cold']:.1f} s on a fresh LM cache "
        f"({e2e['docs'] / e2e['st_cold']:.1f} docs/s), {e2e['st_warm']:.1f} s re-run on a warm one; the naive "
        f"float32 transformers loop (batches of 32, its own script) {e2e['naive']:.1f} s "
        f"({e2e['docs'] / e2e['naive']:.1f} docs/s): **{e2e['ratio']:.2f}x** (from {e2e['ratio_min']:.2f}x, the "
        f"slowest st run against the fastest naive one, to {e2e['ratio_max']:.2f}x). Two of those titles, already "
        f"cached: {e2e['st_two']:.2f} s (target < 2.5 s; neither torch nor the model is loaded).",
        "",
        f"`st train` (DSL-ProdLDA, N = 20,000, V = 2,000, K = 50, batch {dsl_batch_size(20_000)}): "
        f"{train_docs_s:,.0f} documents x epochs/s, "
        f"one epoch in {20_000 / train_docs_s:.1f} s, after {train_setup_s:.0f} s before the first "
        "(the store read, the UMAP layout, the neighbours and the k-means start, once per training).",
        "",
        f"`st eval` P@10 over N = 20,000, K = 50 (synthetic θ): blocked {retrieval['blocked_s']:.1f} s, the common "
        f"per-document loop {retrieval['naive_s']:.1f} s: {retrieval['ratio']:.0f}x. `st search`, one query over "
        f"1,000,000 stored θ: {retrieval['search_ms']:.0f} ms.",
    ]
    readme.publish("\n".join(lines), "bench", args.out, args.readme)


if __name__ == "__main__":
    main()
