"""Bad input never produces a traceback: generated inputs with one bad line, for every command
that reads documents or records. (Part of `pytest -k reliability`.)"""

from __future__ import annotations

import json

import orjson
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from st.cli import cli

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
        args += ["--model", str(tiny_model), "-o", str(tmp_path / "never.zarr")]
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
