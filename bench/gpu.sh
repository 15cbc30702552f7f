#!/usr/bin/env bash
# The LM stage on an NVIDIA GPU, from a fresh checkout: installs into .venv with the CUDA build of
# torch, then runs bench/gpu.py (the embedded model and a random 1B-class Llama, bfloat16).
set -euo pipefail
cd "$(dirname "$0")/.."
make TORCH="${TORCH:-torch}" .venv/bin/.installed
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'"
.venv/bin/python bench/gpu.py --docs "${GPU_DOCS:-8000}" "$@"
