"""`--backend ray`: a local Ray cluster with logical GPUs gives the local backend's store, and a
worker killed mid-run is replaced without losing or recomputing the batches it had cached."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from st.cli import cli
from tests.conftest import ROOT, st_env, st_exe

ray = pytest.importorskip("ray", reason="the Ray backend's tests need the ray extra (pip install '.[ray]')")


def corpus(tmp_path: Path, n: int = 300) -> Path:
    words = "apache hibernate qt linq haskell oracle excel matlab spring scala bash osx cocoa ajax drupal".split()
    lines = []
    for i in range(n):
        text = " ".join(words[(i * k) % len(words)] for k in range(1, 2 + i % 11))
        lines.append(orjson.dumps({"id": f"d{i}", "text": f"{text} question {i}", "label": words[i % 3]}))
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def args(src: Path, store: Path, cache: str, model: Path, *extra: str) -> list[str]:
    return [
        "softlabel",
        str(src),
        "-o",
        str(store),
        "--lm",
        str(model),
        "--cache-dir",
        cache,
        "--dtype",
        "float32",
        "--batch-tokens",
        "512",
        "--chunk-rows",
        "64",
        "--vocab-size",
        "50",
        *extra,
    ]


def arrays(store: Path) -> dict[str, np.ndarray]:
    import zarr

    g = zarr.open_group(str(store), mode="r")
    return {k: np.asarray(g[k][:]) for k in ("ids", "records", "hidden", "logits", "bow/indptr", "bow/indices")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ray on this machine: 2 CPUs and 2 logical GPUs, so the GPU-worker code path runs (on CPU)."""
    control = tmp_path_factory.mktemp("ray-control")
    ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "worker_process_setup_hook": "tests.ray_hooks.setup",
            "env_vars": {"PYTHONPATH": str(ROOT), "ST_TEST_RAY_CONTROL": str(control)},
        },
    )
    yield control
    ray.shutdown()


@pytest.fixture
def local_store(tiny_model, cache_dir, tmp_path) -> tuple[Path, Path, list[bytes]]:
    src = corpus(tmp_path)
    store = tmp_path / "local.zarr"
    r = CliRunner().invoke(cli, args(src, store, str(cache_dir), tiny_model, "-q"))
    assert r.exit_code == 0, r.output
    return src, store, r.stdout_bytes.splitlines()


def assert_same_store(a: Path, b: Path) -> None:
    left, right = arrays(a), arrays(b)
    for name in ("ids", "records", "bow/indptr", "bow/indices"):
        assert (left[name] == right[name]).all(), name
    for name in ("hidden", "logits"):
        np.testing.assert_allclose(left[name], right[name], rtol=0, atol=1e-4)


def records_without_store(lines: list[bytes]) -> list[dict]:
    out = []
    for line in lines:
        rec = orjson.loads(line)
        rec["_st"].pop("store")
        out.append(rec)
    return out


def test_ray_gpu_workers_match_the_local_backend(cluster, local_store, tiny_model, models_cache, tmp_path):
    src, local, local_lines = local_store
    store = tmp_path / "ray.zarr"
    cache = tmp_path / "ray-cache"
    cache.mkdir()
    (cache / "models").symlink_to(models_cache / "models", target_is_directory=True)
    extra = ["--backend", "ray", "--ray-address", "auto", "--gpus-per-worker", "1"]
    r = CliRunner().invoke(cli, args(src, store, str(cache), tiny_model, *extra))
    assert r.exit_code == 0, r.output
    assert "over 2 workers" in r.stderr  # one per logical GPU
    assert "(300 through the LM, 0 from the cache)" in r.stderr
    assert_same_store(store, local)
    assert records_without_store(r.stdout_bytes.splitlines()) == records_without_store(local_lines)

    # The workers filled the shared cache: a re-run computes nothing.
    again = CliRunner().invoke(cli, args(src, tmp_path / "again.zarr", str(cache), tiny_model, *extra))
    assert again.exit_code == 0, again.output
    assert "(0 through the LM, 300 from the cache)" in again.stderr


def test_ray_killed_worker_is_replaced_and_its_cached_batches_are_kept(
    cluster, local_store, tiny_model, models_cache, tmp_path
):
    src, local, _ = local_store
    cache = f"file://{tmp_path / 'object-cache'}"  # the object-store cache, as on a cluster
    (cluster / "kill-after-batches").write_text("2")
    store = tmp_path / "ray.zarr"
    r = CliRunner().invoke(cli, args(src, store, cache, tiny_model, "--backend", "ray", "--workers", "2"))
    killed = json.loads((cluster / "killed.json").read_text())
    assert r.exit_code == 0, r.output
    assert killed["docs"] > 0
    # The retried chunk found the killed worker's batches in the cache: no document twice.
    assert f"({300 - killed['docs']} through the LM, {killed['docs']} from the cache)" in r.stderr
    assert_same_store(store, local)


def test_ray_asks_for_gpus_the_cluster_lacks(cluster, tiny_model, cache_dir, tmp_path):
    src = corpus(tmp_path, 10)
    extra = ["--backend", "ray", "--gpus-per-worker", "4"]
    r = CliRunner().invoke(cli, args(src, tmp_path / "s.zarr", str(cache_dir), tiny_model, *extra))
    assert r.exit_code == 1
    assert "has 2 GPUs, fewer than --gpus-per-worker 4" in r.stderr
    assert r.stdout == ""


def test_ray_on_a_laptop_starts_its_own_instance(tiny_model, cache_dir, local_store, tmp_path):
    """The command as a user runs it, in a process of its own: Ray started and stopped by st,
    stdout only records."""
    src, local, local_lines = local_store
    store = tmp_path / "ray.zarr"
    cmd = [st_exe(), *args(src, store, str(cache_dir), tiny_model, "--backend", "ray")]
    proc = subprocess.run(cmd, capture_output=True, env=st_env(cache_dir), timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    assert records_without_store(proc.stdout.splitlines()) == records_without_store(local_lines)
    assert "(0 through the LM, 300 from the cache)" in proc.stderr.decode()
    assert_same_store(store, local)


def test_ray_driver_holds_a_bounded_number_of_chunks(cluster, tiny_model, tmp_path):
    """The driver reads the input as the workers need it: when the first chunk's result comes
    back, only a few chunks per worker have been read, not the whole corpus."""
    from st.options import EncodeOptions, RayOptions
    from st.ray_backend import LMSpec, RayBackend

    cache = tmp_path / "cache"
    spec = LMSpec(str(tiny_model), "cpu", "float32", str(cache), str(cache), False)
    encoder = RayBackend(spec, RayOptions(backend="ray", ray_address="auto", workers=2))
    encoder.start()
    read: list[int] = []

    def chunks():
        for i in range(40):
            read.append(i)
            yield [f"document {i} about apache and hibernate, part {j}" for j in range(4)]

    results = encoder.encode(chunks(), None, EncodeOptions(chunk_rows=4), lambda n: None)
    hidden, _ = next(results)
    assert hidden.shape == (4, 64)
    assert len(read) <= 2 * 2 + 1, len(read)
    assert len(list(results)) == 39
