"""Interrupted runs keep every finished batch and resume to the same store, bit for bit."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from st.cli import cli
from st.lm import LM
from st.store import Store
from tests.conftest import st_env, st_exe


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def corpus(tmp_path: Path, n: int = 300) -> Path:
    words = "apache hibernate qt linq haskell oracle excel matlab spring scala bash osx cocoa ajax drupal".split()
    src = tmp_path / "docs.jsonl"
    lines = []
    for i in range(n):
        text = " ".join(words[(i * k) % len(words)] for k in range(1, 2 + i % 9))
        lines.append(orjson.dumps({"id": f"d{i}", "text": f"{text} question {i}", "label": words[i % 3]}))
    src.write_bytes(b"\n".join(lines) + b"\n")
    return src


def softlabel(src: Path, store: Path, cache: Path, model: Path) -> tuple[int, str]:
    args = [
        "softlabel",
        str(src),
        "-o",
        str(store),
        "--lm",
        str(model),
        "--cache-dir",
        str(cache),
        "--dtype",
        "float32",
        "--batch-tokens",
        "256",
        "-q",
    ]
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.stdout


@pytest.mark.parametrize("stop_after", [1, 4, 9, 15])
def test_reliability_interrupted_run_resumes_bit_for_bit(stop_after, tiny_model, tmp_path, models_cache, monkeypatch):
    src = corpus(tmp_path)
    (tmp_path / "c1").mkdir()
    (tmp_path / "c2").mkdir()
    for c in ("c1", "c2"):
        (tmp_path / c / "models").symlink_to(models_cache / "models")
    code, reference_out = softlabel(src, tmp_path / "ref.zarr", tmp_path / "c1", tiny_model)
    assert code == 0

    calls = {"n": 0, "docs": 0}
    real_forward = LM._forward

    def interrupted(self, batch, prefix=None):
        calls["n"] += 1
        if calls["n"] > stop_after:
            raise KeyboardInterrupt
        calls["docs"] += len(batch.rows)
        return real_forward(self, batch, prefix)

    monkeypatch.setattr(LM, "_forward", interrupted)
    code, _ = softlabel(src, tmp_path / "run.zarr", tmp_path / "c2", tiny_model)
    assert code != 0
    with pytest.raises(Exception, match="incomplete store"):
        Store(tmp_path / "run.zarr")
    done = calls["docs"]

    resumed = {"docs": 0}

    def counting(self, batch, prefix=None):
        resumed["docs"] += len(batch.rows)
        return real_forward(self, batch, prefix)

    monkeypatch.setattr(LM, "_forward", counting)
    code, out = softlabel(src, tmp_path / "run.zarr", tmp_path / "c2", tiny_model)
    assert code == 0
    assert resumed["docs"] == 300 - done  # only what was not finished reaches the LM
    assert tree_bytes(tmp_path / "run.zarr") == tree_bytes(tmp_path / "ref.zarr")
    assert out.replace(str(tmp_path / "run.zarr"), "S") == reference_out.replace(str(tmp_path / "ref.zarr"), "S")


def test_reliability_sigkill_then_rerun(tiny_model, tmp_path, models_cache):
    src = corpus(tmp_path, n=3000)
    caches = []
    for c in ("k1", "k2"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "models").symlink_to(models_cache / "models")
        caches.append(tmp_path / c)
    args = [st_exe(), "softlabel", str(src), "--lm", str(tiny_model), "--dtype", "float32", "--batch-tokens", "128"]
    ref = subprocess.run(
        [*args, "-o", str(tmp_path / "ref.zarr"), "--cache-dir", str(caches[0])],
        capture_output=True,
        env=st_env(caches[0]),
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr
    run = [*args, "-o", str(tmp_path / "run.zarr"), "--cache-dir", str(caches[1])]
    proc = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=st_env(caches[1]))
    assert proc.stdout is not None
    proc.stdout.readline()  # the first chunk is in the store; kill while later ones are encoded
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(run, capture_output=True, env=st_env(caches[1]), timeout=600)
    assert again.returncode == 0, again.stderr
    through, cached = map(int, re.search(rb"\((\d+) through the LM, (\d+) from the cache\)", again.stderr).groups())
    assert cached >= 1024 and through + cached == 3000
    assert tree_bytes(tmp_path / "run.zarr") == tree_bytes(tmp_path / "ref.zarr")


def test_reliability_sigint_exits_130_without_traceback(tiny_model, tmp_path):
    src = corpus(tmp_path, n=3000)
    # A cache of its own and small chunks: the first record comes out long before the run could end
    # (documents another test cached, or a machine under load, would otherwise let it finish first).
    cache_dir = tmp_path / "cache"
    cmd = [
        st_exe(),
        "softlabel",
        str(src),
        "--lm",
        str(tiny_model),
        "-o",
        str(tmp_path / "i.zarr"),
        "--batch-tokens",
        "128",
        "--chunk-rows",
        "64",
        "--cache-dir",
        str(cache_dir),
    ]
    # A shell that runs the tests in the background (`make test &`) makes its children ignore SIGINT,
    # and Python keeps that; give st the default disposition an interactive Ctrl-C would meet.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=st_env(cache_dir),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert b"Traceback" not in err and b"interrupted" in err
    assert Store(tmp_path / "i.zarr", require_complete=False).rows >= 64


def test_reliability_two_runs_share_a_cache_at_once(tiny_model, tmp_path, cache_dir):
    """Two st softlabel processes over overlapping documents and one cache both finish correctly."""
    src = corpus(tmp_path, n=1200)
    lines = src.read_bytes().splitlines(keepends=True)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(b"".join(lines[:900]))
    b.write_bytes(b"".join(lines[300:]))
    common = [
        "--lm",
        str(tiny_model),
        "--dtype",
        "float32",
        "--batch-tokens",
        "128",
        "--cache-dir",
        str(cache_dir),
        "--vocab-size",
        "50",
        "-q",
    ]
    procs = [
        subprocess.Popen(
            [st_exe(), "softlabel", str(f), "-o", str(tmp_path / f"{f.stem}.zarr"), *common],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=st_env(cache_dir),
        )
        for f in (a, b)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    # Each store equals that of a run alone on a fresh cache (same vocabulary, same hidden states).
    for f in (a, b):
        fresh = tmp_path / f"fresh-{f.stem}"
        fresh.mkdir()
        (fresh / "models").symlink_to(cache_dir / "models")
        alone = subprocess.run(
            [
                st_exe(),
                "softlabel",
                str(f),
                "-o",
                str(tmp_path / f"alone-{f.stem}.zarr"),
                *common[:-4],
                str(fresh),
                "--vocab-size",
                "50",
                "-q",
            ],
            capture_output=True,
            env=st_env(fresh),
        )
        assert alone.returncode == 0, alone.stderr
        s1, s2 = Store(tmp_path / f"{f.stem}.zarr"), Store(tmp_path / f"alone-{f.stem}.zarr")
        import numpy as np

        np.testing.assert_allclose(s1.array("hidden"), s2.array("hidden"), atol=1e-5)
        # Logits are stored in float16: a float32 difference of 1e-6 can round to the
        # neighbouring float16, one step (at most 2**-10 relative) away.
        np.testing.assert_allclose(s1.array("logits"), s2.array("logits"), rtol=2**-10, atol=1e-4)
        assert s1.ids() == s2.ids()
    import sqlite3

    db = sqlite3.connect(cache_dir / "lm-cache.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute(LM_ENTRIES).fetchone()[0] == 1200


# The cache's entries of the tiny LM (hidden size 64, float32), not MiniLM's embeddings beside them.
LM_ENTRIES = "SELECT count(*) FROM entries WHERE length(value) = 64 * 4"


# Code run in a child `st softlabel` that SIGKILLs itself at one precise point of the work. The
# points cover every kind of write: mid-batch in the LM, mid-transaction in the cache, between
# two arrays of one store chunk, after a chunk before its records are printed, and just before
# the store is marked complete.
KILLER = """
import os, signal, sys
from st import cache, lm, store
point, n = sys.argv.pop(1), int(sys.argv.pop(1))
calls = {"n": 0}
def hit():
    calls["n"] += 1
    return calls["n"] == n
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "lm":
    real_forward = lm.LM._forward
    def forward(self, batch, prefix=None):
        if hit():
            die()
        return real_forward(self, batch, prefix)
    lm.LM._forward = forward
elif point == "cache":
    real_put = cache.Cache.put_many
    def put_many(self, entries):
        if hit():
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?)",
                                 [(k, v.tobytes()) for k, v in entries.items()])
            die()
        return real_put(self, entries)
    cache.Cache.put_many = put_many
elif point in ("store-array", "store-chunk"):
    real_append = store.StoreWriter.append
    def append(self, ids, records, hidden, logits=None, bow=None):
        if hit():
            if point == "store-array":
                self.group["ids"].append(__import__("numpy").asarray(ids, dtype=object))
                self.group["hidden"].append(hidden)
                die()
            real_append(self, ids, records, hidden, logits, bow)
            die()
        return real_append(self, ids, records, hidden, logits, bow)
    store.StoreWriter.append = append
elif point == "finish":
    def finish(self):
        die()
    store.StoreWriter.finish = finish
elif point == "embed-swap":  # `st embed` onto a soft-label store: after the old hidden states moved aside
    real_rename = os.rename
    def rename(src, dst):
        if str(src).endswith("hidden-new"):
            die()
        return real_rename(src, dst)
    os.rename = rename
from st.cli import main
sys.argv[0] = "st"
main()
"""


@pytest.fixture(scope="module")
def kill_reference(tiny_model, models_cache, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill")
    src = corpus(tmp, n=1500)
    (tmp / "c").mkdir()
    (tmp / "c" / "models").symlink_to(models_cache / "models")
    args = ["softlabel", str(src), "--lm", str(tiny_model), "--dtype", "float32", "--batch-tokens", "256"]
    r = subprocess.run(
        [st_exe(), *args, "-o", str(tmp / "ref.zarr"), "--cache-dir", str(tmp / "c")],
        capture_output=True,
        env=st_env(tmp / "c"),
    )
    assert r.returncode == 0, r.stderr
    return src, args, tmp / "ref.zarr", r.stdout


@pytest.mark.parametrize(
    "point,n",
    [("lm", 12), ("cache", 20), ("store-array", 2), ("store-chunk", 1), ("finish", 1), ("lm", 3)],
)
def test_reliability_sigkill_at_every_kind_of_write(point, n, kill_reference, tmp_path, models_cache):
    import sqlite3
    import sys

    src, args, ref, ref_out = kill_reference
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "models").symlink_to(models_cache / "models")
    run = [*args, "-o", str(tmp_path / "run.zarr"), "--cache-dir", str(cache)]
    killed = subprocess.run([sys.executable, "-c", KILLER, point, str(n), *run], capture_output=True, env=st_env(cache))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with sqlite3.connect(cache / "lm-cache.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finished = db.execute(LM_ENTRIES).fetchone()[0]
    assert finished > 0 or point == "lm"
    again = subprocess.run([st_exe(), *run], capture_output=True, env=st_env(cache))
    assert again.returncode == 0, again.stderr
    through, cached = map(int, re.search(rb"\((\d+) through the LM, (\d+) from the cache\)", again.stderr).groups())
    # Every finished batch was kept, and only the rest went through the LM.
    assert cached == finished and through == 1500 - finished
    assert tree_bytes(tmp_path / "run.zarr") == tree_bytes(ref)
    assert again.stdout.replace(str(tmp_path / "run.zarr").encode(), b"S") == ref_out.replace(str(ref).encode(), b"S")


def test_reliability_train_killed_resumes_from_its_checkpoint(store, tmp_path, cache_dir):
    """SIGKILL `st train` once it has checkpointed; the same command resumes and ends with the
    model and θ of an uninterrupted run, bit for bit."""
    import shutil

    import numpy as np

    path, _ = store
    shutil.copytree(path, tmp_path / "whole.zarr")
    args = ["train", "-k", "4", "--epochs", "40", "--checkpoint-every", "2", "--seed", "5"]
    whole = subprocess.run(
        [st_exe(), *args, "--store", str(tmp_path / "whole.zarr"), "-o", str(tmp_path / "whole")],
        capture_output=True,
        env=st_env(cache_dir),
    )
    assert whole.returncode == 0, whole.stderr
    run = [st_exe(), *args, "--store", str(path), "-o", str(tmp_path / "run")]
    proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=st_env(cache_dir))
    checkpoints = path / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints.is_dir() and any(checkpoints.glob("*.safetensors"))) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and any(checkpoints.glob("*.safetensors"))
    again = subprocess.run(run, capture_output=True, env=st_env(cache_dir))
    assert again.returncode == 0, again.stderr
    assert b"resuming" in again.stderr and not any(checkpoints.glob("*.safetensors"))
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == (
        tmp_path / "whole" / "model.safetensors"
    ).read_bytes()
    model_id = json.loads((tmp_path / "run" / "config.json").read_text())["id"]
    a = np.asarray(Store(path).group[f"theta/{model_id}"][:])
    b = np.asarray(Store(tmp_path / "whole.zarr").group[f"theta/{model_id}"][:])
    np.testing.assert_array_equal(a, b)


def test_reliability_embed_killed_while_swapping_in_hidden_states(store, tmp_path, tiny_model, cache_dir):
    """`st embed -o` onto a soft-label store, SIGKILLed between moving the old hidden states aside
    and moving the new ones in: every reader still opens the store, and the re-run finishes it."""
    import sys

    import numpy as np

    from tests.conftest import EXAMPLES

    path, _ = store
    logits = Store(path).array("logits")
    embed = ["embed", str(EXAMPLES), "-o", str(path), "--lm", str(tiny_model), "--dtype", "float32"]
    embed += ["--cache-dir", str(cache_dir), "--max-tokens", "6", "-q"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "embed-swap", "1", *embed], capture_output=True, env=st_env(cache_dir)
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    train = subprocess.run(
        [st_exe(), "train", "-k", "3", "--epochs", "1", "--store", str(path), "-q"],
        capture_output=True,
        env=st_env(cache_dir),
    )
    assert train.returncode == 0, train.stderr
    again = subprocess.run([st_exe(), *embed], capture_output=True, env=st_env(cache_dir))
    assert again.returncode == 0, again.stderr
    alone = tmp_path / "alone.zarr"
    r = subprocess.run([st_exe(), *embed[:3], str(alone), *embed[4:]], capture_output=True, env=st_env(cache_dir))
    assert r.returncode == 0, r.stderr
    s = Store(path)
    np.testing.assert_array_equal(s.array("hidden"), Store(alone).array("hidden"))
    np.testing.assert_array_equal(s.array("logits"), logits)
    assert s.attrs["hidden_source"]["max_tokens"] == 6
    assert sorted(p.name for p in path.iterdir() if p.name.startswith("hidden")) == ["hidden"]
