"""The Python API: the example runs and gives the command line's θ and topics; the library prints
nothing, raises plain exceptions, reports progress to a callback, and imports no click."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import zarr

from tests.conftest import EXAMPLES, ROOT, read_jsonl, st_env, st_exe


def test_python_api_example_gives_the_cli_theta_and_topics(tiny_model, cache_dir, tmp_path):
    out = tmp_path / "api.npz"
    flags = ["--lm", str(tiny_model), "--dtype", "float32", "--k", "4", "--epochs", "5", "--vocab-size", "300"]
    example = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py"), *flags, "--out", str(out)],
        capture_output=True,
        env=st_env(cache_dir),
        timeout=600,
    )
    assert example.returncode == 0, example.stderr.decode()
    assert b"topic 0:" in example.stdout
    api = np.load(out)

    rows = read_jsonl(EXAMPLES)
    seen, new = tmp_path / "seen.jsonl", tmp_path / "new.jsonl"
    seen.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows[:150]))
    new.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows[150:]))
    env = st_env(cache_dir)

    def st(*args: str) -> bytes:
        r = subprocess.run([st_exe(), *args, "-q"], capture_output=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout

    lm = ["--lm", str(tiny_model), "--dtype", "float32"]
    st("softlabel", str(seen), "-o", str(tmp_path / "s.zarr"), "-t", "3", "--vocab-size", "300", *lm)
    topics = [
        orjson.loads(x)
        for x in st(
            "train",
            "--store",
            str(tmp_path / "s.zarr"),
            "-k",
            "4",
            "--epochs",
            "5",
            "--seed",
            "0",
            "-o",
            str(tmp_path / "m"),
        ).splitlines()
    ]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert str(api["id"]) == config["id"]
    assert json.loads(str(api["topics"])) == topics
    theta = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")[f"theta/{config['id']}"][:]
    np.testing.assert_allclose(api["theta"], theta, rtol=0, atol=1e-6)
    inferred = np.asarray(
        [orjson.loads(x)["theta"] for x in st("infer", "-m", str(tmp_path / "m"), str(new)).splitlines()]
    )
    np.testing.assert_allclose(api["theta_new"], inferred, rtol=0, atol=1e-6)


def test_the_library_prints_nothing_and_reports_progress_to_a_callback(tiny_model, cache_dir, capsys):
    import st

    events: list[st.Progress] = []
    lm = st.LM(str(tiny_model), dtype="float32", cache_dir=cache_dir)
    texts = [r["text"] for r in read_jsonl(EXAMPLES, 60)]
    corpus = st.softlabel(texts, lm=lm, vocab_size=100, progress=events.append)
    assert corpus.path is None and len(corpus) == 60
    assert corpus.soft_label().shape == (60, len(corpus.vocab()))
    np.testing.assert_allclose(corpus.soft_label().sum(axis=1), 1, atol=1e-5)
    model = st.ProdLDA(k=3, epochs=2, progress=events.append)
    theta = model.fit_transform(corpus)
    assert theta.shape == (60, 3) and model.options.target == "bow"
    assert model.beta.shape == (3, len(corpus.vocab()))
    captured = capsys.readouterr()
    assert captured.out == ""
    tasks = {e.task for e in events}
    assert {"st softlabel", "st train"} <= tasks
    assert any(e.finished and e.task == "st train" and e.done == 2 for e in events)


def test_library_errors_are_plain_exceptions_that_name_keyword_arguments():
    import st
    from st.errors import InputError, UsageError

    with pytest.raises(UsageError) as e:
        st.DSL(k=1)
    assert str(e.value) == "K must be at least 2 (k=)"
    with pytest.raises(UsageError) as e:
        st.DSL(k=3, topk=5, sparsity=0.5)
    assert "topk= and sparsity= both" in str(e.value) and "--topk" in e.value.message
    with pytest.raises(TypeError, match="unexpected option 'tempreature'"):
        st.softlabel(["a"], tempreature=3)
    with pytest.raises(InputError, match="no documents"):
        st.softlabel(["", "  "])
    assert not issubclass(InputError, __import__("click").ClickException)


def test_importing_st_loads_neither_torch_nor_click():
    code = "import sys, st; st.__version__; print(sorted(m for m in ('torch', 'click') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_click_is_imported_by_the_command_line_only():
    for path in sorted((ROOT / "st").glob("*.py")):
        if path.name == "cli.py":
            continue
        assert not re.search(r"^\s*(import click|from click)", path.read_text(), re.M), path.name


def test_every_option_is_declared_once():
    """Every command's option that the library also takes comes from its one declaration in
    st.options: the same default and the same flags wherever it appears, and no command declares
    such an option by hand."""
    import dataclasses

    import click

    from st import options
    from st.cli import cli

    declared = {}
    for group in options.Options.__subclasses__():
        for f, spec in options.fields(group):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            declared.setdefault(f.name, []).append(
                (default.replace("\n", "\\n") if f.name == "template" else default, spec.flags)
            )
    shared = 0
    for name, command in cli.commands.items():
        for param in command.params:
            if not isinstance(param, click.Option) or param.name not in declared or param.hidden:
                continue
            if name == "train" and param.name == "output":
                continue  # st train's -o is the model folder, not a store
            flags = tuple(f for f in param.opts + param.secondary_opts if not f.startswith("--no-"))
            assert (param.default, flags) in declared[param.name], (name, param.name)
            shared += 1
    assert shared > 60


def test_corpora_in_a_store_and_in_memory_agree(tiny_model, cache_dir, tmp_path):
    import st

    lm = st.LM(str(tiny_model), dtype="float32", cache_dir=cache_dir)
    docs = read_jsonl(EXAMPLES, 40)
    memory = st.softlabel(docs, lm=lm, vocab_size=80)
    stored = st.softlabel(docs, lm=lm, vocab_size=80, store=tmp_path / "s.zarr")
    assert isinstance(stored, st.Store) and Path(stored.path) == (tmp_path / "s.zarr").absolute()
    for name in ("hidden", "logits"):
        np.testing.assert_array_equal(memory.array(name), stored.array(name))
    assert memory.ids() == stored.ids() and memory.records() == stored.records()
    assert (memory.bow() != stored.bow()).nnz == 0
    embedded = st.embed([d["text"] for d in docs], lm=lm)
    lm_alone = st.softlabel(docs, lm=lm, vocab_size=80, embedder="none")
    np.testing.assert_array_equal(embedded.array("hidden"), lm_alone.array("hidden"))
    np.testing.assert_array_equal(lm_alone.array("logits"), memory.array("logits"))


def test_a_loaded_model_loads_its_lm_once_for_every_transform(store, cache_dir, tmp_path, monkeypatch):
    import st
    from st import lm as lm_module

    path, _ = store
    monkeypatch.setenv("ST_CACHE_DIR", str(cache_dir))
    corpus = st.open_store(path)
    model = st.DSL(k=3, epochs=1).fit(corpus, output=tmp_path / "m")
    loads: list[str] = []
    real_init = lm_module.LM.__init__

    def init(self, *args, **kwargs):
        loads.append(str(args[0] if args else kwargs.get("model")))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(lm_module.LM, "__init__", init)
    again = st.load(tmp_path / "m")
    first = again.transform(["apache virtual hosts", "qt widgets"])
    second = again.transform(["apache virtual hosts"])
    assert len(loads) == 1
    np.testing.assert_allclose(second[0], first[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(again.transform(corpus), model.theta_, rtol=0, atol=1e-6)
