"""st train and st infer: invariants, reproducibility, save/load, baselines, refusals."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from click.testing import CliRunner

from st.cli import cli
from st.models import ProdLDA, TopicConfig, reconstruction_loss
from st.store import Store
from st.train import TrainOptions, load, soft_label, train
from tests.conftest import EXAMPLES, read_jsonl, st_env, st_exe


def run_train(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, ["train", "-q", *args], input=input)


def test_kl_terms_equal_torch_distributions():
    torch.manual_seed(0)
    model = ProdLDA(TopicConfig(input_size=4, vocab_size=6, k=3))
    with torch.no_grad():
        model.prior_mean.normal_()
        model.prior_logvar.normal_()
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(model.prior_mean, torch.exp(0.5 * model.prior_logvar))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(model.kl_prior(mu, logvar), expected, atol=1e-5, rtol=1e-5)
    target = torch.softmax(torch.randn(5, 6), -1)
    log_recon = torch.log_softmax(torch.randn(5, 6), -1)
    kl = torch.nn.functional.kl_div(log_recon, target, reduction="none").sum(-1)
    torch.testing.assert_close(reconstruction_loss(log_recon, target), kl, atol=1e-6, rtol=1e-6)


def test_soft_label_is_softmax_over_tau_with_optional_top_k():
    logits = np.array([[1.0, 2.0, 3.0, 0.0]], dtype=np.float32)
    e = np.exp(logits[0] / 3)
    np.testing.assert_allclose(soft_label(logits, 3.0)[0], e / e.sum(), rtol=1e-6)
    top2 = soft_label(logits, 1.0, topk=2)[0]
    np.testing.assert_allclose(top2, [0, np.e**2 / (np.e**2 + np.e**3), np.e**3 / (np.e**2 + np.e**3), 0], rtol=1e-6)
    assert (soft_label(logits, 1.0, sparsity=0.5)[0] > 0).sum() == 2


def test_train_writes_theta_topics_and_a_model(store, tmp_path):
    path, _ = store
    r = run_train("-k", "5", "--store", str(path), "--epochs", "3", "-o", str(tmp_path / "m"), "--top-words", "7")
    assert r.exit_code == 0, r.output
    topics = [orjson.loads(x) for x in r.stdout_bytes.splitlines()]
    assert [t["topic"] for t in topics] == list(range(5))
    vocab = Store(path).vocab()
    for t in topics:
        assert len(t["words"]) == 7 and set(t["words"]) <= set(vocab)
        assert t["weights"] == sorted(t["weights"], reverse=True)
    model, _ = load(str(tmp_path / "m"))
    theta = np.asarray(Store(path).group[f"theta/{model.id}"][:])
    assert theta.shape == (200, 5)
    np.testing.assert_allclose(theta.sum(1), 1, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
        "topics.json",
        "vocab.json",
    ]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (
        config["training"]["lam"] == 1000
        and config["training"]["lr"] == 2e-3
        and config["model"]["hidden"] == [200, 200]
    )
    assert (
        config["vocab_fingerprint"] == Store(path).attrs["vocab_fingerprint"]
        and config["lm"] == Store(path).attrs["lm"]
    )
    # Loaded again, the model gives the same θ.
    np.testing.assert_array_equal(model.theta(Store(path).array("hidden")), theta)


def test_same_seed_same_model_bit_for_bit_and_the_loss_decreases(store):
    path, _ = store
    s = Store(path)
    opts = TrainOptions(k=4, epochs=6, seed=3)
    a, losses = train(s, np.arange(s.rows), opts)
    b, _ = train(s, np.arange(s.rows), opts)
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert losses[-1] < losses[0]
    c, _ = train(s, np.arange(s.rows), TrainOptions(k=4, epochs=6, seed=4))
    assert not torch.equal(a.model.beta, c.model.beta)


@pytest.mark.parametrize(
    "flags",
    [
        ["--target", "bow", "--input", "bow"],
        ["--target", "bow", "--input", "hidden"],
        ["--loss", "ce", "--topk", "20"],
        ["--sparsity", "0.9", "-t", "1"],
    ],
)
def test_baselines_and_variants_train(store, flags):
    path, _ = store
    r = run_train("-k", "3", "--store", str(path), "--epochs", "2", *flags)
    assert r.exit_code == 0, r.output
    assert len(r.stdout_bytes.splitlines()) == 3
    prefix = {"bow": "prodlda" if "bow" == flags[-1] else "ctm"}.get(flags[1], "dsl")
    assert any(p.name.startswith(prefix) for p in (path / "models").iterdir())


def test_records_on_stdin_choose_the_training_rows_and_docs_output(store):
    path, records_out = store
    lines = records_out.splitlines()
    picked = "\n".join(lines[10:30]) + "\n"
    r = run_train("-k", "3", "--epochs", "2", "--docs", input=picked)
    assert r.exit_code == 0, r.output
    out = [orjson.loads(x) for x in r.stdout_bytes.splitlines()]
    assert [o["id"] for o in out] == [orjson.loads(x)["id"] for x in lines[10:30]]
    for o in out:
        assert len(o["theta"]) == 3 and o["topic"] == int(np.argmax(o["theta"])) and "_st" in o


def test_infer_on_training_documents_reproduces_the_stored_theta(store, tmp_path, cache_dir):
    path, records_out = store
    r = run_train("-k", "4", "--store", str(path), "--epochs", "3", "-o", str(tmp_path / "m"))
    assert r.exit_code == 0, r.output
    model, _ = load(str(tmp_path / "m"))
    stored = np.asarray(Store(path).group[f"theta/{model.id}"][:])
    docs = read_jsonl(EXAMPLES)
    r = CliRunner().invoke(
        cli, ["infer", "-m", str(tmp_path / "m"), str(EXAMPLES), "--cache-dir", str(cache_dir), "-q"]
    )
    assert r.exit_code == 0, r.output
    out = [orjson.loads(x) for x in r.stdout_bytes.splitlines()]
    assert [o["id"] for o in out] == [d["id"] for d in docs]
    np.testing.assert_allclose(np.asarray([o["theta"] for o in out]), stored, atol=2e-6)
    # The same model addressed inside the store, and records as input.
    r2 = run_train("-k", "4", "--store", str(path), "--epochs", "3")
    assert r2.exit_code == 0
    r3 = CliRunner().invoke(
        cli, ["infer", "-m", f"{path}#{model.id}", "--cache-dir", str(cache_dir), "-q"], input=records_out
    )
    assert r3.exit_code == 0, r3.output
    np.testing.assert_allclose(
        np.asarray([orjson.loads(x)["theta"] for x in r3.stdout_bytes.splitlines()]), stored, atol=2e-6
    )
    # Every document is in the LM cache: the LM is not even loaded (transformers not imported).
    r4 = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "st", "infer", "-m", str(tmp_path / "m"), str(EXAMPLES)],
        capture_output=True,
        env=st_env(cache_dir),
    )
    assert r4.returncode == 0, r4.stderr.decode()[-2000:]
    imported = {line.split("|")[-1].strip() for line in r4.stderr.decode().splitlines() if "|" in line}
    assert "transformers" not in imported
    assert [orjson.loads(x)["theta"] for x in r4.stdout.splitlines()] == [o["theta"] for o in out]


def test_infer_refuses_records_from_another_lm(store, tmp_path, cache_dir, embedded_folder):
    path, _ = store
    r = run_train("-k", "3", "--store", str(path), "--epochs", "1", "-o", str(tmp_path / "m"))
    assert r.exit_code == 0
    other = tmp_path / "other.zarr"
    r = CliRunner().invoke(
        cli,
        [
            "embed",
            str(EXAMPLES),
            "-o",
            str(other),
            "--lm",
            str(embedded_folder),
            "--cache-dir",
            str(cache_dir),
            "--max-tokens",
            "8",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    r = subprocess.run(
        [st_exe(), "infer", "-m", str(tmp_path / "m"), "--cache-dir", str(cache_dir)],
        input=r.stdout_bytes,
        capture_output=True,
        env=st_env(cache_dir),
    )
    assert r.returncode == 2 and b"encoded with another lm" in r.stderr and r.stdout == b""
    r = subprocess.run(
        [
            st_exe(),
            "infer",
            "-m",
            str(tmp_path / "m"),
            "--lm",
            str(embedded_folder),
            "--cache-dir",
            str(cache_dir),
            str(EXAMPLES),
        ],
        capture_output=True,
        env=st_env(cache_dir),
    )
    assert r.returncode == 2 and b"but the model was trained on inputs from" in r.stderr


def test_bad_flags_and_inputs_get_clear_errors(store, tmp_path, tiny_model, cache_dir):
    path, _ = store
    embed_only = tmp_path / "e.zarr"
    CliRunner().invoke(
        cli,
        [
            "embed",
            str(EXAMPLES),
            "-o",
            str(embed_only),
            "--lm",
            str(tiny_model),
            "--cache-dir",
            str(cache_dir),
            "-q",
        ],
    )
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    cases = [
        (["train", "-k", "1", "--store", str(path)], "K must be at least 2"),
        (["train", "-k", "3", "--store", str(embed_only)], "no soft labels"),
        (["train", "-k", "3", "--store", str(path), "--topk", "100000"], "larger than the vocabulary"),
        (["train", "-k", "3", "--store", str(tmp_path / "none.zarr")], "no such store"),
        (["infer", "-m", str(tmp_path / "m"), str(EXAMPLES)], "not an st model"),
        (["infer", "-m", f"{path}#nope", str(EXAMPLES)], "no model 'nope'"),
    ]
    for args, message in cases:
        r = subprocess.run([st_exe(), *args], capture_output=True, env=st_env(cache_dir), input=b"")
        err = r.stderr.decode()
        assert r.returncode == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    r = subprocess.run(
        [st_exe(), "train", "-k", "3"], capture_output=True, env=st_env(cache_dir), input=b'{"text": "no reference"}\n'
    )
    assert r.returncode == 2 and b"<stdin>:1: no '_st' store reference" in r.stderr


def test_model_folder_with_corrupt_weights_is_refused(store, tmp_path):
    path, _ = store
    assert run_train("-k", "3", "--store", str(path), "--epochs", "1", "-o", str(tmp_path / "m")).exit_code == 0
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00garbage")
    from st.errors import InputError

    with pytest.raises(InputError, match="missing or damaged model.safetensors"):
        load(str(tmp_path / "m"))
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(InputError, match="missing or damaged"):
        load(str(tmp_path / "m"))


def test_headline_pipeline(tiny_model, cache_dir, tmp_path):
    margs = f"--model {tiny_model} --dtype float32 --cache-dir {cache_dir}"
    cmd = f"cat {EXAMPLES} | {st_exe()} softlabel -t 3 {margs} -q | {st_exe()} train -k 4 --epochs 2 -q"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, env=st_env(cache_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [orjson.loads(x)["topic"] for x in r.stdout.splitlines()] == [0, 1, 2, 3]
    models = list((tmp_path / "st.zarr" / "models").iterdir())
    assert len(models) == 1 and models[0].name.startswith("dsl-k4-")


def test_lda_baseline_saves_without_pickle_and_loads_to_the_same_theta(store, tmp_path):
    path, _ = store
    r = run_train(
        "-k",
        "4",
        "--backbone",
        "lda",
        "--passes",
        "2",
        "--iterations",
        "20",
        "--topic-words",
        "beta",
        "--store",
        str(path),
        "-o",
        str(tmp_path / "lda"),
    )
    assert r.exit_code == 0, r.output
    topics = [orjson.loads(x) for x in r.stdout_bytes.splitlines()]
    assert len(topics) == 4 and all(t["weights"] == sorted(t["weights"], reverse=True) for t in topics)
    model, _ = load(str(tmp_path / "lda"))
    assert model.id.startswith("lda-k4-") and model.config["backbone"] == "lda"
    stored = np.asarray(Store(path).group[f"theta/{model.id}"][:])
    np.testing.assert_allclose(stored.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(model.theta(Store(path).bow().toarray().astype(np.float32)), stored, atol=1e-6)
    # The topic-word matrix is gensim's own, rebuilt from the saved statistics.
    gensim_topics = model.model.lda.get_topics()
    assert topics[0]["words"][0] == Store(path).vocab()[int(np.argmax(gensim_topics[0]))]


def naive_sinkhorn_plan(cost: np.ndarray, alpha: float, iterations: int = 5000) -> np.ndarray:
    """Textbook Sinkhorn in the probability domain (float64), for comparison."""
    kernel = np.exp(-alpha * cost)
    a, b = np.full(cost.shape[0], 1 / cost.shape[0]), np.full(cost.shape[1], 1 / cost.shape[1])
    u = np.ones_like(a)
    for _ in range(iterations):
        v = b / (kernel.T @ u)
        u = a / (kernel @ v)
    return u[:, None] * kernel * v[None, :]


def test_transport_plans_match_textbook_sinkhorn():
    from st.models import sinkhorn_potential

    rng = np.random.default_rng(0)
    cost = rng.random((30, 7))
    g = sinkhorn_potential(torch.from_numpy(cost), 3.0, iterations=5000, tol=1e-10)
    rows = torch.softmax(-3.0 * torch.from_numpy(cost) + g, dim=1).numpy() / 30
    np.testing.assert_allclose(rows, naive_sinkhorn_plan(cost, 3.0), rtol=1e-6, atol=1e-12)


def test_etm_and_ecrtm_decoders_follow_their_formulas():
    from st.models import ECRTM, ETM

    torch.manual_seed(0)
    theta = torch.softmax(torch.randn(4, 3), -1)
    etm = ETM(TopicConfig(input_size=5, vocab_size=8, k=3, backbone="etm", embedding_size=6))
    beta = np.exp(etm.alpha.detach().numpy() @ etm.rho.detach().numpy().T)
    beta /= beta.sum(1, keepdims=True)
    np.testing.assert_allclose(etm.reconstruct(theta).exp().detach().numpy(), theta.numpy() @ beta + 1e-10, rtol=1e-5)
    ecrtm = ECRTM(TopicConfig(input_size=5, vocab_size=8, k=3, backbone="ecrtm", embedding_size=6))
    a, r = ecrtm.alpha.detach().numpy(), ecrtm.rho.detach().numpy()
    dist = ((a[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    b = np.exp(-dist / 0.2)
    b /= b.sum(0, keepdims=True)
    np.testing.assert_allclose(ecrtm.beta().detach().numpy(), b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backbone", ["etm", "ecrtm", "fastopic"])
def test_other_backbones_train_save_load_and_reproduce_theta(store, tmp_path, backbone):
    path, _ = store
    s = Store(path)
    a, losses = train(s, np.arange(s.rows), TrainOptions(k=4, epochs=8, backbone=backbone, checkpoint_every=0))
    assert losses[-1] < losses[0]
    r = run_train("-k", "4", "--store", str(path), "--epochs", "3", "--backbone", backbone, "-o", str(tmp_path / "m"))
    assert r.exit_code == 0, r.output
    topics = [orjson.loads(x) for x in r.stdout_bytes.splitlines()]
    assert len(topics) == 4 and all(t["weights"] == sorted(t["weights"], reverse=True) for t in topics)
    model, _ = load(str(tmp_path / "m"))
    assert model.id.startswith(f"dsl-{backbone}-k4-") and model.config["model"]["backbone"] == backbone
    np.testing.assert_allclose(model.topic_word().sum(1), 1, atol=1e-6)
    stored = np.asarray(s.group[f"theta/{model.id}"][:])
    np.testing.assert_allclose(stored.sum(1), 1, atol=1e-5)
    hidden = s.array("hidden")
    np.testing.assert_array_equal(model.theta(hidden), stored)
    # A document's θ does not depend on the other documents it is computed with.
    np.testing.assert_allclose(model.theta(hidden[5:6]), stored[5:6], atol=1e-6)


def test_training_resumes_from_its_checkpoint_bit_for_bit(store, monkeypatch):
    import st.train as train_mod

    path, _ = store
    s = Store(path)
    rows = np.arange(s.rows)
    opts = TrainOptions(k=4, epochs=7, checkpoint_every=2, seed=1)
    whole, whole_losses = train(s, rows, TrainOptions(**{**opts.__dict__, "checkpoint_every": 0}))

    real, calls = train_mod.save_checkpoint, []

    def interrupt_after_second(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_checkpoint", interrupt_after_second)
    with pytest.raises(KeyboardInterrupt):
        train(s, rows, opts)
    monkeypatch.setattr(train_mod, "save_checkpoint", real)
    checkpoint = train_mod.checkpoint_path(s, whole.id)
    assert checkpoint.is_file() and whole.id == train_mod.model_id(train_mod.resolved(opts, len(rows)), s, rows)
    resumed, losses = train(s, rows, opts)
    assert losses == whole_losses
    for (name, x), (_, y) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    # A damaged checkpoint is set aside, and training starts over to the same result.
    checkpoint.write_bytes(b"\x00 not a checkpoint")
    again, _ = train(s, rows, opts)
    assert torch.equal(again.model.beta, whole.model.beta)
    # `st train` removes the checkpoint once the model is saved.
    assert (
        run_train("-k", "4", "--store", str(path), "--epochs", "7", "--checkpoint-every", "2", "--seed", "1").exit_code
        == 0
    )
    assert not checkpoint.exists()


def test_bow_weight_mixes_the_documents_own_words_into_the_target(store):
    from st.train import targets

    path, _ = store
    s = Store(path)
    mixed, tau = targets(s, TrainOptions(bow_weight=0.25, calibrate=False, neighbours=0))
    logits = np.asarray(s.group["logits"][:], dtype=np.float64) / tau
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    indptr, indices, data = (np.asarray(s.group[f"bow/{n}"][:]) for n in ("indptr", "indices", "data"))
    for row in range(s.rows):
        counts = np.zeros(len(s.vocab()))
        np.add.at(counts, indices[indptr[row] : indptr[row + 1]], data[indptr[row] : indptr[row + 1]])
        expected = soft[row] if counts.sum() == 0 else 0.75 * soft[row] + 0.25 * counts / counts.sum()
        np.testing.assert_allclose(mixed[row], expected, atol=1e-6)
    np.testing.assert_allclose(mixed.sum(1), 1, atol=1e-5)


def test_salience_is_each_words_term_of_the_topics_kl_from_the_corpus():
    import math

    from scipy import sparse

    from st.train import salience

    counts = [[2, 1, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]  # the third document has no vocabulary word
    theta = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.5, 0.0, 0.5]])
    beta = np.arange(12, dtype=np.float64).reshape(3, 4)
    got = salience(theta, sparse.csr_matrix(np.array(counts, dtype=np.float32)), beta)
    total = sum(map(sum, counts))
    for k in range(2):
        weighted = [sum(theta[d][k] * counts[d][w] for d in range(3)) for w in range(4)]
        for w in range(4):
            p_wk = weighted[w] / sum(weighted)
            p_w = sum(counts[d][w] for d in range(3)) / total
            expected = p_wk * math.log(p_wk / p_w) if p_wk > 0 else 0.0
            assert got[k, w] == pytest.approx(expected, abs=1e-6)
    # Topic 2's only document has no words: it keeps its β row.
    np.testing.assert_array_equal(got[2], beta[2])


def test_topic_words_salient_by_default_or_beta_and_kept_by_save_and_load(store, tmp_path):
    path, _ = store
    s = Store(path)
    bow = s.bow()
    runs = {}
    for ranking in ("salient", "beta"):
        r = run_train(
            "-k", "4", "--store", str(path), "--epochs", "3", "--topic-words", ranking, "-o", str(tmp_path / ranking)
        )
        assert r.exit_code == 0, r.output
        runs[ranking] = [orjson.loads(x) for x in r.stdout_bytes.splitlines()]
        model, _ = load(str(tmp_path / ranking))
        assert model.topics(15) == runs[ranking]  # loaded again: the same topics
    model, _ = load(str(tmp_path / "beta"))
    for t, row in zip(runs["beta"], model.topic_word(), strict=True):
        assert t["words"] == [s.vocab()[j] for j in np.argsort(-row, kind="stable")[:15]]
    # A salient word is one the topic's documents use more often than the corpus does.
    model, _ = load(str(tmp_path / "salient"))
    theta = np.asarray(s.group[f"theta/{model.id}"][:], dtype=np.float64)
    within = np.asarray((bow.T @ theta).T)
    corpus = np.asarray(bow.sum(0)).ravel()
    index = {w: i for i, w in enumerate(s.vocab())}
    for k, t in enumerate(runs["salient"]):
        top = index[t["words"][0]]
        assert within[k, top] / within[k].sum() > corpus[top] / corpus.sum()
    assert runs["salient"] != runs["beta"]


def test_calibrate_removes_each_words_mean_logit_over_the_training_documents(store):
    from st.train import targets

    path, _ = store
    s = Store(path)
    rows = np.arange(0, s.rows, 2)
    calibrated, tau = targets(s, TrainOptions(calibrate=True, bow_weight=0, neighbours=0), rows)
    logits = np.asarray(s.group["logits"][:], dtype=np.float64)
    shifted = (logits - logits[rows].mean(0)) / tau
    expected = np.exp(shifted - shifted.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(calibrated, expected, atol=1e-6)
    plain, _ = targets(s, TrainOptions(calibrate=False, bow_weight=0, neighbours=0), rows)
    assert not np.allclose(calibrated, plain, atol=1e-4)
    # A word the LM favours for every document alike loses that favour.
    favoured = int(np.argmax(logits[rows].mean(0)))
    assert calibrated[rows, favoured].mean() < plain[rows, favoured].mean()


def lm_size(tiny_model: Path) -> int:
    """Where the LM's hidden state ends in a store's inputs: the store fixture's has MiniLM's after it."""
    return int(orjson.loads((tiny_model / "config.json").read_bytes())["hidden_size"])


def in_space(x: np.ndarray, reference: np.ndarray, cut: int) -> np.ndarray:
    """Rows standardised over `reference`, the LM's part and the embedder's each of unit length."""
    z = (x - reference.mean(0)) / (reference.std(0) + 1e-6)
    parts = [z[:, :cut], z[:, cut:]]
    z = np.hstack([p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts])
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def nearest_by_cosine(reference: np.ndarray, queries: np.ndarray, k: int, cut: int) -> np.ndarray:
    """The positions in `reference` of each query's k+1 nearest rows by cosine in `in_space`
    (scikit-learn's exact search)."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(in_space(reference, reference, cut))
    return index.kneighbors(in_space(queries, reference, cut), return_distance=False)


def test_neighbours_mix_in_the_mean_target_of_the_nearest_training_documents(store, tiny_model):
    from st.train import targets

    path, _ = store
    s = Store(path)
    rows = np.arange(0, s.rows, 2)  # half the corpus trains; the other half's neighbours are among it too
    own, _ = targets(s, TrainOptions(neighbours=0, calibrate=False), rows)
    mixed, _ = targets(s, TrainOptions(neighbours=5, neighbour_weight=0.4, calibrate=False, layout="inputs"), rows)
    hidden = np.asarray(s.group["hidden"][:], dtype=np.float64)
    nearest = nearest_by_cosine(hidden[rows], hidden, 5, lm_size(tiny_model))
    for row in range(s.rows):
        others = [int(rows[j]) for j in nearest[row] if rows[j] != row][:5]  # never itself
        np.testing.assert_allclose(mixed[row], 0.6 * own[row] + 0.4 * own[others].mean(0), atol=1e-6)
    np.testing.assert_allclose(mixed.sum(1), 1, atol=1e-5)
    # DSL-ProdLDA mixes in 10 by default; a bag-of-words target (the baselines') none.
    default, _ = targets(s, TrainOptions(calibrate=False, layout="inputs"), rows)
    assert not np.allclose(default, own, atol=1e-4)
    bow, _ = targets(s, TrainOptions(target="bow"), rows)
    bow_own, _ = targets(s, TrainOptions(target="bow", neighbours=0), rows)
    np.testing.assert_array_equal(bow, bow_own)


def test_neighbours_of_a_large_training_set_come_from_a_fixed_sample(store, tiny_model, monkeypatch):
    import st.train as train_mod

    path, _ = store
    s = Store(path)
    monkeypatch.setattr(train_mod, "NEIGHBOUR_ROWS", 60)
    monkeypatch.setattr(train_mod, "NEIGHBOUR_BLOCK", 7)  # queries a few at a time: the same result
    rows = np.random.default_rng(3).permutation(s.rows)  # any order
    datas = [
        train_mod.TrainingData.of(s, rows, TrainOptions(neighbours=4, calibrate=False, seed=seed, layout=layout))
        for seed, layout in ((0, "inputs"), (9, "inputs"), (0, "umap"))
    ]
    sample = datas[0].neighbourhood.rows
    assert len(sample) == 60 and set(sample.tolist()) <= set(rows.tolist())
    np.testing.assert_array_equal(sample, datas[1].neighbourhood.rows)  # the target is the same for every seed
    _, mixed = datas[0].read(np.arange(len(rows)))
    own, _ = train_mod.targets(s, TrainOptions(neighbours=0, calibrate=False), rows)
    hidden = np.asarray(s.group["hidden"][:], dtype=np.float64)
    nearest = nearest_by_cosine(hidden[sample], hidden[rows], 4, lm_size(tiny_model))
    for i, row in enumerate(rows):
        others = [int(sample[j]) for j in nearest[i] if sample[j] != row][:4]
        np.testing.assert_allclose(mixed[i].numpy(), 0.5 * own[row] + 0.5 * own[others].mean(0), atol=1e-6)
    # In the UMAP layout, the sample's documents find theirs in the layout; the rest, by their inputs.
    _, laid_out = datas[2].read(np.arange(len(rows)))
    outside = ~np.isin(rows, sample)
    np.testing.assert_allclose(laid_out[outside].numpy(), mixed[outside].numpy(), atol=1e-6)
    assert not np.allclose(laid_out[~outside].numpy(), mixed[~outside].numpy(), atol=1e-4)


def test_a_windowed_training_finds_each_documents_neighbours_once(chunked, monkeypatch):
    import st.train as train_mod

    found: list[int] = []
    real = train_mod.Neighbourhood.nearest_of

    def counted(self, rows, x):
        found.append(len(rows))
        return real(self, rows, x)

    monkeypatch.setattr(train_mod.Neighbourhood, "nearest_of", counted)
    rows = np.random.default_rng(4).permutation(chunked.rows)[:150]
    train(chunked, rows, TrainOptions(k=4, epochs=3, window=40, layout="inputs"))
    assert sum(found) == 150  # every training document's, once, not once per epoch's windows


def nearest_by_distance(points: np.ndarray, k: int) -> np.ndarray:
    """Each point's k nearest others (scipy's Euclidean distances, sorted)."""
    from scipy.spatial.distance import cdist

    d = cdist(points, points)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.mark.filterwarnings("ignore:n_jobs value")
def test_the_umap_layout_is_where_neighbours_and_the_kmeans_start_look(store, tiny_model):
    import umap
    from sklearn.cluster import KMeans

    import st.train as train_mod

    path, _ = store
    s = Store(path)
    rows = np.random.default_rng(5).permutation(s.rows)[:120]
    data = train_mod.TrainingData.of(s, rows, TrainOptions(k=4, neighbours=5, calibrate=False))  # umap: the default
    hood = data.neighbourhood
    assert hood is not None and hood.layout is not None and hood.layout.shape == (120, 5)
    np.testing.assert_array_equal(hood.rows, np.sort(rows))
    # UMAP's own layout of the standardised inputs (cosine), fixed whatever the training seed.
    hidden = np.asarray(s.group["hidden"][:], dtype=np.float64)[hood.rows]
    np.testing.assert_allclose(hood.inputs, in_space(hidden, hidden, lm_size(tiny_model)), atol=1e-5)
    direct = umap.UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=0)
    np.testing.assert_allclose(hood.layout, direct.fit_transform(hood.inputs), atol=1e-5)
    # Each target mixed with the mean own target of its 5 nearest in the layout.
    own, _ = train_mod.targets(s, TrainOptions(neighbours=0, calibrate=False), rows)
    nearest = nearest_by_distance(hood.layout, 5)
    _, mixed = data.read(np.arange(len(rows)))
    for i, row in enumerate(rows):
        at = int(np.searchsorted(hood.rows, row))
        expected = 0.5 * own[row] + 0.5 * own[hood.rows[nearest[at]]].mean(0)
        np.testing.assert_allclose(mixed[i].numpy(), expected, atol=1e-6)
    # β starts at the log mean targets of k-means clusters of the layout, centred over the topics.
    model = train_mod.build(train_mod.TopicConfig(input_size=hood.inputs.shape[1], vocab_size=own.shape[1], k=4))
    clusters = train_mod.cluster_beta(model, data, None, seed=3)
    labels = KMeans(n_clusters=4, n_init=4, random_state=3).fit_predict(hood.layout.astype(np.float64))
    # Each training document's cluster (for --cluster-weight), in the training rows' own order.
    assert clusters is not None
    np.testing.assert_array_equal(clusters, labels[np.searchsorted(hood.rows, rows)])
    laid = mixed.numpy()[np.argsort(rows)]  # in the layout's order
    log = np.log(np.stack([laid[labels == c].mean(0) for c in range(4)]) + 1e-12)
    np.testing.assert_allclose(model.beta.detach().numpy(), log - log.mean(0), atol=1e-4)


def test_the_lm_and_the_embedder_weigh_alike_among_neighbours(store, tiny_model, cache_dir, tmp_path):
    import st.train as train_mod

    path, _ = store
    s = Store(path)
    rows = np.arange(s.rows)
    hidden = np.asarray(s.group["hidden"][:], dtype=np.float64)
    cut = lm_size(tiny_model)
    assert train_mod.input_parts(s, train_mod.resolved(TrainOptions()), hidden) == cut  # DSL's default
    assert train_mod.input_parts(s, TrainOptions(balance_inputs=False), hidden) is None
    assert train_mod.input_parts(s, train_mod.resolved(TrainOptions(target="bow")), hidden) is None
    hood = train_mod.TrainingData.of(s, rows, TrainOptions(k=4, neighbours=3, layout="inputs")).neighbourhood
    assert hood is not None
    halves = [np.linalg.norm(hood.inputs[:, :cut], axis=1), np.linalg.norm(hood.inputs[:, cut:], axis=1)]
    np.testing.assert_allclose(halves, np.sqrt(0.5), atol=1e-5)
    # The LM's hidden state alone is one part: standardised, then of unit length.
    alone = store_again(tmp_path / "alone.zarr", tiny_model, cache_dir, "--embedder", "none")
    lm = np.asarray(alone.group["hidden"][:], dtype=np.float64)
    assert lm.shape[1] == cut and train_mod.input_parts(alone, TrainOptions(balance_inputs=True), lm) is None
    hood = train_mod.TrainingData.of(alone, rows, TrainOptions(k=4, neighbours=3, layout="inputs")).neighbourhood
    assert hood is not None
    z = (lm - lm.mean(0)) / (lm.std(0) + 1e-6)
    np.testing.assert_allclose(hood.inputs, z / np.linalg.norm(z, axis=1, keepdims=True), atol=1e-5)


def test_too_few_documents_to_lay_out_use_the_inputs(store):
    import st.train as train_mod

    path, _ = store
    s = Store(path)
    rows = np.arange(25)
    data = train_mod.TrainingData.of(s, rows, TrainOptions(k=4, neighbours=3, calibrate=False))
    inputs = train_mod.TrainingData.of(s, rows, TrainOptions(k=4, neighbours=3, calibrate=False, layout="inputs"))
    assert data.neighbourhood is not None and data.neighbourhood.layout is None
    np.testing.assert_array_equal(data.neighbourhood.nearest, inputs.neighbourhood.nearest)


def test_the_layout_leaves_the_trainings_thread_count_alone():
    """numba's OpenMP pool is torch's: a UMAP fit that set every core would make two trainings side by
    side (each told OMP_NUM_THREADS=1) fight over the cores."""
    import torch

    from st.train import umap_layout

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layout = umap_layout(np.random.default_rng(0).random((60, 8), dtype=np.float32))
        assert layout is not None and layout.shape == (60, 5)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_neighbours_are_part_of_the_model_id_and_refused_below_zero(store, tmp_path):
    from st.train import model_id, resolved

    path, _ = store
    s = Store(path)
    rows = np.arange(s.rows)
    ids = {n: model_id(resolved(TrainOptions(k=4, neighbours=n), len(rows)), s, rows) for n in (None, 0, 10, 3)}
    assert ids[None] == ids[10] and len({ids[0], ids[10], ids[3]}) == 3
    weights = {w: model_id(resolved(TrainOptions(k=4, neighbour_weight=w), len(rows)), s, rows) for w in (0.5, 0.2)}
    assert weights[0.5] != weights[0.2]
    # Without neighbours, their weight names nothing: such models keep the ids they had before the option.
    no_hood = {
        w: model_id(resolved(TrainOptions(k=4, neighbours=0, neighbour_weight=w), 9), s, rows) for w in (0.5, 0.2)
    }
    assert no_hood[0.5] == no_hood[0.2]
    layouts = {
        lay: model_id(resolved(TrainOptions(k=4, layout=lay), len(rows)), s, rows) for lay in (None, "umap", "inputs")
    }
    assert layouts[None] == layouts["umap"] == ids[None] != layouts["inputs"]
    # The baselines look in the inputs: their ids stay what they were before the option.
    ctm = TrainOptions(k=4, target="bow", init="kmeans")
    explicit = dataclasses.replace(ctm, layout="inputs")
    assert model_id(resolved(ctm, 9), s, rows) == model_id(resolved(explicit, 9), s, rows)
    balanced = {b: model_id(resolved(TrainOptions(k=4, balance_inputs=b), 9), s, rows) for b in (None, True, False)}
    assert balanced[None] == balanced[True] == ids[None] != balanced[False]
    assert model_id(resolved(dataclasses.replace(ctm, balance_inputs=False), 9), s, rows) == model_id(
        resolved(ctm, 9), s, rows
    )
    held = {w: model_id(resolved(TrainOptions(k=4, cluster_weight=w), 9), s, rows) for w in (None, 0.0, 30.0)}
    assert held[None] == held[0.0] == ids[None] != held[30.0]
    assert resolved(TrainOptions(k=4, init="random")).cluster_weight == 0.0  # nothing to hold θ to
    r = run_train("-k", "4", "--store", str(path), "--init", "random", "--cluster-weight", "5")
    assert r.exit_code == 2 and "needs --init kmeans" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_train("-k", "4", "--store", str(path), "--layout", "tsne")
    assert r.exit_code != 0 and "--layout" in r.stderr and "Traceback" not in r.output
    r = run_train("-k", "4", "--store", str(path), "--neighbours", "-1")
    assert r.exit_code != 0 and "--neighbours" in r.stderr and "Traceback" not in r.output
    r = run_train("-k", "4", "--store", str(path), "--epochs", "2", "--neighbours", "3", "-o", str(tmp_path / "m"))
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "m" / "config.json").read_text())["training"]["neighbours"] == 3


def test_dsl_decoder_and_dropout_flags_are_recorded_and_change_the_model_id(store, tmp_path):
    path, _ = store
    runs = {
        "default": [],
        "before": ["--no-calibrate", "--decoder-norm", "1", "--no-decoder-affine"],
        "centred": ["--decoder-norm", "0", "--theta-dropout", "0.5"],
        "plain": ["--no-decoder-affine"],
    }
    config = {}
    for name, extra in runs.items():
        folder = tmp_path / name
        result = run_train("-k", "3", "--store", str(path), "--epochs", "2", "-o", str(folder), *extra)
        assert result.exit_code == 0, result.output
        config[name] = json.loads((folder / "config.json").read_text())
    default, before, centred = config["default"], config["before"], config["centred"]
    assert default["training"]["calibrate"] is True and default["training"]["decoder_norm"] == 0.75
    assert default["model"]["decoder_norm"] == 0.75 and default["model"]["decoder_affine"] is True
    assert before["training"]["calibrate"] is False and before["model"]["decoder_norm"] == 1.0
    assert before["model"]["decoder_affine"] is False and config["plain"]["model"]["decoder_affine"] is False
    assert centred["model"]["decoder_norm"] == 0.0
    assert default["model"]["theta_dropout"] == 0.0 and centred["model"]["theta_dropout"] == 0.5
    assert default["training"]["batch_size"] == 64  # too few documents here for larger steps
    assert len({c["id"] for c in config.values()}) == 4
    # The baselines keep ProdLDA's batch norm, uncalibrated.
    result = run_train("-k", "3", "--store", str(path), "--epochs", "2", "--target", "bow", "-o", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    bow = json.loads((tmp_path / "b" / "config.json").read_text())
    assert bow["training"]["calibrate"] is False and bow["model"]["decoder_norm"] == 1.0
    assert bow["model"]["decoder_affine"] is False and bow["model"]["theta_dropout"] == 0.2
    assert bow["training"]["batch_size"] == 64


@pytest.mark.parametrize(
    ("documents", "batch"), [(2, 64), (1_000, 64), (2_047, 64), (2_048, 128), (4_095, 128), (4_096, 256), (10**6, 256)]
)
def test_dsl_batch_size_keeps_sixteen_steps_per_epoch(documents, batch):
    from st.train import resolved

    assert resolved(TrainOptions(), documents).batch_size == batch
    assert resolved(TrainOptions(batch_size=32), documents).batch_size == 32
    assert resolved(TrainOptions(target="bow"), documents).batch_size == 64
    assert resolved(TrainOptions(backbone="etm"), documents).batch_size == 64


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_decoder_norm_divides_the_centred_logits_by_a_power_of_their_spread(power):
    from st.models import DecoderNorm

    torch.manual_seed(0)
    x = torch.randn(16, 5, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0, 0.01, 2.0], dtype=torch.float64) + 4
    norm = DecoderNorm(5, power).double().train()
    a = x.numpy()
    var = a.var(0)
    expected = (a - a.mean(0)) / (var + norm.eps) ** (power / 2)
    np.testing.assert_allclose(norm(x).detach().numpy(), expected, rtol=1e-9, atol=1e-12)
    if power == 1.0:  # ProdLDA's batch norm, exactly
        bn = torch.nn.BatchNorm1d(5, affine=False).double().train()
        bn(x)  # the batch `norm` has already seen
        torch.testing.assert_close(norm(x), bn(x))
        torch.testing.assert_close(norm.running_var, bn.running_var)
    # In eval mode the running statistics stand in for the batch's, as in a batch norm.
    norm.eval()
    mean, rvar = norm.running_mean.numpy(), norm.running_var.numpy()
    expected = (a - mean) / (rvar + norm.eps) ** (power / 2)
    np.testing.assert_allclose(norm(x).detach().numpy(), expected, rtol=1e-9, atol=1e-12)


def test_decoder_affine_applies_a_learned_gain_and_shift_per_word_after_the_norm():
    from st.models import DecoderNorm

    torch.manual_seed(0)
    x = torch.randn(16, 5, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0, 0.01, 2.0], dtype=torch.float64) - 2
    norm = DecoderNorm(5, 0.75, affine=True).double().train()
    # The identity at first: the same as the norm without them.
    plain = DecoderNorm(5, 0.75).double().train()
    torch.testing.assert_close(norm(x), plain(x))
    gain, shift = np.array([0.5, 2.0, 1.0, 3.0, -1.0]), np.array([1.0, 0.0, -2.0, 0.5, 0.25])
    with torch.no_grad():
        norm.gain.copy_(torch.from_numpy(gain))
        norm.shift.copy_(torch.from_numpy(shift))
    a = x.numpy()
    expected = (a - a.mean(0)) / (a.var(0) + norm.eps) ** (0.75 / 2) * gain + shift
    out = norm(x)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-9, atol=1e-12)
    # Both are trained: the loss reaches them.
    out.pow(2).sum().backward()
    assert norm.gain.grad is not None and norm.gain.grad.abs().sum() > 0
    assert norm.shift.grad is not None and norm.shift.grad.abs().sum() > 0
    assert {"gain", "shift"} <= set(norm.state_dict())


def test_a_model_saved_before_the_decoder_norm_option_loads_with_batch_norm():
    config = TopicConfig(input_size=4, vocab_size=6, k=3).to_dict()
    del config["decoder_norm"]
    del config["decoder_affine"]
    model = ProdLDA(TopicConfig(**config))
    assert model.decoder_bn.power == 1.0 and model.decoder_bn.gain is None
    assert set(model.decoder_bn.state_dict()) == set(torch.nn.BatchNorm1d(6, affine=False).state_dict())


def test_retraining_after_embed_gets_a_new_model_id_and_keeps_the_earlier_theta(store, tmp_path, tiny_model, cache_dir):
    """`st embed -o` onto a soft-label store replaces its hidden states: a model trained on them
    is another model, and must not overwrite the earlier one's θ or resume its checkpoint."""
    path, _ = store
    flags = ["-k", "3", "--store", str(path), "--epochs", "2"]
    assert run_train(*flags, "-o", str(tmp_path / "before")).exit_code == 0
    before, _ = load(str(tmp_path / "before"))
    theta_before = np.asarray(Store(path).group[f"theta/{before.id}"][:])
    r = CliRunner().invoke(
        cli,
        ["embed", str(EXAMPLES), "-o", str(path), "--lm", str(tiny_model), "--cache-dir", str(cache_dir)]
        + ["--dtype", "float32", "--max-tokens", "6", "-q"],
    )
    assert r.exit_code == 0, r.output
    assert run_train(*flags, "-o", str(tmp_path / "after")).exit_code == 0
    after, _ = load(str(tmp_path / "after"))
    assert after.id != before.id
    np.testing.assert_array_equal(np.asarray(Store(path).group[f"theta/{before.id}"][:]), theta_before)
    assert after.config["input_source"]["max_tokens"] == 6


def test_infer_reads_each_stores_attributes_afresh_in_every_call(store, tmp_path, tiny_model, cache_dir):
    """A store re-created at the same path with another max tokens: records pointing into it are
    refused by the next `infer` in the same process, not judged by what the first call saw."""
    path, records_out = store
    assert run_train("-k", "3", "--store", str(path), "--epochs", "1", "-o", str(tmp_path / "m")).exit_code == 0
    infer = ["infer", "-m", str(tmp_path / "m"), "--cache-dir", str(cache_dir), "-q"]
    assert CliRunner().invoke(cli, infer, input=records_out).exit_code == 0
    r = CliRunner().invoke(
        cli,
        ["softlabel", str(EXAMPLES), "-o", str(path), "--lm", str(tiny_model), "--cache-dir", str(cache_dir)]
        + ["--dtype", "float32", "--vocab-size", "300", "--max-tokens", "8", "-q"],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, infer, input=records_out)
    assert r.exit_code == 2 and "encoded with another max tokens" in r.output


# --- training a window at a time (corpora past memory) ------------------------------------------


def store_again(path, tiny_model, cache_dir, *flags: str) -> Store:
    """The example store made again with other flags (the LM cache answers: no LM work)."""
    r = CliRunner().invoke(
        cli,
        ["softlabel", str(EXAMPLES), "-o", str(path), "--lm", str(tiny_model), "--cache-dir", str(cache_dir)]
        + ["--dtype", "float32", "--vocab-size", "300", *flags, "-q"],
    )
    assert r.exit_code == 0, r.output
    return Store(path)


@pytest.fixture
def chunked(store, tiny_model, cache_dir, tmp_path):
    """The example store again, in chunks of 16 rows."""
    return store_again(tmp_path / "chunked.zarr", tiny_model, cache_dir, "--chunk-rows", "16")


def reference_training(s: Store, rows: np.ndarray, opts: TrainOptions) -> ProdLDA:
    """DSL-ProdLDA trained the plain way, everything in memory: targets computed here with numpy
    (softmax at τ in float64, kept in float32, the bag of words mixed in), one shuffle of all
    documents per epoch. (Calibration has its own test: a mean summed in another order differs in
    the last bits, and the biases that batch norm cancels then drift apart.)"""
    from st.models import build
    from st.train import resolved

    opts = resolved(opts, len(rows))
    logits = np.asarray(s.group["logits"][:], dtype=np.float64)
    z = logits / s.temperature
    soft = np.exp(z - z.max(1, keepdims=True))
    soft = (soft / soft.sum(1, keepdims=True)).astype(np.float32)
    bow = s.bow().toarray().astype(np.float64)
    total = bow.sum(1, keepdims=True)
    weight = np.where(total > 0, opts.bow_weight, 0.0)
    y = torch.from_numpy(((1 - weight) * soft + weight * bow / np.where(total == 0, 1, total))[rows].astype(np.float32))
    x = torch.from_numpy(np.asarray(s.group["hidden"][:], dtype=np.float32)[rows])
    config = TopicConfig(
        input_size=x.shape[1], vocab_size=y.shape[1], k=opts.k, decoder_temperature=s.temperature,
        decoder_norm=float(opts.decoder_norm), decoder_affine=bool(opts.decoder_affine),
        theta_dropout=float(opts.theta_dropout),
    )  # fmt: skip
    torch.manual_seed(opts.seed)
    model = build(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr, betas=opts.betas)
    shuffle = torch.Generator().manual_seed(opts.seed)
    model.train()
    for _ in range(opts.epochs):
        order = torch.randperm(len(x), generator=shuffle)
        for start in range(0, len(x), int(opts.batch_size)):
            idx = order[start : start + int(opts.batch_size)]
            if len(idx) < 2:
                continue
            loss = model.loss(x[idx], y[idx], float(opts.lam), opts.loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    assert isinstance(model, ProdLDA)
    return model


@pytest.mark.parametrize("window", [0, 10_000])
def test_a_window_over_the_whole_corpus_trains_the_in_memory_model(chunked, window):
    rows = np.random.default_rng(0).permutation(chunked.rows)[:150]  # a training set in any order
    opts = TrainOptions(k=4, epochs=4, seed=2, window=window, calibrate=False, init="random", neighbours=0)
    fitted, _ = train(chunked, rows, opts)
    reference = reference_training(chunked, rows, opts)
    for (name, x), (_, y) in zip(fitted.model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_small_windows_visit_every_document_once_per_epoch_reproducibly(chunked):
    from st.train import TrainingData, resolved, targets

    rows = np.random.default_rng(1).permutation(chunked.rows)[:170]
    opts = resolved(TrainOptions(k=4, window=40), len(rows))
    data = TrainingData.of(chunked, rows, opts)
    hidden = np.asarray(chunked.group["hidden"][:])
    targets_all, _ = targets(chunked, opts, rows)
    shuffle = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):
        windows = list(data.windows(shuffle))
        seen = np.concatenate(windows)
        assert sorted(seen.tolist()) == list(range(len(rows)))  # each document once
        assert all(40 <= len(w) < 40 + 16 for w in windows[:-1]) and len(windows) > 2
        chunks = [set((rows[w] // 16).tolist()) for w in windows]
        assert sum(map(len, chunks)) == len(set().union(*chunks))  # each store chunk in one window
        for w in windows:  # a window's documents come in store order (training shuffles them)
            x, y = data.read(w)
            np.testing.assert_array_equal(x.numpy(), hidden[np.sort(rows[w])])
            np.testing.assert_array_equal(y.numpy(), targets_all[np.sort(rows[w])])
        epochs.append(seen)
    assert not np.array_equal(epochs[0], epochs[1])  # another chunk order each epoch
    a, _ = train(chunked, rows, TrainOptions(k=4, epochs=3, seed=5, window=40))
    b, _ = train(chunked, rows, TrainOptions(k=4, epochs=3, seed=5, window=40))
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    whole, _ = train(chunked, rows, TrainOptions(k=4, epochs=3, seed=5))
    assert a.id != whole.id and not torch.equal(a.model.beta, whole.model.beta)
    # The window does not name a model that the whole corpus trains alike.
    again, _ = train(chunked, rows, TrainOptions(k=4, epochs=3, seed=5, window=0))
    assert again.id == whole.id


def test_windowed_training_resumes_from_its_checkpoint_bit_for_bit(chunked, monkeypatch):
    import st.train as train_mod

    rows = np.arange(chunked.rows)
    opts = TrainOptions(k=4, epochs=5, checkpoint_every=2, seed=1, window=48)
    whole, whole_losses = train(chunked, rows, TrainOptions(**{**opts.__dict__, "checkpoint_every": 0}))
    real = train_mod.save_checkpoint

    def interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_checkpoint", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(chunked, rows, opts)
    monkeypatch.setattr(train_mod, "save_checkpoint", real)
    resumed, losses = train(chunked, rows, opts)
    assert losses == whole_losses
    for (name, x), (_, y) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_theta_and_salience_read_a_chunk_at_a_time_equal_the_whole_computation(chunked):
    from scipy import sparse

    from st.train import fit, salience

    rows = np.arange(0, chunked.rows, 3)
    model, theta = fit(chunked, rows, TrainOptions(k=5, epochs=2, window=64))
    hidden = np.asarray(chunked.group["hidden"][:], dtype=np.float32)
    np.testing.assert_allclose(theta, model.theta(hidden), atol=1e-6)
    np.testing.assert_array_equal(chunked.array(f"theta/{model.id}"), theta)
    indptr, indices, data = (np.asarray(chunked.group[f"bow/{n}"][:]) for n in ("indptr", "indices", "data"))
    bow = sparse.csr_matrix((data, indices, indptr), shape=(chunked.rows, len(chunked.vocab())))
    # Salient words are counted by the encoder's own θ, before its mix with the kept documents'.
    own = model.theta(hidden, mixed=False)
    expected = salience(own[rows].astype(np.float64), bow[rows], model.topic_word())
    np.testing.assert_allclose(model.salience, expected, rtol=1e-5, atol=1e-7)


def test_logits_are_kept_in_float16_by_default_and_float32_on_request(store, tiny_model, cache_dir, tmp_path):
    path, _ = store
    half = Store(path)
    assert half.group["logits"].dtype == np.float16
    full = store_again(tmp_path / "f32.zarr", tiny_model, cache_dir, "--logits-dtype", "float32")
    assert full.group["logits"].dtype == np.float32
    # Rounding to nearest, as numpy casts: the float16 store holds the float32 logits rounded.
    np.testing.assert_array_equal(half.array("logits"), full.array("logits").astype(np.float16))
    # Both train (the soft label is computed in float64 either way).
    assert run_train("-k", "3", "--store", str(path), "--epochs", "2").exit_code == 0


def test_restarts_keep_the_training_with_the_lowest_objective(store, tmp_path):
    import st.train as train_mod

    path, _ = store
    s = Store(path)
    rows = np.arange(s.rows)
    opts = TrainOptions(k=4, epochs=3, seed=2, checkpoint_every=0)
    seeds = [train_mod.restart_seed(2, r) for r in range(3)]
    assert seeds[0] == 2 and len(set(seeds)) == 3
    # Another run's restarts share no training with this one's.
    assert not set(seeds) & {train_mod.restart_seed(3, r) for r in range(3)}
    data = train_mod.TrainingData.of(s, rows, opts)
    x, y = data.read(rows)
    singles, objectives = [], []
    for seed in seeds:
        single, _ = train_mod.fit_model(s, rows, TrainOptions(**{**opts.__dict__, "seed": seed}))
        model = single.model
        model.eval()
        with torch.no_grad():  # the objective, written out: KL to the prior + λ KL(target ‖ reconstruction)
            torch.manual_seed(0)
            mu, logvar = model.posterior(x)
            theta = torch.softmax(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar), dim=-1)
            log_recon = model.reconstruct(theta)
            kl_target = (y * (torch.log(y.clamp_min(1e-30)) - log_recon)).sum(-1)
            lam = float(train_mod.resolved(opts, len(rows)).lam or 0)
            objectives.append(float((model.kl_prior(mu, logvar) + lam * kl_target).mean()))
        singles.append(model)
    best, _ = train_mod.fit_model(s, rows, TrainOptions(**{**opts.__dict__, "restarts": 3}))
    winner = singles[int(np.argmin(objectives))]
    assert torch.equal(best.model.beta, winner.beta)
    assert best.config["training"]["restarts"] == 3
    assert best.id != train_mod.model_id(train_mod.resolved(opts, len(rows)), s, rows)
    r = run_train("-k", "4", "--store", str(path), "--epochs", "2", "--restarts", "2", "-o", str(tmp_path / "m"))
    assert r.exit_code == 0, r.output
    assert not list((path / "checkpoints").glob("*"))  # every restart's checkpoint removed once saved


def test_kmeans_init_starts_each_topic_at_one_cluster_of_the_inputs():
    from scipy import sparse
    from sklearn.cluster import KMeans

    import st.train as train_mod
    from st.store import MemoryCorpus

    # Three groups of documents, far apart in the inputs, each with its own dominant target word.
    rng = np.random.default_rng(0)
    n, groups, vocab, hidden = 90, 3, 12, 16
    group = np.repeat(np.arange(groups), n // groups)
    centres = rng.normal(0, 10, (groups, hidden))
    x = (centres[group] + rng.normal(0, 0.1, (n, hidden))).astype(np.float32)
    logits = rng.normal(0, 0.1, (n, vocab)).astype(np.float32)
    logits[np.arange(n), group] += 8.0  # group g's documents favour word g
    corpus = MemoryCorpus(
        {"temperature": 1.0},
        {
            "ids": np.array([str(i) for i in range(n)]),
            "vocab": np.array([f"w{i}" for i in range(vocab)]),
            "hidden": x,
            "logits": logits,
        },
        sparse.csr_matrix((n, vocab), dtype=np.float32),
    )
    opts = train_mod.resolved(TrainOptions(k=groups, init="kmeans", bow_weight=0.0, calibrate=False), n)
    data = train_mod.TrainingData.of(corpus, np.arange(n), opts)
    whole = data.read(np.arange(n))
    config = TopicConfig(input_size=hidden, vocab_size=vocab, k=groups, decoder_temperature=1.0)
    model = ProdLDA(config)
    clusters = train_mod.cluster_beta(model, data, whole, seed=0)
    standard = (x - x.mean(0)) / (x.std(0) + 1e-6)
    np.testing.assert_array_equal(clusters, KMeans(groups, n_init=4, random_state=0).fit_predict(standard))
    top = model.beta.argmax(dim=1).tolist()
    assert sorted(top) == list(range(groups))  # each group's word leads exactly one topic
    assert torch.allclose(model.beta.sum(0), torch.zeros(vocab), atol=1e-5)  # centred over the topics
    with pytest.raises(Exception, match="prodlda"):
        train_mod.fit_model(corpus, np.arange(n), TrainOptions(k=groups, init="kmeans", backbone="etm", epochs=1))


def test_cluster_weight_adds_the_weighted_cross_entropy_of_the_posterior_mean_and_the_cluster():
    torch.manual_seed(0)
    model = ProdLDA(TopicConfig(input_size=6, vocab_size=9, k=4, decoder_temperature=3.0))
    model.eval()  # no dropout, batch norm's running statistics: μ is a function of x alone
    x = torch.randn(7, 6)
    target = torch.softmax(torch.randn(7, 9), dim=-1)
    cluster = torch.tensor([0, 3, -1, 2, 2, 1, -1])  # −1: a document outside the sample k-means saw
    with torch.no_grad():
        torch.manual_seed(1)
        plain = float(model.loss(x, target, 1000.0, "kl"))
        torch.manual_seed(1)
        held = float(model.loss(x, target, 1000.0, "kl", (cluster, 30.0)))
        mu = model.posterior(x)[0].double().numpy()
    c = cluster.numpy()
    log_softmax = mu - np.log(np.exp(mu).sum(1, keepdims=True))
    expected = -sum(log_softmax[i, c[i]] for i in range(7) if c[i] >= 0) / 7  # summed over the held, per document
    assert held - plain == pytest.approx(30.0 * expected, rel=1e-4)


def test_cluster_weight_holds_theta_to_the_kmeans_clusters_the_topics_start_from():
    from scipy import sparse
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    import st.train as train_mod
    from st.store import MemoryCorpus

    # Four groups apart in the inputs, soft labels that say nothing about them.
    rng = np.random.default_rng(1)
    n, groups, vocab, hidden = 160, 4, 12, 16
    group = np.repeat(np.arange(groups), n // groups)
    x = (rng.normal(0, 3, (groups, hidden))[group] + rng.normal(0, 1, (n, hidden))).astype(np.float32)
    corpus = MemoryCorpus(
        {"temperature": 1.0},
        {
            "ids": np.array([str(i) for i in range(n)]),
            "vocab": np.array([f"w{i}" for i in range(vocab)]),
            "hidden": x,
            "logits": rng.normal(0, 1, (n, vocab)).astype(np.float32),
        },
        sparse.csr_matrix((n, vocab), dtype=np.float32),
    )
    standard = (x - x.mean(0)) / (x.std(0) + 1e-6)
    clusters = KMeans(groups, n_init=4, random_state=0).fit_predict(standard)  # the start's, computed apart
    agree = {}
    for weight in (0.0, 30.0):
        opts = TrainOptions(k=groups, layout="inputs", neighbours=0, cluster_weight=weight, epochs=40)
        fitted, _ = train_mod.fit_model(corpus, np.arange(n), opts)
        assert fitted.config["training"]["cluster_weight"] == weight
        main = fitted.theta_of(corpus).argmax(1)
        agree[weight] = float((main == clusters).mean())  # topic c is cluster c's: no matching needed
    assert agree[30.0] >= 0.95 > agree[0.0]
    assert adjusted_rand_score(group, clusters) > 0.9  # the clusters are the groups


def test_restarts_resume_without_training_a_finished_restart_again(store, monkeypatch):
    import st.train as train_mod

    path, _ = store
    s = Store(path)
    rows = np.arange(s.rows)
    opts = TrainOptions(k=4, epochs=4, seed=5, restarts=2, checkpoint_every=2)
    whole, _ = train_mod.fit_model(s, rows, TrainOptions(**{**opts.__dict__, "checkpoint_every": 0}))
    real, calls = train_mod.save_checkpoint, []

    def counted(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(args[0].name)
        if interrupt and len(calls) == 3:  # restart 0 at epoch 2 and finished; restart 1 at epoch 2
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_checkpoint", counted)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        train_mod.fit_model(s, rows, opts)
    interrupt, calls[:] = False, []
    resumed, _ = train_mod.fit_model(s, rows, opts)
    assert len(calls) == 1 and "restart1" in calls[0]  # only restart 1's last two epochs ran again
    assert torch.equal(resumed.model.beta, whole.model.beta)
    assert resumed.config["training"]["restart_objectives"] == whole.config["training"]["restart_objectives"]
    assert not list((path / "checkpoints").glob("*restart*"))


def test_theta_neighbours_mix_each_documents_theta_with_its_nearest_kept_documents(store, tiny_model, monkeypatch):
    from sklearn.neighbors import NearestNeighbors

    import st.train as train_mod

    path, _ = store
    s = Store(path)
    monkeypatch.setattr(train_mod, "THETA_MEMORY_ROWS", 80)  # keep a sample of the 200 titles
    monkeypatch.setattr(train_mod, "NEIGHBOUR_BLOCK", 7)  # mixed a few documents at a time: the same θ
    opts = TrainOptions(k=4, epochs=3, theta_neighbours=5, theta_neighbour_weight=0.3, layout="inputs")
    fitted, _ = train_mod.fit_model(s, np.arange(s.rows), opts)
    memory = fitted.memory
    assert memory is not None and len(memory.vectors) == 80
    x = np.asarray(s.group["hidden"][:], dtype=np.float32)
    own = fitted.theta(x, mixed=False)
    # The kept documents are those whose own θ the memory holds.
    kept = np.array([int(np.flatnonzero((own == t).all(1))[0]) for t in memory.theta])
    assert len(set(kept.tolist())) == 80
    hidden, cut = x.astype(np.float64), lm_size(tiny_model)
    np.testing.assert_allclose(memory.vectors, in_space(hidden[kept], hidden[kept], cut), atol=2e-3)  # float16
    index = NearestNeighbors(n_neighbors=5, metric="cosine").fit(memory.vectors.astype(np.float64))
    nearest = index.kneighbors(in_space(hidden, hidden[kept], cut), return_distance=False)
    expected = 0.7 * own + 0.3 * own[kept[nearest]].mean(1)
    np.testing.assert_allclose(fitted.theta(x), expected, atol=1e-5)
    # A kept document counts among its own nearest.
    assert all(i in nearest[kept[i]] for i in range(80))
    # θ of a document depends on it alone, not on the documents beside it (up to float rounding).
    np.testing.assert_allclose(fitted.theta(x[7:8]), fitted.theta(x)[7:8], atol=1e-6)


def test_theta_neighbours_are_saved_with_the_model_and_dsl_has_30(store, tmp_path):
    import st.train as train_mod

    path, _ = store
    s = Store(path)
    rows = np.arange(s.rows)
    assert train_mod.resolved(TrainOptions(k=4)).theta_neighbours == 30
    assert train_mod.resolved(TrainOptions(k=4, target="bow")).theta_neighbours == 0
    model, theta = train_mod.fit(s, None, TrainOptions(k=4, epochs=2, layout="inputs"), tmp_path / "m")
    assert model.memory is not None and model.memory.k == 30
    loaded, _ = load(str(tmp_path / "m"))
    assert loaded.memory is not None and loaded.memory.cut == model.memory.cut
    x = np.asarray(s.group["hidden"][:], dtype=np.float32)
    np.testing.assert_array_equal(loaded.theta(x), theta)  # θ written at training: the loaded model's
    assert not np.allclose(loaded.theta(x, mixed=False), theta, atol=1e-4)
    # The topics' words are salient by the documents' own θ.
    plain = train_mod.salience(loaded.theta(x, mixed=False), s.bow_rows(0, s.rows), loaded.topic_word())
    np.testing.assert_allclose(loaded.salience, plain, atol=1e-5)
    # Without the option, no memory is kept and the ids of the models trained before it stay.
    bare, _ = train_mod.fit(s, None, TrainOptions(k=4, epochs=2, layout="inputs", theta_neighbours=0), tmp_path / "b")
    assert bare.memory is None and load(str(tmp_path / "b"))[0].memory is None
    ids = {
        w: train_mod.model_id(
            train_mod.resolved(TrainOptions(k=4, theta_neighbours=0, theta_neighbour_weight=w)), s, rows
        )
        for w in (0.5, 0.2)
    }
    assert ids[0.5] == ids[0.2] != train_mod.model_id(train_mod.resolved(TrainOptions(k=4)), s, rows)
    for flags in (["--theta-neighbours", "-1"], ["--theta-neighbours", "5", "--backbone", "lda"]):
        r = run_train("-k", "3", "--store", str(path), "--epochs", "2", *flags)
        assert r.exit_code != 0 and "--theta-neighbours" in r.output and "Traceback" not in r.output
