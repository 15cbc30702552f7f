"""The golden sample: every command run on a fixed sample with the tiny random Llama, its outputs
gathered with paths and model ids taken out. `golden.npz` holds what this gave before the library
redesign (part 7); `test_golden.py` checks that the commands still give it.

Regenerate only on purpose: python -m tests.golden.pipeline (from the repository root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "stackoverflow-200.jsonl"
GOLDEN = Path(__file__).resolve().parent / "golden.npz"
# The commands as they were spelled before the redesign: old spellings must keep working.
LM_FLAGS = ["--model", "{tiny}", "--dtype", "float32"]


def _st() -> str:
    exe = Path(sys.executable).parent / "st"
    return str(exe)


def sample(folder: Path) -> Path:
    """Four titles of each of the 20 classes: 80 documents."""
    rows = [orjson.loads(x) for x in EXAMPLES.read_bytes().splitlines()]
    per: dict[str, int] = {}
    picked = []
    for r in rows:
        if per.get(r["label"], 0) < 4:
            per[r["label"]] = per.get(r["label"], 0) + 1
            picked.append(r)
    path = folder / "sample.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in picked))
    return path


def run(args: list[str], cache: Path, stdin: bytes | None = None, cwd: Path | None = None) -> bytes:
    env = {**os.environ, "ST_CACHE_DIR": str(cache)}
    env.pop("ST_FORCE_TERMINAL", None)
    r = subprocess.run([_st(), *args], input=stdin, capture_output=True, env=env, cwd=cwd, timeout=900)
    if r.returncode != 0:
        raise AssertionError(f"st {' '.join(args)} failed: {r.stderr.decode()}")
    return r.stdout


def _clean(data: bytes, replace: dict[str, str]) -> str:
    text = data.decode()
    for old, new in sorted(replace.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(old, new)
    return text


def outputs(tiny: Path, cache: Path, tmp: Path) -> dict[str, Any]:
    """Every command's output on the sample, as arrays and cleaned texts."""
    import zarr

    src = sample(tmp)
    store = tmp / "s.zarr"
    lm = [a.format(tiny=tiny) for a in LM_FLAGS]
    out: dict[str, Any] = {}
    out["vocab"] = run(["vocab", str(src), "--size", "50", "-q"], cache).decode()
    # float32 logits, as every store had when the outputs were recorded (float16 is the default since).
    # --embedder none: the LM's hidden state alone, the representation the outputs were recorded with.
    softlabel = ["softlabel", str(src), "-o", str(store), *lm, "--vocab-size", "120", "--logits-dtype", "float32"]
    softlabel += ["--embedder", "none"]
    records = run([*softlabel, "-q"], cache)
    g = zarr.open_group(str(store), mode="r")
    for name in ("hidden", "logits", "bow/indptr", "bow/indices", "bow/data"):
        out[f"store/{name}"] = np.asarray(g[name][:])
    for name in ("ids", "records", "vocab"):
        out[f"store/{name}"] = json.dumps([str(x) for x in g[name][:]])
    attrs = dict(g.attrs)
    attrs["lm"] = {**attrs["lm"], "model": "TINY"}
    out["store/attrs"] = json.dumps(attrs, sort_keys=True)
    replace = {str(store): "STORE", str(tiny): "TINY", str(tmp): "TMP"}
    out["softlabel/stdout"] = _clean(records, replace)

    embed_store = tmp / "e.zarr"
    run(["embed", str(src), "-o", str(embed_store), *lm, "--max-tokens", "16", "-q"], cache)
    out["embed/hidden"] = np.asarray(zarr.open_group(str(embed_store), mode="r")["hidden"][:])

    trainings = {
        # --init random --neighbours 0 --theta-neighbours 0: DSL's start, target and θ before k-means and
        # neighbours became its defaults, as the outputs were recorded.
        "dsl": ["-k", "5", "--epochs", "3", "--init", "random", "--neighbours", "0", "--theta-neighbours", "0"],
        "prodlda": ["-k", "4", "--epochs", "3", "--target", "bow", "--input", "bow"],
        "ctm": ["-k", "4", "--epochs", "3", "--target", "bow", "--input", "hidden", "--seed", "2"],
        "lda": ["-k", "4", "--backbone", "lda", "--passes", "2", "--iterations", "20"],
        "etm": ["-k", "3", "--epochs", "3", "--backbone", "etm"],
    }
    for name, flags in trainings.items():
        folder = tmp / f"m-{name}"
        topics = run(["train", *flags, "--store", str(store), "-o", str(folder), "-q"], cache)
        config = json.loads((folder / "config.json").read_text())
        out[f"{name}/topics"] = topics.decode()
        out[f"{name}/theta"] = np.asarray(zarr.open_group(str(store), mode="r")[f"theta/{config['id']}"][:])
        config.pop("id")
        config["lm"] = {**config["lm"], "model": "TINY"}
        out[f"{name}/config"] = json.dumps(config, sort_keys=True)
        if name == "dsl":
            dsl_id = f"#{json.loads((tmp / 'm-dsl' / 'config.json').read_text())['id']}"
            replace[dsl_id] = "#DSL"

    lines = records.splitlines()
    picked = b"\n".join(lines[10:50]) + b"\n"
    docs = ["train", "-k", "3", "--epochs", "2", "--init", "random", "--neighbours", "0", "--theta-neighbours", "0"]
    docs += ["--docs", "-q"]
    docs = run(docs, cache, stdin=picked)
    out["train-docs/stdout"] = _clean(docs, replace)

    model = tmp / "m-dsl"
    cache_flags = ["--cache-dir", str(cache)]
    out["infer/stdout"] = _clean(run(["infer", "-m", str(model), str(src), *cache_flags, "-q"], cache), replace)
    rows = run(["eval", "--store", str(store), "-m", str(model), "-m", str(tmp / "m-prodlda"), "-q"], cache)
    # Model ids hash the tiny model's path: left out.
    out["eval/stdout"] = json.dumps(
        [{k: v for k, v in orjson.loads(x).items() if k != "model"} for x in rows.splitlines()]
    )
    search = ["search", "-m", str(model), "--store", str(store), *cache_flags, "-q"]
    out["search/query"] = _clean(run([*search, "How do I configure apache virtual hosts?", "-n", "5"], cache), replace)
    out["search/topic"] = _clean(run([*search, "--topic", "1", "-n", "5"], cache), replace)
    ids = json.loads(out["store/ids"])
    out["search/like"] = _clean(run([*search, "--like", ids[3], "-n", "5", "--divergence", "js"], cache), replace)
    return out


def main() -> None:
    import tempfile

    from st.lm import local_folder, resolve
    from st.testing import random_llama

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cache = tmp / "cache"
        cache.mkdir()
        embedded = local_folder(resolve(None), cache)
        tiny = random_llama(tmp / "tiny", embedded)
        work = tmp / "work"
        work.mkdir()
        result = outputs(tiny, cache, work)
    arrays = {k: (v if isinstance(v, np.ndarray) else np.asarray(v)) for k, v in result.items()}
    np.savez_compressed(GOLDEN, **arrays)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size:,} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
