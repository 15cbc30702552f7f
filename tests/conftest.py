"""Shared fixtures: the real embedded LM (converted once per test session) and a tiny random
Llama built with transformers, which shares the embedded tokenizer and keeps most tests fast."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import orjson
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "stackoverflow-200.jsonl"


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the embedded model converted from its GGUF (once per session)."""
    folder = Path(os.environ.get("ST_TEST_MODELS_CACHE") or tmp_path_factory.mktemp("models-cache"))
    from st.lm import local_folder, resolve

    local_folder(resolve(None), folder)
    return folder


@pytest.fixture(scope="session")
def embedded_folder(models_cache: Path) -> Path:
    from st.lm import local_folder, resolve

    return local_folder(resolve(None), models_cache)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, embedded_folder: Path) -> Path:
    """A randomly initialised 2-layer Llama with the embedded tokenizer, saved as a local folder."""
    from st.testing import random_llama

    return random_llama(tmp_path_factory.mktemp("tiny-llama"), embedded_folder)


@pytest.fixture
def cache_dir(tmp_path: Path, models_cache: Path) -> Path:
    """A fresh LM cache for one test, with the converted models shared."""
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "models").symlink_to(models_cache / "models", target_is_directory=True)
    return folder


def read_jsonl(path: Path, n: int | None = None) -> list[dict]:
    out = []
    with open(path, "rb") as f:
        for line in f:
            out.append(orjson.loads(line))
            if n is not None and len(out) == n:
                break
    return out


@pytest.fixture
def so_docs(tmp_path: Path) -> Path:
    """40 StackOverflow titles, two of each class, as a JSONL file."""
    rows = read_jsonl(SHARED / "stackoverflow.jsonl")
    picked, per = [], {}
    for r in rows:
        if per.get(r["label"], 0) < 2:
            per[r["label"]] = per.get(r["label"], 0) + 1
            picked.append(r)
    path = tmp_path / "so.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in picked))
    return path


def st_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ST_CACHE_DIR"] = str(cache)
    env.pop("ST_FORCE_TERMINAL", None)
    return env


def st_exe() -> str:
    """The st script of the Python running the tests (its folder need not be on PATH)."""
    exe = Path(sys.executable).parent / "st"
    if exe.is_file():
        return str(exe)
    found = shutil.which("st")
    assert found, "the st command is not installed (pip install -e .)"
    return found


@pytest.fixture
def store(tiny_model, cache_dir, tmp_path) -> tuple[Path, str]:
    """A soft-label store of the 200 example titles, encoded by the tiny model."""
    from click.testing import CliRunner

    from st.cli import cli

    path = tmp_path / "ex.zarr"
    r = CliRunner().invoke(
        cli,
        [
            "softlabel",
            str(EXAMPLES),
            "-o",
            str(path),
            "--lm",
            str(tiny_model),
            "--cache-dir",
            str(cache_dir),
            "--dtype",
            "float32",
            "--vocab-size",
            "300",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    return path, r.stdout
