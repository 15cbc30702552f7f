"""The LM stage on a GPU: the embedded model, and a randomly initialised model of a real 1B-class
configuration (Llama-3.2-1B's shapes, built from a config with transformers: no download), in
bfloat16. Prints documents/s, tokens/s and model-FLOP utilisation against the card's measured
bfloat16 matrix-multiply rate (a large square product) and against the rate at the model's own
layer shapes.

Usage (on a machine with an NVIDIA GPU): bash bench/gpu.sh   or   python bench/gpu.py [--docs 8000]
On a CPU it runs too (--device cpu --shapes tiny), which is how the tests keep it working.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import lm_flops, load, matmul_limit  # noqa: E402
from st.cache import Cache, default_cache_dir  # noqa: E402
from st.encoder import Encoder  # noqa: E402
from st.lm import LM, local_folder, resolve  # noqa: E402
from st.prompt import Prompt  # noqa: E402
from st.testing import random_llama  # noqa: E402


def square_rate(device: torch.device, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """The card's matrix-multiply rate: an n x n x n product, best of `repeats`."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def run(lm: LM, texts: list[str], batch_tokens: int) -> dict[str, float]:
    words = np.arange(1000, 3000)  # one head row per vocabulary word, as for a 2,000-word vocabulary
    with tempfile.TemporaryDirectory() as tmp:
        cache = Cache(Path(tmp))
        Encoder(lm, cache).encode(
            texts[:64], Prompt(), 512, batch_tokens=batch_tokens, vocab_token_ids=words
        )  # warm-up
        tokens, docs = lm.tokens_computed, lm.documents_computed
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        Encoder(lm, cache).encode(texts[64:], Prompt(), 512, batch_tokens=batch_tokens, vocab_token_ids=words)
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
    tokens, docs = lm.tokens_computed - tokens, lm.documents_computed - docs
    return {"docs_s": docs / seconds, "tok_s": tokens / seconds, "flop_s": lm_flops(lm, tokens, docs) / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=8000, help="Documents per corpus.")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--shapes", default="embedded,1b", help="embedded and/or random shapes from st.testing.")
    ap.add_argument("--batch-tokens", type=int, default=None, help="[default: st's default for the device]")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    n = 8192 if device.type == "cuda" else 1024
    peak = square_rate(device, dtype, n=n)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{time.strftime('%Y-%m-%d')}, {name}, {args.dtype}: matrix-multiply rate {peak / 1e12:.2f} TFLOP/s ({n}^3)")
    corpora = {c: load(c, args.docs) for c in ("stackoverflow", "tweet_topic")}
    cache_dir = default_cache_dir()
    embedded = local_folder(resolve(None), cache_dir)  # converted from the GGUF once
    print("| model | corpus | docs/s | tokens/s | TFLOP/s | MFU (square) | of the layer-shape rate |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            if shape == "embedded":
                lm = LM(None, device=args.device, dtype=args.dtype, cache_dir=cache_dir)
            else:
                folder = random_llama(Path(tmp) / shape, embedded, shape=shape, std=None, dtype=args.dtype)
                lm = LM(str(folder), device=args.device, dtype=args.dtype, cache_dir=Path(tmp))
            budget = args.batch_tokens or lm.default_batch_tokens()
            layer_rate = matmul_limit(lm, tokens=budget)
            for corpus, texts in corpora.items():
                r = run(lm, texts, budget)
                print(
                    f"| {shape} | {corpus} | {r['docs_s']:.0f} | {r['tok_s']:.0f} | {r['flop_s'] / 1e12:.2f} | "
                    f"{r['flop_s'] / peak:.0%} | {r['flop_s'] / layer_rate:.0%} |",
                    flush=True,
                )
            del lm
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
