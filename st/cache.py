"""The LM cache: content-addressed, shared by every stage and every process.

A local folder holds one SQLite database. A batch's entries are written in one transaction, under
SQLite's own file locks, so concurrent runs on one cache never see a half-written entry and an
interrupted run keeps every batch it finished.

A URL (`s3://bucket/st-cache`, `gs://…`, `file:///shared/cache`: anything fsspec opens) holds one
object per entry, for workers on many machines that share no disk. An object is written whole or
not at all on object stores; on file systems a torn write fails its checksum and counts as missing.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from st.errors import StError


def default_cache_dir() -> Path:
    if os.environ.get("ST_CACHE_DIR"):
        return Path(os.environ["ST_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "st"


def is_url(spec: str | Path) -> bool:
    return "://" in str(spec)


def cache_key(namespace: bytes, text: str) -> bytes:
    return hashlib.sha256(namespace + text.encode("utf-8", "surrogatepass")).digest()


class LMCache(Protocol):
    def key(self, namespace: bytes, text: str) -> bytes: ...

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, np.ndarray]: ...

    def put_many(self, entries: Mapping[bytes, np.ndarray]) -> None: ...


def open_cache(spec: str | Path) -> LMCache:
    """The cache at a local folder or an fsspec URL."""
    return ObjectCache(str(spec)) if is_url(spec) else Cache(Path(spec))


_SCHEMA = "CREATE TABLE IF NOT EXISTS entries (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"


WAIT_SECONDS = 120.0  # how long a run waits for another's lock on the cache


def _connect(path: Path) -> sqlite3.Connection:
    """A connection to the cache database, in WAL mode with its table made. Two processes opening a
    new cache at once may both hold a read lock and both want the write lock that switching to WAL
    takes: SQLite then answers one "database is locked" at once rather than let it wait (a deadlock
    otherwise), so that one starts again after a pause, until WAIT_SECONDS have passed."""
    deadline = time.monotonic() + WAIT_SECONDS
    pause = 0.01
    while True:
        db = sqlite3.connect(path, timeout=WAIT_SECONDS, isolation_level=None)
        try:
            if str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            return db
        except sqlite3.OperationalError as e:
            db.close()
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(2 * pause, 0.5)


class Cache:
    def __init__(self, folder: Path) -> None:
        self.path = folder / "lm-cache.sqlite"
        # One connection per thread: SQLite connections may not cross threads, and a Ray worker
        # builds its cache in one thread and encodes in another.
        self._local = threading.local()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _ = self._db  # fails here, not at the first lookup
        except (OSError, sqlite3.DatabaseError) as e:
            raise StError(f"{self.path}: cannot open the LM cache ({e}); pick another with --cache-dir") from None

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = _connect(self.path)
        return db

    key = staticmethod(cache_key)

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, np.ndarray]:
        keys = list(dict.fromkeys(keys))
        found: dict[bytes, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            rows = self._db.execute(
                f"SELECT key, value FROM entries WHERE key IN ({','.join('?' * len(part))})", part
            ).fetchall()
            found.update({k: np.frombuffer(v, dtype=np.float32) for k, v in rows})
        return found

    def put_many(self, entries: Mapping[bytes, np.ndarray]) -> None:
        rows = [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in entries.items()]
        with self._db:  # one transaction
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO entries (key, value) VALUES (?, ?)", rows)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class ObjectCache:
    """One object per entry under a URL: `<url>/<first 2 hex digits>/<key hex>`, holding an 8-byte
    digest of the values and then the float32 values."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec

            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError, OSError) as e:
            raise StError(f"{url}: cannot open the LM cache ({e}); check the URL or pick another --cache-dir") from None
        self.url = url
        self.root = root.rstrip("/")
        self._local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    key = staticmethod(cache_key)

    def _path(self, key: bytes) -> str:
        h = key.hex()
        return f"{self.root}/{h[:2]}/{h}"

    @staticmethod
    def _digest(payload: bytes) -> bytes:
        return hashlib.blake2b(payload, digest_size=8).digest()

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, np.ndarray]:
        by_path = {self._path(k): k for k in dict.fromkeys(keys)}
        if not by_path:
            return {}
        try:
            blobs = self.fs.cat(list(by_path), on_error="omit")
        except OSError as e:
            raise StError(f"{self.url}: cannot read the LM cache ({e})") from None
        found = {}
        for path, blob in blobs.items():
            key = by_path.get(path) or by_path.get(self.fs._strip_protocol(path))
            if key is not None and len(blob) >= 8 and self._digest(blob[8:]) == blob[:8]:
                found[key] = np.frombuffer(blob[8:], dtype=np.float32)
        return found

    def put_many(self, entries: Mapping[bytes, np.ndarray]) -> None:
        blobs = {}
        for key, value in entries.items():
            payload = np.ascontiguousarray(value, dtype=np.float32).tobytes()
            blobs[self._path(key)] = self._digest(payload) + payload
        try:
            if self._local:
                for path in {p.rsplit("/", 1)[0] for p in blobs}:
                    self.fs.makedirs(path, exist_ok=True)
            self.fs.pipe(blobs)
        except OSError as e:
            raise StError(f"{self.url}: cannot write to the LM cache ({e})") from None

    def __len__(self) -> int:
        try:
            return sum(1 for p in self.fs.find(self.root) if len(p.rsplit("/", 1)[-1]) == 64)
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        pass
