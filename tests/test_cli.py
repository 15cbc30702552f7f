"""The command-line contract every st command keeps: input from a file, `-` or stdin; data only
on stdout; one line on stderr and exit code 2 for bad input; never a traceback."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest
import zarr
from click.testing import CliRunner

from st.cli import cli
from st.store import Store
from tests.conftest import read_jsonl, st_env, st_exe

ENCODERS = ["softlabel", "embed"]


def run_st(args: list[str], cache: Path, stdin: bytes | None = None, cwd: Path | None = None):
    return subprocess.run([st_exe(), *args], input=stdin, capture_output=True, env=st_env(cache), cwd=cwd, timeout=600)


def model_args(tiny_model: Path, cache_dir: Path) -> list[str]:
    return ["--lm", str(tiny_model), "--cache-dir", str(cache_dir), "--dtype", "float32"]


@pytest.mark.parametrize("command", ENCODERS)
def test_stdin_dash_and_file_give_the_same_records(command, tiny_model, cache_dir, so_docs, tmp_path):
    runner = CliRunner()
    args = [command, *model_args(tiny_model, cache_dir), "-q"]
    data = so_docs.read_bytes()
    outs = []
    for i, extra in enumerate([[], ["-"], [str(so_docs)]]):
        store = tmp_path / f"s{i}.zarr"
        result = runner.invoke(cli, [*args, *extra, "-o", str(store)], input=data if extra != [str(so_docs)] else None)
        assert result.exit_code == 0, result.output
        lines = result.stdout_bytes.splitlines()
        outs.append([orjson.loads(x) for x in lines])
        for rec in outs[-1]:
            assert rec["_st"]["store"] == str(store)
            rec.pop("_st")
    assert outs[0] == outs[1] == outs[2] == read_jsonl(so_docs)


def test_records_keep_order_fields_and_point_at_their_rows(tiny_model, cache_dir, tmp_path):
    docs = [
        {"text": "Why is my apache server slow?", "label": "apache", "extra": {"a": [1, 2]}, "n": 1.5},
        {"id": 7, "text": "Hibernate lazy loading exception", "_st": {"store": "elsewhere", "row": 99}},
        {"id": "x", "text": "Qt signals and slots across threads", "label": None},
    ]
    src = tmp_path / "d.jsonl"
    src.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    store = tmp_path / "d.zarr"
    result = CliRunner().invoke(
        cli, ["softlabel", *model_args(tiny_model, cache_dir), str(src), "-o", str(store), "-q"]
    )
    assert result.exit_code == 0, result.output
    out = [orjson.loads(x) for x in result.stdout_bytes.splitlines()]
    assert [r["_st"] for r in out] == [{"store": str(store), "row": i} for i in range(3)]
    for doc, rec in zip(docs, out, strict=True):
        expected = {k: v for k, v in doc.items() if k != "_st"}
        assert {k: v for k, v in rec.items() if k != "_st"} == expected  # unchanged, nothing added
    s = Store(store)
    assert s.ids() == ["0", "7", "x"]  # default id: the 0-based line number
    assert [orjson.loads(r) for r in s.array("records")] == docs
    assert s.attrs["complete"] and s.rows == 3
    # The LM's hidden state (64) and MiniLM's embedding (384) side by side.
    assert s.array("logits").shape == (3, len(s.vocab())) and s.array("hidden").shape == (3, 64 + 384)
    bow = s.bow().toarray()
    vocab = s.vocab()
    assert bow[0, vocab.index("apache")] == 1 and bow[1, vocab.index("hibernate")] == 1


def test_store_attributes_describe_what_made_it(tiny_model, cache_dir, so_docs, tmp_path):
    store = tmp_path / "s.zarr"
    result = CliRunner().invoke(
        cli,
        [
            "softlabel",
            *model_args(tiny_model, cache_dir),
            str(so_docs),
            "-o",
            str(store),
            "-t",
            "5",
            "--max-tokens",
            "64",
            "--instruction",
            "Name the topic.",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    assert attrs["format"] == "st-store" and attrs["version"] == 1
    assert attrs["temperature"] == 5 and attrs["max_tokens"] == 64
    assert attrs["prompt"] == {
        "instruction": "Name the topic.",
        "template": "{instruction}\n\nDocument: {document}\n\nTopic:",
    }
    assert attrs["lm"]["model"] == str(tiny_model) and len(attrs["lm"]["fingerprint"]) == 16
    from st.vocab import fingerprint

    assert attrs["vocab_fingerprint"] == fingerprint(Store(store).vocab())


def test_vocab_file_and_lines_mode(tiny_model, cache_dir, tmp_path):
    src = tmp_path / "plain.txt"
    src.write_text("apache server configuration\nhibernate session mapping\n\nqt widget layout\n")
    voc = tmp_path / "v.json"
    voc.write_text('["apache", "hibernate", "widget", "missing"]')
    store = tmp_path / "p.zarr"
    result = CliRunner().invoke(
        cli,
        ["softlabel", *model_args(tiny_model, cache_dir), "--lines", "--vocab", str(voc), str(src), "-o", str(store)],
    )
    assert result.exit_code == 0, result.output
    out = [orjson.loads(x) for x in result.stdout_bytes.splitlines()]
    assert [r["id"] for r in out] == ["0", "1", "3"]  # the empty line is skipped, with a warning
    assert "skipped 1 empty" in result.stderr
    s = Store(store)
    assert s.vocab() == ["apache", "hibernate", "widget", "missing"]
    assert s.bow().toarray().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]


def test_vocab_command(cache_dir, tmp_path):
    src = tmp_path / "d.jsonl"
    texts = ["The Apache server and the APACHE config", "Apache LINQ queries", "linq to SQL in C#", "a b cd 123"]
    src.write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts))
    result = CliRunner().invoke(cli, ["vocab", str(src), "--vocab-size", "3", "--cache-dir", str(cache_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout_bytes) == ["apache", "linq", "config"]
    result = CliRunner().invoke(cli, ["vocab", str(src), "--min-df", "2", "--cache-dir", str(cache_dir), "-q"])
    assert orjson.loads(result.stdout_bytes) == ["apache", "linq"]


BAD_INPUTS = {
    "malformed JSON": (b'{"text": "ok"}\n{"text": oops}\n', "2: not valid JSON"),
    "missing text": (b'{"text": "ok"}\n{"body": "x"}\n', "2: no 'text' field"),
    "non-string text": (b'{"text": 5}\n', "1: field 'text' must be a string"),
    "wrong-typed id": (b'{"id": [1], "text": "a"}\n', "1: 'id' must be a string or an integer"),
    "duplicate id": (
        b'{"id": "a", "text": "x y"}\n{"id": "a", "text": "z w"}\n',
        "2: duplicate id 'a' (first on line 1)",
    ),
    "not an object": (b'["text"]\n', "1: expected a JSON object"),
    "non-UTF-8": (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "2: not UTF-8"),
    "empty input": (b"", "no documents"),
    "only empty documents": (b'{"text": ""}\n{"text": "  "}\n', "no documents"),
}


@pytest.mark.parametrize("command", ["vocab", *ENCODERS])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_exit_2_no_traceback(command, case, tiny_model, cache_dir, tmp_path):
    data, expected = BAD_INPUTS[case]
    args = [command, "--cache-dir", str(cache_dir), "-", "-q"]
    if command != "vocab":
        args += ["--lm", str(tiny_model), "-o", str(tmp_path / "bad.zarr"), "--dtype", "float32"]
    result = run_st(args, cache_dir, stdin=data)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err and f"st {command}: error:" in err
    assert result.stdout == b""


def test_bom_and_crlf_are_accepted(tiny_model, cache_dir, tmp_path):
    data = b'\xef\xbb\xbf{"text": "apache server"}\r\n{"text": "qt widgets"}\r\n'
    result = run_st(
        ["embed", *model_args(tiny_model, cache_dir), "-o", str(tmp_path / "b.zarr"), "-q"], cache_dir, data
    )
    assert result.returncode == 0, result.stderr
    assert [orjson.loads(x)["text"] for x in result.stdout.splitlines()] == ["apache server", "qt widgets"]


def test_usage_errors_are_one_line_exit_2(cache_dir):
    for args in (["softlabel", "--bogus"], ["softlabel", "--max-tokens", "0"], ["nope"], ["vocab", "/no/such/file"]):
        result = run_st(args, cache_dir)
        err = result.stderr.decode()
        assert result.returncode == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_bad_vocabulary_files(tiny_model, cache_dir, so_docs, tmp_path):
    for content in ['{"a": 1}', '["a", 3]', "[]", "not json", '["a", "a"]']:
        voc = tmp_path / "v.json"
        voc.write_text(content)
        result = run_st(["softlabel", *model_args(tiny_model, cache_dir), "--vocab", str(voc), str(so_docs)], cache_dir)
        err = result.stderr.decode()
        assert result.returncode == 2 and str(voc) in err and len(err.strip().splitlines()) == 1, err


def test_refuses_to_replace_a_folder_that_is_not_a_store(tiny_model, cache_dir, so_docs, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = run_st(["embed", *model_args(tiny_model, cache_dir), str(so_docs), "-o", str(precious)], cache_dir)
    assert result.returncode == 2 and "not an st store" in result.stderr.decode()
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_subprocess_pipeline_cat_softlabel_jq_like(tiny_model, cache_dir, so_docs, tmp_path):
    """cat docs | st softlabel | (a filter) | st embed: records flow through two stages."""
    store1, store2 = tmp_path / "a.zarr", tmp_path / "b.zarr"
    margs = " ".join(model_args(tiny_model, cache_dir))
    cmd = (
        f'cat {so_docs} | {st_exe()} softlabel {margs} -o {store1} -q | grep -v \'"label":"qt"\' '
        f"| {st_exe()} embed {margs} -o {store2} -q"
    )
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, env=st_env(cache_dir), timeout=600
    )
    assert result.returncode == 0, result.stderr
    out = [orjson.loads(x) for x in result.stdout.splitlines()]
    assert len(out) == 38 and all(r["_st"]["store"] == str(store2) for r in out)
    # The second stage found every document in the cache: the same LM hidden states as the first
    # store holds (of unit length there, beside the sentence embedding).
    h1, h2 = Store(store1).array("hidden"), Store(store2).array("hidden").astype(np.float64)
    keep = [i for i, r in enumerate(read_jsonl(so_docs)) if r["label"] != "qt"]
    np.testing.assert_allclose(h1[keep][:, : h2.shape[1]], h2 / np.linalg.norm(h2, axis=1, keepdims=True), atol=1e-6)


def test_stdout_is_pure_jsonl_while_a_progress_bar_runs(tiny_model, cache_dir, so_docs, tmp_path):
    """stderr is a terminal (so rich draws its bar), stdout a pipe that must hold only records."""
    master, slave = pty.openpty()
    env = st_env(cache_dir)
    env["COLUMNS"] = "100"
    proc = subprocess.Popen(
        [
            st_exe(),
            "softlabel",
            *model_args(tiny_model, cache_dir),
            str(so_docs),
            "-o",
            str(tmp_path / "p.zarr"),
            "--batch-tokens",
            "64",
        ],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # read the terminal while the process runs, or a full pty buffer blocks it
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout = proc.stdout.read()
    proc.wait(timeout=600)
    reader.join(timeout=10)
    os.close(master)
    err = b"".join(chunks)
    assert proc.returncode == 0
    assert b"st softlabel" in err and b"\x1b[" in err  # a live, drawn progress bar
    lines = stdout.splitlines()
    assert len(lines) == 40 and all(orjson.loads(x)["_st"] for x in lines)


def test_head_ends_quietly(tiny_model, cache_dir, tmp_path):
    src = tmp_path / "many.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"text": f"document number {i} about apache"}) + b"\n" for i in range(3000)))
    margs = " ".join(model_args(tiny_model, cache_dir))
    cmd = f"{st_exe()} embed {margs} {src} -o {tmp_path / 'h.zarr'} -q --max-tokens 8 | head -n 2"
    result = subprocess.run(["bash", "-c", cmd], capture_output=True, env=st_env(cache_dir), timeout=600)
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr == b"", result.stderr


def test_help_documents_every_option_with_its_default(cache_dir):
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for command in ["vocab", "softlabel", "embed", "completion"]:
        assert command in top.output
    out = runner.invoke(cli, ["softlabel", "--help"], terminal_width=200).output
    for flag, default in [
        ("--max-tokens", "512"),
        ("--temperature", "3.0"),
        ("--device", "auto"),
        ("--output", "st.zarr"),
        ("--text-field", "text"),
        ("--vocab-size", "2000"),
    ]:
        line = next(x for x in out.splitlines() if flag in x)
        assert f"default: {default}" in line or f"default:\n{default}" in out, line


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_generated_and_committed(shell):
    result = CliRunner().invoke(cli, ["completion", shell])
    assert result.exit_code == 0 and "_ST_COMPLETE" in result.output
    committed = Path(__file__).resolve().parents[1] / "completions" / f"st.{shell}"
    assert committed.read_text() == result.output, "run `make completions`"


def test_python_dash_m_entry_point(cache_dir):
    result = subprocess.run([sys.executable, "-m", "st", "--version"], capture_output=True, env=st_env(cache_dir))
    assert result.returncode == 0 and b"st" in result.stdout


def test_embed_adds_hidden_states_to_a_soft_label_store_of_the_same_documents(tiny_model, cache_dir, so_docs, tmp_path):
    from tests.test_resume import tree_bytes

    runner = CliRunner()
    store = tmp_path / "docs.zarr"
    args = model_args(tiny_model, cache_dir)
    r = runner.invoke(cli, ["softlabel", *args, "--max-tokens", "4", str(so_docs), "-o", str(store), "-q"])
    assert r.exit_code == 0, r.output
    logits = Store(store).array("logits")
    r = runner.invoke(cli, ["embed", *args, str(so_docs), "-o", str(store), "-q"])
    assert r.exit_code == 0, r.output
    r2 = runner.invoke(cli, ["embed", *args, str(so_docs), "-o", str(tmp_path / "alone.zarr"), "-q"])
    s = Store(store)
    np.testing.assert_array_equal(s.array("logits"), logits)  # the soft labels are kept
    np.testing.assert_array_equal(s.array("hidden"), Store(tmp_path / "alone.zarr").array("hidden"))
    assert s.attrs["max_tokens"] == 4 and s.attrs["hidden_source"]["max_tokens"] == 512
    assert r.stdout == r2.stdout.replace(str(tmp_path / "alone.zarr"), str(store))
    # Other documents: refused, and the store is left exactly as it was.
    before = tree_bytes(store)
    other = tmp_path / "other.jsonl"
    other.write_bytes(b"".join(so_docs.read_bytes().splitlines(keepends=True)[::-1]))
    r = run_st(["embed", *args, str(other), "-o", str(store), "-q"], cache_dir)
    assert r.returncode == 2 and b"same documents only" in r.stderr
    assert tree_bytes(store) == before


def test_a_store_holding_trained_models_is_not_replaced_without_force(tiny_model, cache_dir, so_docs, tmp_path):
    store = tmp_path / "s.zarr"
    args = ["softlabel", *model_args(tiny_model, cache_dir), str(so_docs), "-o", str(store), "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    (store / "models" / "dsl-k2-abc").mkdir(parents=True)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "holds trained models" in r.output and (store / "models" / "dsl-k2-abc").is_dir()
    assert CliRunner().invoke(cli, [*args, "--force"]).exit_code == 0
    assert not (store / "models").exists()


def _records_without_store(out: bytes) -> list[dict]:
    recs = [orjson.loads(x) for x in out.splitlines()]
    for r in recs:
        r["_st"].pop("store")
    return recs


def test_pipes_and_process_substitution_are_read_once(tiny_model, cache_dir, so_docs, tmp_path):
    """softlabel reads its input twice (vocabulary, then encoding): a FIFO or `<(...)` is spooled
    like stdin, not read empty the second time."""
    base = [*model_args(tiny_model, cache_dir), "-q"]
    plain = run_st(["softlabel", str(so_docs), "-o", str(tmp_path / "a.zarr"), *base], cache_dir)
    assert plain.returncode == 0, plain.stderr
    cmd = " ".join([st_exe(), "softlabel", f"<(cat {so_docs})", "-o", str(tmp_path / "b.zarr"), *map(str, base)])
    substituted = subprocess.run(["bash", "-c", cmd], capture_output=True, env=st_env(cache_dir), timeout=600)
    assert substituted.returncode == 0, substituted.stderr
    assert _records_without_store(substituted.stdout) == _records_without_store(plain.stdout)
    fifo = tmp_path / "docs.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(so_docs.read_bytes()))
    writer.start()
    piped = run_st(["softlabel", str(fifo), "-o", str(tmp_path / "c.zarr"), *base], cache_dir)
    writer.join()
    assert piped.returncode == 0, piped.stderr
    assert _records_without_store(piped.stdout) == _records_without_store(plain.stdout)
    for name in ("hidden", "logits"):
        np.testing.assert_array_equal(
            zarr.open_group(str(tmp_path / "a.zarr"))[name][:], zarr.open_group(str(tmp_path / "c.zarr"))[name][:]
        )


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
def test_compressed_input_is_read_by_its_suffix(suffix, tiny_model, cache_dir, so_docs, tmp_path):
    import bz2
    import gzip
    import lzma

    import zstandard

    compress = {
        ".gz": gzip.compress,
        ".bz2": bz2.compress,
        ".xz": lzma.compress,
        ".zst": zstandard.ZstdCompressor().compress,
    }[suffix]
    packed = tmp_path / f"docs.jsonl{suffix}"
    packed.write_bytes(compress(so_docs.read_bytes()))
    base = [*model_args(tiny_model, cache_dir), "-q"]
    plain = run_st(["softlabel", str(so_docs), "-o", str(tmp_path / "a.zarr"), *base], cache_dir)
    result = run_st(["softlabel", str(packed), "-o", str(tmp_path / "b.zarr"), *base], cache_dir)
    assert result.returncode == 0, result.stderr
    assert _records_without_store(result.stdout) == _records_without_store(plain.stdout)
    vocab_out = run_st(["vocab", str(packed), "--cache-dir", str(cache_dir), "-q"], cache_dir)
    assert vocab_out.returncode == 0 and orjson.loads(vocab_out.stdout)
    # A damaged file is one clear line, exit 2.
    damaged = tmp_path / f"damaged.jsonl{suffix}"
    damaged.write_bytes(packed.read_bytes()[: len(packed.read_bytes()) // 2])
    bad = run_st(["vocab", str(damaged), "--cache-dir", str(cache_dir), "-q"], cache_dir)
    err = bad.stderr.decode()
    assert bad.returncode == 2 and len(err.strip().splitlines()) == 1 and str(damaged) in err, err
