#!/usr/bin/env bash
# Installs the real verl 0.9.1 into the project venv for `make interop`
# (tests/interop/test_verl.py), with the least that
# `import verl.trainer.ppo.core_algos` needs on a CPU-only machine.
#
# - torch 2.13.0: the CPU build (2.13.0+cpu) that pip finds through this
#   machine's configured find-links; no CUDA wheels are pulled.
# - verl 0.9.1 with --no-deps: its declared dependencies (ray[default], wandb,
#   datasets, peft, hydra, ...) are for training runs, not for core_algos.
# - the import chain of verl.trainer.ppo.core_algos: verl/__init__ -> protocol
#   (ray, tensordict), utils/torch_functional (transformers), base_config and
#   workers/config (omegaconf), utils/profiler (codetiming).
#
# Idempotent: exits at once when verl 0.9.1 and torch 2.13.0 already import.
# VENV (default .venv) selects another virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
PIP="$VENV/bin/pip"

ready() {
  "$PY" - <<'PYEOF' 2>/dev/null
import importlib.metadata as md
import sys

try:
    import torch
    import verl.trainer.ppo.core_algos  # noqa: F401
except Exception:
    sys.exit(1)
sys.exit(0 if md.version("verl") == "0.9.1" and torch.__version__.split("+")[0] == "2.13.0" else 1)
PYEOF
}

if ready; then
  echo "install_interop: verl 0.9.1 and torch 2.13.0 already importable in $VENV"
  exit 0
fi

"$PIP" install -q "torch==2.13.0"
"$PIP" install -q --no-deps "verl==0.9.1"
# torch is named again so that no dependency can move it. pip then warns that
# verl's other declared requirements (wandb, peft, ...) are missing: expected.
"$PIP" install -q "torch==2.13.0" \
  "ray>=2.41.0" \
  "tensordict>=0.8.0,!=0.9.0,<=0.10.0" \
  "transformers>=5.5.3,<5.11,!=5.6.0" \
  omegaconf \
  codetiming

if ! ready; then
  echo "install_interop: verl.trainer.ppo.core_algos still does not import:" >&2
  "$PY" -c "import verl.trainer.ppo.core_algos" >&2 || true
  exit 1
fi
echo "install_interop: verl 0.9.1 ready in $VENV"
