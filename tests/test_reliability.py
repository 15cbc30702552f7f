"""Bad input never produces a traceback: generated inputs with one bad line, for every command
that reads documents or records. (Part of `pytest -k reliability`.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from st.cli import cli
from tests.conftest import EXAMPLES, st_env, st_exe

good_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40).filter(
    lambda t: t.strip() != ""
)
good_line = st.builds(
    lambda t, i: orjson.dumps({"id": f"g{i}", "text": t + " apache server"}), good_text, st.integers(0, 10**9)
)
bad_line = st.one_of(
    st.just(b'{"text": oops}'),
    st.just(b'{"body": "no text field"}'),
    st.builds(lambda v: json.dumps({"text": v}).encode(), st.one_of(st.integers(), st.none(), st.lists(st.integers()))),
    st.builds(
        lambda v: json.dumps({"id": v, "text": "x y z"}).encode(),
        st.one_of(st.floats(allow_nan=False), st.lists(st.integers()), st.booleans()),
    ),
    st.just(b'{"text": "caf\xe9 au lait"}'),
    st.just(b"[1, 2, 3]"),
    st.just(b'"just a string"'),
)


@st.composite
def inputs_with_one_bad_line(draw):
    before = draw(st.lists(good_line, max_size=5, unique=True))
    bad = draw(bad_line)
    after = draw(st.lists(good_line, max_size=3, unique=True))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    bom = draw(st.sampled_from([b"", b"\xef\xbb\xbf"]))
    return bom + ending.join([*before, bad, *after]) + ending, len(before) + 1


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=inputs_with_one_bad_line(), command=st.sampled_from(["vocab", "softlabel", "embed"]))
def test_reliability_bad_documents_exit_2_with_the_line(data, command, tiny_model, cache_dir, tmp_path):
    content, line = data
    args = [command, "-", "--cache-dir", str(cache_dir)]
    if command != "vocab":
        args += ["--lm", str(tiny_model), "-o", str(tmp_path / "never.zarr")]
    result = CliRunner().invoke(cli, args, input=content)
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"<stdin>:{line}:" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "never.zarr").exists()  # the first chunk is checked before anything is written


@settings(max_examples=30, deadline=None, derandomize=True)
@given(content=st.one_of(st.binary(max_size=200), inputs_with_one_bad_line().map(lambda d: d[0])))
def test_reliability_train_rejects_anything_but_records(content):
    result = CliRunner().invoke(cli, ["train", "-k", "2", "-q"], input=content)
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stdout == ""


@pytest.fixture
def trained(store, tmp_path) -> tuple[Path, Path]:
    path, _ = store
    r = CliRunner().invoke(
        cli, ["train", "-q", "-k", "3", "--store", str(path), "--epochs", "1", "-o", str(tmp_path / "m")]
    )
    assert r.exit_code == 0, r.output
    return path, tmp_path / "m"


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=inputs_with_one_bad_line(), command=st.sampled_from(["infer", "eval"]))
def test_reliability_infer_and_eval_reference_refuse_bad_documents(data, command, trained, cache_dir, tmp_path):
    content, line = data
    store, model = trained
    if command == "infer":
        result = CliRunner().invoke(cli, ["infer", "-m", str(model), "-", "--cache-dir", str(cache_dir)], input=content)
        where = f"<stdin>:{line}:"
    else:
        reference = tmp_path / "reference.jsonl"
        reference.write_bytes(content)
        result = CliRunner().invoke(
            cli, ["eval", "--store", str(store), "-m", str(model), "--metrics", "npmi", "--reference", str(reference)]
        )
        where = f"{reference}:{line}:"
    assert result.exit_code == 2, (result.output, result.exception)
    assert where in result.stderr and result.stdout == ""


def run_st(args: list[str], cache_dir: Path, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([st_exe(), *args], input=stdin, capture_output=True, env=st_env(cache_dir), timeout=300)


def assert_one_clear_line(r: subprocess.CompletedProcess, code: int, *words: str) -> None:
    err = r.stderr.decode()
    assert r.returncode == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert r.stdout == b""


def set_store_attr(store: Path, **attrs: object) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"].update(attrs)
    (store / "zarr.json").write_text(json.dumps(meta))


def test_reliability_damaged_stores_and_models_for_every_reader(trained, cache_dir, tmp_path):
    import shutil

    import numpy as np
    import zarr

    store, model = trained
    model_id = json.loads((model / "config.json").read_text())["id"]
    readers = {
        "train": ["train", "-k", "3", "--epochs", "1", "--store", "{s}"],
        "eval": ["eval", "--store", "{s}", "-m", str(model), "--metrics", "td,purity"],
        "search": ["search", "--store", "{s}", "-m", str(model), "--topic", "0"],
    }

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(store, target)
        return target

    other_version = copy("v2.zarr")
    set_store_attr(other_version, version=99)
    truncated = copy("truncated.zarr")
    (truncated / "zarr.json").write_text((truncated / "zarr.json").read_text()[:50])
    unfinished = copy("unfinished.zarr")
    set_store_attr(unfinished, complete=False)
    for damaged, message in [
        (other_version, "format version 99"),
        (truncated, "not a readable st store"),
        (unfinished, "incomplete"),
        (tmp_path / "missing.zarr", "no such store"),
    ]:
        for args in readers.values():
            r = run_st([a.format(s=damaged) for a in args], cache_dir)
            assert_one_clear_line(r, 2, str(damaged.name), message)
    # NaN or Inf inside a store's arrays is named with its row, never trained on or ranked by.
    nan_logits = copy("nan-logits.zarr")
    zarr.open_group(str(nan_logits))["logits"][7, 3] = np.nan
    assert_one_clear_line(run_st(readers["train"][:-1] + [str(nan_logits)], cache_dir), 2, "row 7", "NaN or Inf")
    nan_theta = copy("nan-theta.zarr")
    zarr.open_group(str(nan_theta))[f"theta/{model_id}"][4, 1] = np.inf
    for name in ("eval", "search"):
        r = run_st([a.format(s=nan_theta) for a in readers[name]], cache_dir)
        assert_one_clear_line(r, 2, "row 4", "NaN or Inf")
    # A model folder with missing or damaged weights, for every command that loads one.
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 10)
    for args in (
        ["infer", "-m", str(broken), str(EXAMPLES)],
        ["eval", "--store", str(store), "-m", str(broken)],
        ["search", "--store", str(store), "-m", str(broken), "--topic", "0"],
        ["label", "--store", str(store), "-m", str(broken)],
        ["report", "--store", str(store), "-m", str(broken), "-o", str(tmp_path / "r.html")],
    ):
        assert_one_clear_line(run_st(args, cache_dir), 2, "model.safetensors")
    (broken / "model.safetensors").unlink()
    assert_one_clear_line(run_st(["infer", "-m", str(broken), str(EXAMPLES)], cache_dir), 2, "model.safetensors")


@pytest.mark.parametrize("command", ["vocab", "softlabel", "train", "infer", "eval"])
def test_reliability_a_100_mb_line_is_refused_at_once(command, trained, cache_dir, tmp_path, tiny_model):
    store, model = trained
    huge = tmp_path / "huge.jsonl"
    from st.records import dumps, with_store_ref

    first = dumps(with_store_ref({"id": "a", "text": "short"}, str(store), 0))
    with open(huge, "wb") as f:
        f.write(first + b'\n{"id": "b", "text": "')
        f.write(b"word " * (20 << 20))
        f.write(b'"}\n')
    args = {
        "vocab": ["vocab", str(huge)],
        "softlabel": ["softlabel", str(huge), "--lm", str(tiny_model), "-o", str(tmp_path / "never.zarr")],
        "train": ["train", "-k", "2", str(huge)],
        "infer": ["infer", "-m", str(model), str(huge)],
        "eval": ["eval", "--store", str(store), "-m", str(model), "--metrics", "npmi", "--reference", str(huge)],
    }[command]
    r = run_st(args, cache_dir)
    assert_one_clear_line(r, 2, f"{huge}:2:", "line longer than")
    assert not (tmp_path / "never.zarr").exists()


def test_reliability_a_model_folder_with_code_is_not_run_without_trust_remote_code(
    embedded_folder, cache_dir, tmp_path
):
    """A model folder that asks for its own Python (auto_map) is refused; its code never runs."""
    import shutil

    evil = tmp_path / "evil-model"
    evil.mkdir()
    for f in embedded_folder.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".txt") or f.name == "special_tokens_map.json":
            shutil.copy(f, evil / f.name)
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(evil / "model.safetensors"))
    marker = tmp_path / "code-ran"
    (evil / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    (evil / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "architectures": ["EvilModel"],
                "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
            }
        )
    )
    r = run_st(["softlabel", str(EXAMPLES), "--lm", str(evil), "-o", str(tmp_path / "s.zarr"), "-q"], cache_dir)
    assert r.returncode != 0 and "Traceback" not in r.stderr.decode() and r.stdout == b""
    assert len(r.stderr.decode().strip().splitlines()) == 1, r.stderr
    assert not marker.exists()
