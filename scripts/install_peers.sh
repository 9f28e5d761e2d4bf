#!/usr/bin/env bash
# Installs the peers that `make bench` compares against: the real verl 0.9.1
# (verl.trainer.ppo.core_algos, its policy losses) on torch 2.13.0, CPU build.
# Without them the benchmark's peer columns stay empty.
#
# - torch: exactly `torch==2.13.0`, which pip resolves to the CPU build
#   (2.13.0+cpu) lying on this machine's disk (its configured find-links). Any
#   other spec (no pin, a range, another version) makes pip download several GB
#   of CUDA wheels instead.
# - verl 0.9.1 with --no-deps: its declared dependencies (ray[default], wandb,
#   datasets, peft, hydra, ...) are for training runs, not for core_algos.
# - the import chain of verl.trainer.ppo.core_algos and verl.workers.config:
#   verl/__init__ -> protocol (ray, tensordict), utils/torch_functional
#   (transformers), base_config and workers/config (omegaconf), utils/profiler
#   (codetiming).
#
# Idempotent: exits at once when verl 0.9.1 and torch 2.13.0 already import.
# VENV (default .venv) selects another virtual environment. Exits non-zero, with
# the import error, when verl still does not import (then `make bench PEERS=0`
# runs the benchmark without the peer rows, and says so in bench.md).
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
    import verl.workers.config  # noqa: F401
except Exception:
    sys.exit(1)
sys.exit(0 if md.version("verl") == "0.9.1" and torch.__version__.split("+")[0] == "2.13.0" else 1)
PYEOF
}

if [ ! -x "$PY" ]; then
  echo "install_peers: no python at $PY (create the venv first: make .venv/.installed, or set VENV)" >&2
  exit 1
fi
if ready; then
  echo "install_peers: verl 0.9.1 and torch 2.13.0 already importable in $VENV"
  exit 0
fi

echo "install_peers: installing torch 2.13.0 (CPU) and verl 0.9.1 into $VENV"
"$PIP" install -q "torch==2.13.0"
"$PIP" install -q --no-deps "verl==0.9.1"
# torch is named again, pinned exactly, so that no dependency can move it. pip then
# warns that verl's other declared requirements (wandb, peft, ...) are missing: expected.
"$PIP" install -q "torch==2.13.0" \
  "ray>=2.41.0" \
  "tensordict>=0.8.0,!=0.9.0,<=0.10.0" \
  "transformers>=5.5.3,<5.11,!=5.6.0" \
  omegaconf \
  codetiming

if ! ready; then
  echo "install_peers: verl.trainer.ppo.core_algos still does not import:" >&2
  "$PY" -c "import verl.trainer.ppo.core_algos, verl.workers.config" >&2 || true
  exit 1
fi
echo "install_peers: verl 0.9.1 on torch $("$PY" -c 'import torch; print(torch.__version__)') ready in $VENV"
