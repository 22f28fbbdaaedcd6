#!/usr/bin/env bash
# For a lent GPU (an H100/H200-class card; about 40 GB free): analysis on an SD3.5-Large-shaped
# transformer with random weights, built from hpspec's arch data (nothing downloaded), bf16 on CUDA.
# One probe pass (cosine, mse, cka) and a few block/part entries swapped in place, 4 sampler steps at
# 1024x1024 tokens each; prints seconds and peak memory (torch.cuda.max_memory_allocated) per row.
#
#   bash bench/gpu_analyze.sh                    # the defaults (bench/gpu_analyze.py --help)
#   bash bench/gpu_analyze.sh --steps 8 --batch 2
#   bash bench/gpu_analyze.sh --tiny             # a 4-block model on the CPU (what the tests run)
#
# Expect about two minutes on an H200: building the model, then each row a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=${PYTHON:-python3}; fi
case " $* " in
  *" --tiny "*) ;;
  *) command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader ;;
esac
"$PYTHON" -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"
exec "$PYTHON" bench/gpu_analyze.py "$@"
