"""st search: rankings equal a naive computation; every way of asking works."""

from __future__ import annotations

import numpy as np
import orjson
from click.testing import CliRunner

from st import ranking as search
from st.cli import cli
from st.store import Store
from st.train import load
from tests.test_evaluate import naive_js, naive_kl_ranking


def test_rank_equals_naive_kl_and_js():
    rng = np.random.default_rng(3)
    theta = rng.dirichlet(np.ones(5) * 0.3, size=80)
    idx, d = search.rank(theta, theta[7], 79, "kl", exclude=7)
    assert idx.tolist() == naive_kl_ranking(theta, 7)
    q = rng.dirichlet(np.ones(5))
    idx, d = search.rank(theta, q, 10, "js")
    naive = [naive_js(q, t) for t in theta]
    assert idx.tolist() == np.argsort(naive, kind="stable")[:10].tolist()
    np.testing.assert_allclose(d, np.sort(naive)[:10], atol=1e-12)
    top, scores = search.rank_topic(theta, 2, 5)
    assert top.tolist() == np.argsort(-theta[:, 2], kind="stable")[:5].tolist()


def test_search_command(store, tmp_path, cache_dir):
    path, _ = store
    runner = CliRunner()
    r = runner.invoke(cli, ["train", "-q", "-k", "4", "--store", str(path), "--epochs", "2", "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    theta = np.asarray(Store(path).group[f"theta/{load(str(tmp_path / 'm'))[0].id}"][:])
    base = ["search", "-q", "-m", str(tmp_path / "m"), "--store", str(path), "--cache-dir", str(cache_dir)]
    ids = Store(path).ids()
    r = runner.invoke(cli, [*base, "--like", ids[5], "-n", "7", "--snippet", "10"])
    assert r.exit_code == 0, r.output
    hits = [orjson.loads(x) for x in r.stdout_bytes.splitlines()]
    assert [h["id"] for h in hits] == [ids[j] for j in naive_kl_ranking(theta.astype(np.float64), 5)[:7]]
    assert all(
        len(h["text"]) <= 10 and "label" in h and h["topic"] == int(theta[ids.index(h["id"])].argmax()) for h in hits
    )
    r = runner.invoke(cli, [*base, "--topic", "2", "-n", "3"])
    assert [orjson.loads(x)["id"] for x in r.stdout_bytes.splitlines()] == [
        ids[j] for j in np.argsort(-theta[:, 2], kind="stable")[:3]
    ]
    r = runner.invoke(cli, [*base, "How do I configure apache virtual hosts?", "-n", "4"])
    assert r.exit_code == 0, r.output
    assert len(r.stdout_bytes.splitlines()) == 4
    for args, message in [
        ([], "exactly one of"),
        (["--like", "nope"], "no document with id"),
        (["--topic", "9"], "topics 0 to 3"),
        (["x", "--topic", "1"], "exactly one of"),
    ]:
        r = runner.invoke(cli, [*base, *args])
        assert r.exit_code == 2 and message in r.output, r.output


def test_search_and_the_eval_rater_pass_trust_remote_code_through(store, tmp_path, cache_dir, tiny_model, monkeypatch):
    """The LM that `st search` encodes a query with, and `st eval`'s rater, load with remote code
    only when asked (--trust-remote-code), like every other command that loads an LM."""
    from st import lm as lm_module

    path, _ = store
    runner = CliRunner()
    r = runner.invoke(cli, ["train", "-q", "-k", "3", "--store", str(path), "--epochs", "1", "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    seen: list[bool] = []
    real_init = lm_module.LM.__init__

    def init(self, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code", False))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(lm_module.LM, "__init__", init)
    base = ["-q", "-m", str(tmp_path / "m"), "--store", str(path), "--cache-dir", str(cache_dir)]
    for query, flag in (("apache virtual hosts", []), ("python list sorting", ["--trust-remote-code"])):
        # Another query each time: a cached one needs no LM loaded at all.
        r = runner.invoke(cli, ["search", *base, query, *flag])
        assert r.exit_code == 0, r.output
        r = runner.invoke(cli, ["eval", *base, "--metrics", "td", "--llm-rating", "--rater", str(tiny_model), *flag])
        assert r.exit_code == 0, r.output
    assert seen == [False, False, True, True]
