"""The LM cache: a SQLite folder, or one object per entry under an fsspec URL."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from st.cache import Cache, ObjectCache, cache_key, open_cache
from st.cli import cli
from st.errors import StError
from tests.conftest import EXAMPLES


def entries(n: int, size: int = 7) -> dict[bytes, np.ndarray]:
    rng = np.random.default_rng(n)
    return {cache_key(b"ns", f"doc {i}"): rng.standard_normal(size).astype(np.float32) for i in range(n)}


@pytest.mark.parametrize("kind", ["sqlite", "file-url", "memory-url"])
def test_cache_round_trip_and_misses(kind, tmp_path):
    spec = {"sqlite": tmp_path / "c", "file-url": f"file://{tmp_path}/c", "memory-url": f"memory://st-{id(tmp_path)}"}
    cache = open_cache(spec[kind])
    stored = entries(30)
    cache.put_many(stored)
    asked = [*stored, cache_key(b"ns", "never stored")]
    found = cache.get_many(asked)
    assert set(found) == set(stored)
    for k, v in stored.items():
        assert np.array_equal(found[k], v)
    assert len(cache) == 30
    assert open_cache(spec[kind]).get_many([asked[0]])[asked[0]].tolist() == stored[asked[0]].tolist()


def test_object_cache_torn_entry_counts_as_missing_and_is_rewritten(tmp_path):
    cache = ObjectCache(f"file://{tmp_path}/c")
    stored = entries(3)
    cache.put_many(stored)
    key = next(iter(stored))
    obj = next(p for p in (tmp_path / "c").rglob("*") if p.name == key.hex())
    obj.write_bytes(obj.read_bytes()[:-5])  # as a write interrupted on a file system leaves it
    assert key not in cache.get_many(stored)
    assert len(cache.get_many(stored)) == 2
    cache.put_many({key: stored[key]})
    assert np.array_equal(cache.get_many([key])[key], stored[key])


def test_sqlite_cache_serves_other_threads(tmp_path):
    """A Ray worker builds its cache in one thread and encodes in another."""
    cache = Cache(tmp_path / "c")
    stored = entries(5)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            cache.put_many(stored)
            assert len(cache.get_many(stored)) == 5
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not errors
    assert len(cache.get_many(stored)) == 5


def test_unreadable_cache_url_is_one_line_error(tiny_model, tmp_path):
    r = CliRunner().invoke(
        cli, ["softlabel", str(EXAMPLES), "-o", str(tmp_path / "s.zarr"), "--cache-dir", "nosuchprotocol://x/y"]
    )
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and "nosuchprotocol://x/y" in r.stderr
    assert r.stdout == ""


def test_softlabel_with_a_url_cache_resumes_from_it(tiny_model, models_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("ST_CACHE_DIR", str(models_cache))  # converted models stay local
    url = f"file://{tmp_path / 'shared-cache'}"
    runs = []
    for name in ("a", "b"):
        args = ["softlabel", str(EXAMPLES), "-o", str(tmp_path / f"{name}.zarr"), "--cache-dir", url]
        r = CliRunner().invoke(cli, [*args, "--lm", str(tiny_model), "--dtype", "float32", "--vocab-size", "100"])
        assert r.exit_code == 0, r.output
        runs.append(r.stderr)
    assert "(200 through the LM, 0 from the cache)" in runs[0]
    assert "(0 through the LM, 200 from the cache)" in runs[1]
    assert any(Path(tmp_path / "shared-cache").rglob("*"))


class _Locked:
    """A real connection whose first statement is answered "database is locked", as SQLite answers
    one of two processes that switch a new cache to WAL at once."""

    def __init__(self, db, message: str) -> None:
        self.db, self.message = db, message

    def execute(self, *args):
        if self.message:
            message, self.message = self.message, ""
            raise sqlite3.OperationalError(message)
        return self.db.execute(*args)

    def __getattr__(self, name):
        return getattr(self.db, name)

    def __enter__(self):
        return self.db.__enter__()

    def __exit__(self, *exc):
        return self.db.__exit__(*exc)


def test_a_cache_locked_while_it_opens_is_opened_again(tmp_path, monkeypatch):
    import st.cache as cache_mod

    real = sqlite3.connect
    answers = ["database is locked", "database is locked", ""]
    opened = []

    def connect(*args, **kwargs):
        opened.append(_Locked(real(*args, **kwargs), answers.pop(0)))
        return opened[-1]

    monkeypatch.setattr(cache_mod.sqlite3, "connect", connect)
    c = Cache(tmp_path / "c")
    assert len(opened) == 3 and not answers  # two refusals, then the third connection
    key = cache_key(b"ns", "text")
    c.put_many({key: np.arange(3, dtype=np.float32)})
    np.testing.assert_array_equal(c.get_many([key])[key], np.arange(3, dtype=np.float32))
    assert real(tmp_path / "c" / "lm-cache.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Another error, or a lock that outlasts the wait, is the one-line error it always was.
    for message, wait in (("disk I/O error", 120.0), ("database is locked", 0.0)):
        answers[:] = [message] * 50
        monkeypatch.setattr(cache_mod, "WAIT_SECONDS", wait)
        with pytest.raises(StError, match="cannot open the LM cache"):
            Cache(tmp_path / "d")
