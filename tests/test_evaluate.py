"""Metrics on hand-checked cases and against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics.cluster import contingency_matrix

from st import metrics as ev
from st.errors import InputError


def naive_kl_ranking(theta: np.ndarray, i: int) -> list[int]:
    """The common implementation: a vector of KL to all others, then a stable argsort."""
    p = theta[i]
    d = np.array([np.sum(p * (np.log(p) - np.log(q))) if j != i else np.inf for j, q in enumerate(theta)])
    return [int(j) for j in np.argsort(d, kind="stable") if j != i]


def naive_js(p: np.ndarray, q: np.ndarray) -> float:
    m = (p + q) / 2
    return 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))


def test_precision_at_k_equals_a_naive_double_loop():
    rng = np.random.default_rng(0)
    theta = rng.dirichlet(np.ones(6) * 0.5, size=60)
    labels = rng.integers(0, 4, size=60)
    expected = {}
    for k in (1, 5, 10):
        expected[k] = np.mean([np.mean(labels[naive_kl_ranking(theta, i)[:k]] == labels[i]) for i in range(60)])
    got = ev.precision_at(theta, labels, (1, 5, 10))
    assert got == pytest.approx(expected, abs=1e-12)
    for i in (0, 17, 59):
        assert ev.nearest(theta, np.array([i]), 59, block=7)[0].tolist() == naive_kl_ranking(theta, i)


def test_js_ranking_equals_naive():
    rng = np.random.default_rng(1)
    theta = rng.dirichlet(np.ones(5), size=30)
    for i in (0, 12):
        d = [naive_js(theta[i], theta[j]) if j != i else np.inf for j in range(30)]
        expected = [int(j) for j in np.argsort(d, kind="stable")[:8]]
        assert ev.nearest(theta, np.array([i]), 8, divergence="js").tolist()[0] == expected


def test_clustering_scores_equal_scikit_learn_and_hand_checked_cases():
    rng = np.random.default_rng(2)
    pred, gold = rng.integers(0, 7, 500), rng.integers(0, 5, 500)
    table = contingency_matrix(gold, pred)
    assert ev.purity(pred, gold) == pytest.approx(table.max(axis=0).sum() / 500)
    assert ev.inverse_purity(pred, gold) == pytest.approx(table.max(axis=1).sum() / 500)
    separated = np.array([0, 0, 1, 1])
    assert ev.purity(separated, np.array(["a", "a", "b", "b"])) == 1.0
    assert ev.harmonic_purity(np.zeros(4, int), np.array(["a", "a", "b", "b"])) == pytest.approx(2 * 0.5 / 1.5)


def test_diversity_and_rbo():
    same = [["a", "b", "c"]] * 4
    assert ev.topic_diversity(same, topn=3) == pytest.approx(1 / 4)
    assert ev.topic_diversity([["a", "b"], ["c", "d"]], topn=2) == 1.0
    assert ev.rbo(["a", "b", "c"], ["a", "b", "c"]) == pytest.approx(1.0)
    assert ev.rbo(["a", "b", "c"], ["d", "e", "f"]) == 0.0
    assert ev.inverted_rbo(same) == pytest.approx(0.0)
    # Hand-computed: one shared word at depth 1 only, p = 0.9, k = 2.
    x1, x2 = 1, 1
    expected = x2 / 2 * 0.9**2 + (0.1 / 0.9) * (x1 / 1 * 0.9 + x2 / 2 * 0.9**2)
    assert ev.rbo(["a", "b"], ["a", "c"]) == pytest.approx(expected)


def test_coherence_is_gensims():
    from gensim.corpora import Dictionary
    from gensim.models.coherencemodel import CoherenceModel

    texts = [
        ["apple", "banana", "fruit"],
        ["apple", "fruit", "juice"],
        ["car", "engine", "wheel"],
        ["car", "wheel", "road"],
        ["banana", "juice", "fruit"],
        ["engine", "road", "car"],
    ] * 3
    topics = [["apple", "fruit", "banana", "juice"], ["car", "engine", "wheel", "road"]]
    d = Dictionary(texts)
    for measure in ("c_npmi", "c_v"):
        ref = CoherenceModel(topics=topics, texts=texts, dictionary=d, coherence=measure, topn=4).get_coherence()
        assert ev.coherence(topics, texts, measure, topn=4) == pytest.approx(ref, abs=1e-6)
    assert ev.coherence([["apple", "zzz", "fruit"]], texts, "c_npmi", topn=3) == pytest.approx(
        CoherenceModel(
            topics=[["apple", "fruit"]], texts=texts, dictionary=d, coherence="c_npmi", topn=2
        ).get_coherence()
    )


def test_metric_names_and_balanced_subsets():
    assert ev.parse_metrics("npmi, P@10") == ["npmi", "p@10"]
    with pytest.raises(InputError, match="valid: npmi, cv"):
        ev.parse_metrics("npmi,bogus")
    labels = np.array(["a"] * 10 + ["b"] * 3 + ["c"] * 5)
    sub = ev.balanced_subset(labels, 9)
    assert sorted(np.unique(labels[sub], return_counts=True)[1].tolist()) == [3, 3, 3]


def test_eval_command(store, tmp_path, cache_dir):
    import orjson
    from click.testing import CliRunner

    from st.cli import cli

    path, _ = store
    runner = CliRunner()
    for k in ("3", "4"):
        r = runner.invoke(cli, ["train", "-q", "-k", k, "--store", str(path), "--epochs", "2", "-o", str(tmp_path / k)])
        assert r.exit_code == 0, r.output
    r = runner.invoke(
        cli,
        [
            "eval",
            "-q",
            "--store",
            str(path),
            "-m",
            str(tmp_path / "3"),
            "-m",
            str(tmp_path / "4"),
            "--metrics",
            "npmi,cv,td,irbo,purity,nmi,ari,p@1,p@10",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = [orjson.loads(x) for x in r.stdout_bytes.splitlines()]
    assert [row["k"] for row in rows] == [3, 4] and all(row["documents"] == 200 for row in rows)
    for row in rows:
        assert -1 <= row["npmi"] <= 1 and 0 < row["td"] <= 1 and 0 <= row["p@1"] <= 1
        assert set(row) == {
            "model",
            "k",
            "documents",
            "npmi",
            "cv",
            "td",
            "irbo",
            "purity",
            "nmi",
            "ari",
            "p@1",
            "p@10",
        }
    # Clustering scores equal scikit-learn called directly on the stored θ and the records' labels.
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from st.store import Store
    from st.train import load

    s = Store(path)
    theta = np.asarray(s.group[f"theta/{load(str(tmp_path / '3'))[0].id}"][:])
    gold = [orjson.loads(r)["label"] for r in s.array("records")]
    assert rows[0]["nmi"] == pytest.approx(normalized_mutual_info_score(gold, theta.argmax(1)), abs=1e-6)
    assert rows[0]["ari"] == pytest.approx(adjusted_rand_score(gold, theta.argmax(1)), abs=1e-6)
    r = runner.invoke(
        cli, ["eval", "--store", str(path), "-m", str(tmp_path / "3"), "--metrics", "td", "--format", "table"]
    )
    assert r.exit_code == 0 and "st eval" in r.stdout and "td" in r.stdout
    r = runner.invoke(cli, ["eval", "--store", str(path), "-m", str(tmp_path / "3"), "--metrics", "purity,bogus"])
    assert r.exit_code == 2 and "valid: npmi" in r.output


def test_eval_without_labels_or_theta(tiny_model, cache_dir, tmp_path):
    import orjson
    from click.testing import CliRunner

    from st.cli import cli

    src = tmp_path / "d.jsonl"
    words = "apache server linux windows oracle database query table java spring".split()
    src.write_bytes(b"".join(orjson.dumps({"text": " ".join(words[i % 10 : i % 10 + 3])}) + b"\n" for i in range(30)))
    runner = CliRunner()
    store = tmp_path / "s.zarr"
    args = ["--lm", str(tiny_model), "--cache-dir", str(cache_dir), "-q"]
    assert runner.invoke(cli, ["softlabel", str(src), "-o", str(store), *args]).exit_code == 0
    assert (
        runner.invoke(
            cli, ["train", "-q", "-k", "2", "--store", str(store), "--epochs", "1", "-o", str(tmp_path / "m")]
        ).exit_code
        == 0
    )
    r = runner.invoke(cli, ["eval", "--store", str(store), "-m", str(tmp_path / "m"), "--metrics", "td,purity,p@5"])
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout_bytes.splitlines()[0]).keys() == {"model", "k", "documents", "td"}
    assert "purity, NMI, ARI and P@k are left out" in r.stderr
    other = tmp_path / "other.zarr"
    assert runner.invoke(cli, ["softlabel", str(src), "-o", str(other), *args]).exit_code == 0
    r = runner.invoke(cli, ["eval", "--store", str(other), "-m", str(tmp_path / "m")])
    assert r.exit_code == 2 and "train the model on this store first" in r.output


def test_llm_rating_equals_transformers_called_directly(tiny_model, cache_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from st.cache import Cache
    from st.lm import LM

    topics = [["apache", "server", "config", "module"], ["excel", "cell", "formula", "sheet"]]
    lm = LM(str(tiny_model), device="cpu", dtype="float32", cache_dir=cache_dir)
    got = ev.llm_rating(topics, lm, Cache(cache_dir), topn=4)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    digits = [tok.encode(d, add_special_tokens=False)[-1] for d in "123"]
    for topic, rating in zip(topics, got, strict=True):
        question = ev.RATING_QUESTION.format(words=", ".join(topic))
        text = tok.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        with torch.no_grad():
            logits = model(**tok(text, return_tensors="pt")).logits[0, -1, digits]
        expected = float(
            (torch.softmax(logits.double(), -1) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum()
        )
        assert rating == pytest.approx(expected, abs=1e-5) and 1 <= rating <= 3
