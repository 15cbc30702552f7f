"""The store refuses what it cannot trust: another format version, a truncated or unfinished one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from st.errors import InputError
from st.store import Store, StoreWriter


def write(path: Path, rows: int = 3, finish: bool = True) -> Path:
    w = StoreWriter(path, {"kind": "softlabel"}, hidden_size=4, vocab=["a", "b"], chunk_rows=2)
    hidden = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    logits = np.ones((rows, 2), np.float32)
    bow = sparse.csr_matrix(np.eye(rows, 2, dtype=np.float32))
    w.append([str(i) for i in range(rows)], ['{"text":"x"}'] * rows, hidden, logits, bow)
    if finish:
        w.finish()
    return path


def test_round_trip(tmp_path):
    s = Store(write(tmp_path / "s.zarr", rows=3))
    assert s.rows == 3 and s.ids() == ["0", "1", "2"] and s.vocab() == ["a", "b"]
    assert s.array("hidden").tolist() == np.arange(12, dtype=np.float32).reshape(3, 4).tolist()
    assert s.bow().toarray().tolist() == [[1, 0], [0, 1], [0, 0]]


def test_two_appends_keep_the_bag_of_words_aligned(tmp_path):
    w = StoreWriter(tmp_path / "s.zarr", {}, hidden_size=1, vocab=["a", "b", "c"], chunk_rows=2)
    for block in ([[1, 0, 2], [0, 0, 0]], [[0, 3, 0]]):
        m = np.asarray(block, np.float32)
        w.append(["x"] * len(m), ["{}"] * len(m), np.zeros((len(m), 1), np.float32), m, sparse.csr_matrix(m))
    w.finish()
    assert Store(tmp_path / "s.zarr").bow().toarray().tolist() == [[1, 0, 2], [0, 0, 0], [0, 3, 0]]


def test_unfinished_store_is_refused_but_its_rows_are_readable_on_request(tmp_path):
    path = write(tmp_path / "s.zarr", finish=False)
    with pytest.raises(InputError, match="incomplete store"):
        Store(path)
    assert Store(path, require_complete=False).rows == 3


@pytest.mark.parametrize("damage", ["version", "truncated", "not-a-store", "missing"])
def test_damaged_stores_are_refused(tmp_path, damage):
    path = write(tmp_path / "s.zarr")
    meta = path / "zarr.json"
    if damage == "version":
        doc = json.loads(meta.read_text())
        doc["attributes"]["version"] = 99
        meta.write_text(json.dumps(doc))
        expected = "version 99 is not supported"
    elif damage == "truncated":
        meta.write_text(meta.read_text()[:40])
        expected = "truncated"
    elif damage == "not-a-store":
        doc = json.loads(meta.read_text())
        doc["attributes"] = {}
        meta.write_text(json.dumps(doc))
        expected = "not an st store"
    else:
        path = tmp_path / "nothing.zarr"
        expected = "no such store"
    with pytest.raises(InputError, match=expected):
        Store(path)


def test_rows_read_a_chunk_at_a_time_equal_the_whole_arrays(tmp_path):
    rng = np.random.default_rng(0)
    n, v = 23, 5
    w = StoreWriter(tmp_path / "s.zarr", {"kind": "softlabel"}, hidden_size=3, vocab=list("abcde"), chunk_rows=4)
    hidden = rng.standard_normal((n, 3)).astype(np.float32)
    logits = (rng.standard_normal((n, v)) * 10).astype(np.float32)
    counts = rng.integers(0, 3, (n, v)).astype(np.float32) * (rng.random((n, v)) < 0.4)
    recs = [json.dumps({"text": f"doc {i}", **({"label": f"l{i % 3}"} if i != 7 else {})}) for i in range(n)]
    for start in range(0, n, 6):  # appends that do not line up with the chunks
        stop = min(start + 6, n)
        w.append(
            [f"d{i}" for i in range(start, stop)],
            recs[start:stop],
            hidden[start:stop],
            logits[start:stop],
            sparse.csr_matrix(counts[start:stop]),
        )
    w.finish()
    s = Store(tmp_path / "s.zarr")
    assert s.chunk_rows == 4 and s.node("logits").dtype == np.float16  # float16 logits by default
    np.testing.assert_array_equal(s.array("logits"), logits.astype(np.float16))
    for start, stop in [(0, 4), (3, 9), (20, 23), (22, 40)]:
        np.testing.assert_array_equal(s.read("hidden", start, stop), hidden[start:stop])
        np.testing.assert_array_equal(s.bow_rows(start, stop).toarray(), counts[start : min(stop, n)])
    rows = [17, 2, 2, 22, 0, 9]
    assert s.take("ids", rows) == [f"d{i}" for i in rows]
    np.testing.assert_array_equal(np.stack(s.take("hidden", rows)), hidden[rows])
    assert s.field("text", rows) == [f"doc {i}" for i in rows]
    assert s.field("label") == [f"l{i % 3}" if i != 7 else None for i in range(n)]
    with pytest.raises(InputError, match="no row 23"):
        s.take("ids", [1, 23])


def test_rows_fetched_in_one_request_equal_the_whole_arrays(tmp_path):
    rng = np.random.default_rng(1)
    n, v = 37, 6
    w = StoreWriter(tmp_path / "s.zarr", {"kind": "softlabel"}, hidden_size=2, vocab=list("abcdef"), chunk_rows=5)
    counts = rng.integers(0, 4, (n, v)).astype(np.float32) * (rng.random((n, v)) < 0.3)
    counts[[3, 4, 30]] = 0  # documents without a vocabulary word
    hidden = rng.standard_normal((n, 2)).astype(np.float32)
    w.append([str(i) for i in range(n)], ["{}"] * n, hidden, rng.standard_normal((n, v)), sparse.csr_matrix(counts))
    w.finish()
    s = Store(tmp_path / "s.zarr")
    for rows in ([0], [3, 4], [1, 2, 9, 17, 30, 36], list(range(n)), []):
        r = np.asarray(rows, dtype=np.int64)
        np.testing.assert_array_equal(s.bow_of(r).toarray(), counts[r].reshape(len(r), v))
        np.testing.assert_array_equal(s.read_rows("hidden", r), hidden[r].reshape(len(r), 2))
