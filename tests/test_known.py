"""A run whose every document is cached needs neither torch nor the model: the LM's facts recorded
at its first load answer instead, with the same bits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import zarr

from tests.conftest import EXAMPLES, read_jsonl, st_env


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_rounding_to_the_model_dtype_is_torchs(dtype):
    import torch

    from st.known import round_to

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 10_000), rng.normal(0, 1e-3, 1000), [0.0, -0.0, 1.0, 65504.0]])
    x = x.astype(np.float32)
    # values exactly halfway between two bfloat16 numbers: ties go to even, as in torch
    halfway = (np.arange(1000, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    x = np.concatenate([x, halfway[np.isfinite(halfway)]])
    expected = torch.from_numpy(x).to(getattr(torch, dtype)).float().numpy()
    np.testing.assert_array_equal(round_to(x, dtype), expected)


def run(cache: Path, *args: str, importtime: bool = False) -> subprocess.CompletedProcess[bytes]:
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "st", *args], capture_output=True, env=st_env(cache), timeout=600
    )


def arrays(path: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    return {k: g[k][:] for k in ("hidden", "logits")}


def test_a_fully_cached_run_loads_neither_torch_nor_the_model(tiny_model, cache_dir, tmp_path):
    docs = tmp_path / "docs.jsonl"
    rows = read_jsonl(EXAMPLES, 12)
    docs.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    lm = ["--lm", str(tiny_model), "--dtype", "bfloat16", "--logits-dtype", "float32", "--vocab-size", "60"]
    first = run(cache_dir, "softlabel", str(docs), "-o", str(tmp_path / "a.zarr"), *lm, "-q")
    assert first.returncode == 0, first.stderr.decode()
    assert list((cache_dir / "facts").glob("*/lm.json"))

    second = run(cache_dir, "softlabel", str(docs), "-o", str(tmp_path / "b.zarr"), *lm, importtime=True)
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    imported = {line.split("|")[-1].strip() for line in second.stderr.decode().splitlines() if "|" in line}
    # MiniLM's embeddings (the default beside the LM) come from the cache too.
    assert not imported & {"torch", "transformers", "sentence_transformers"}
    assert "12 from the cache" in second.stderr.decode()
    a, b = arrays(tmp_path / "a.zarr"), arrays(tmp_path / "b.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert first.stdout.replace(b"a.zarr", b"b.zarr") == second.stdout
    attrs = [json.loads((tmp_path / f"{s}.zarr" / "zarr.json").read_text())["attributes"] for s in "ab"]
    assert attrs[0] == attrs[1]

    # A new vocabulary over cached documents: projected by tokenizer.json alone, still no torch; the
    # logits are the hidden states times the head rows of transformers' own tokenizer and model.
    few = tmp_path / "few.jsonl"
    few.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows[:3]))
    # (--embedder none: the store's hidden states are then the LM's own, as the check below needs.)
    fourth = run(
        cache_dir, "softlabel", str(few), "-o", str(tmp_path / "d.zarr"), *lm, "--embedder", "none", importtime=True
    )
    assert fourth.returncode == 0, fourth.stderr.decode()[-3000:]
    imported = {line.split("|")[-1].strip() for line in fourth.stderr.decode().splitlines() if "|" in line}
    assert "torch" not in imported and "transformers" not in imported
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in g["vocab"][:].tolist()]
    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    head = ref.get_output_embeddings().weight.detach()[ids].float().numpy().astype(np.float64)
    expected = (g["hidden"][:].astype(np.float64) @ head.T).astype(np.float32)
    np.testing.assert_allclose(g["logits"][:], expected, rtol=1e-6, atol=1e-6)

    # Some documents new: the model loads for those alone; the cached ones keep their bits.
    more = tmp_path / "more.jsonl"
    more.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in read_jsonl(EXAMPLES, 16)))
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["vocab"][:].tolist()))
    third = run(cache_dir, "softlabel", str(more), "-o", str(tmp_path / "c.zarr"), "--vocab", str(vocab), *lm[:6])
    assert third.returncode == 0, third.stderr.decode()
    assert "4 through the LM, 12 from the cache" in third.stderr.decode()
    c = arrays(tmp_path / "c.zarr")
    for name in a:
        np.testing.assert_array_equal(c[name][:12], a[name])


def test_facts_that_do_not_fit_the_files_fall_back_to_the_model(tiny_model, cache_dir, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in read_jsonl(EXAMPLES, 6)))
    lm = ["--lm", str(tiny_model), "--dtype", "float32", "--vocab-size", "30", "-q"]
    assert run(cache_dir, "softlabel", str(docs), "-o", str(tmp_path / "a.zarr"), *lm).returncode == 0
    (facts,) = (cache_dir / "facts").glob("*/lm.json")
    recorded = json.loads(facts.read_text())
    assert recorded["head"] and recorded["hidden_size"] == 64 and recorded["head_is_exact"]
    facts.write_text(json.dumps({**recorded, "head": {**recorded["head"], "tensor": "no.such.weight"}}))
    r = run(cache_dir, "softlabel", str(docs), "-o", str(tmp_path / "b.zarr"), *lm)
    assert r.returncode == 0, r.stderr.decode()
    a, b = arrays(tmp_path / "a.zarr"), arrays(tmp_path / "b.zarr")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
