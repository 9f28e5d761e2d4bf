#!/usr/bin/env bash
# Device check (<= 5 minutes on one GPU): train-step MFU and decomposition time of a
# Qwen2.5-0.5B-shaped model (random weights, bf16, G = 16, prompt 256, completion 768); the log-probs run
# each prompt once per group (jgrpo.models.logprob_fn default share_prompt=True; --no-share-prompt: G copies).
#   bash scripts/device_check.sh [--out result.json] [--tiny] [other options of scripts/device_check.py]
# On a GPU host install jax with its CUDA plugin first (pip install -U "jax[cuda13]").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
exec timeout "${DEVICE_CHECK_TIMEOUT:-300}" "$PY" scripts/device_check.py "$@"
