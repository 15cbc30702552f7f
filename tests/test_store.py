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
