"""The LM cache: content-addressed, on disk, shared by every stage and every process.

One SQLite database per cache folder. A batch's entries are written in one transaction, under
SQLite's own file locks, so concurrent runs on one cache never see a half-written entry and an
interrupted run keeps every batch it finished.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from st.errors import StError


def default_cache_dir() -> Path:
    if os.environ.get("ST_CACHE_DIR"):
        return Path(os.environ["ST_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "st"


_SCHEMA = "CREATE TABLE IF NOT EXISTS entries (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"


class Cache:
    def __init__(self, folder: Path) -> None:
        self.path = folder / "lm-cache.sqlite"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=120, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.DatabaseError) as e:
            raise StError(f"{self.path}: cannot open the LM cache ({e}); pick another with --cache-dir") from None

    @staticmethod
    def key(namespace: bytes, text: str) -> bytes:
        return hashlib.sha256(namespace + text.encode("utf-8", "surrogatepass")).digest()

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
