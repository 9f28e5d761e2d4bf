#!/usr/bin/env bash
# Installs the real verl 0.9.1 and TRL 1.16.0 into the project venv for `make interop` and `make bench`
# (tests/interop/test_verl.py, tests/interop/test_trl.py), with the least that
# `import verl.trainer.ppo.core_algos` and `import trl.trainer.grpo_trainer` need on a
# CPU-only machine.
#
# - torch 2.13.0: the CPU build (2.13.0+cpu) that pip finds through this
#   machine's configured find-links; no CUDA wheels are pulled. Every later pip
#   call names torch==2.13.0 again and runs under a constraints file that pins
#   torch and the project's own stack (jax, jaxlib, flax, optax, chex, numpy) at
#   the versions already installed, so that no dependency moves them.
# - verl 0.9.1 with --no-deps: its declared dependencies (ray[default], wandb,
#   datasets, peft, hydra, ...) are for training runs, not for core_algos.
# - the import chain of verl.trainer.ppo.core_algos: verl/__init__ -> protocol
#   (ray, tensordict), utils/torch_functional (transformers), base_config and
#   workers/config (omegaconf), utils/profiler (codetiming).
# - trl 1.16.0 with its declared dependencies (accelerate, datasets, transformers,
#   pandas, pyarrow, ...): grpo_trainer imports them at module level.
#
# Idempotent: exits at once when verl 0.9.1, trl 1.16.0 and torch 2.13.0 already import.
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
    import trl.trainer.grpo_trainer  # noqa: F401
    import verl.trainer.ppo.core_algos  # noqa: F401
except Exception:
    sys.exit(1)
ok = md.version("verl") == "0.9.1" and md.version("trl") == "1.16.0"
sys.exit(0 if ok and torch.__version__.split("+")[0] == "2.13.0" else 1)
PYEOF
}

if [ ! -x "$PY" ]; then
  echo "install_interop: no python at $PY (create the venv first: make .venv/.installed, or set VENV)" >&2
  exit 1
fi
if ready; then
  echo "install_interop: verl 0.9.1, trl 1.16.0 and torch 2.13.0 already importable in $VENV"
  exit 0
fi

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==2.13.0" >"$CONSTRAINTS"
"$PY" - >>"$CONSTRAINTS" <<'PYEOF'
import importlib.metadata as md

for name in ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "ml_dtypes"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
PYEOF

"$PIP" install -q -c "$CONSTRAINTS" "torch==2.13.0"
"$PIP" install -q --no-deps "verl==0.9.1"
# pip then warns that verl's other declared requirements (wandb, peft, ...) are missing: expected.
"$PIP" install -q -c "$CONSTRAINTS" "torch==2.13.0" \
  "ray>=2.41.0" \
  "tensordict>=0.8.0,!=0.9.0,<=0.10.0" \
  "transformers>=5.5.3,<5.11,!=5.6.0" \
  omegaconf \
  codetiming \
  "trl==1.16.0"

if ! ready; then
  echo "install_interop: verl.trainer.ppo.core_algos or trl.trainer.grpo_trainer still does not import:" >&2
  "$PY" -c "import verl.trainer.ppo.core_algos" >&2 || true
  "$PY" -c "import trl.trainer.grpo_trainer" >&2 || true
  exit 1
fi
echo "install_interop: verl 0.9.1 and trl 1.16.0 ready in $VENV"
