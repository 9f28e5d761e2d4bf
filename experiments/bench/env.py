"""The machine a benchmark runs on, and the peers (verl on torch) it compares against."""

from __future__ import annotations

import os
import platform
import time
import types
from typing import Any

import jax

__all__ = ["backend", "cores", "device", "load_peers", "machine"]

PEER_INSTALL = "scripts/install_interop.sh (make bench runs it)"


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def backend() -> str:
    """jax's default backend: "cpu", "gpu", "tpu"."""
    return jax.default_backend()


def device() -> str:
    """The device every reference rate is measured on, in words: ``"cpu (2 cores)"``, ``"gpu (NVIDIA H200)"``."""
    if backend() == "cpu":
        return f"cpu ({cores()} cores)"
    return f"{backend()} ({jax.devices()[0].device_kind})"


def machine(config_name: str) -> dict[str, Any]:
    """bench.json's ``meta``: configuration, backend, device, cores, versions, start time."""
    return {
        "config": config_name,
        "backend": backend(),
        "device": str(jax.devices()[0].device_kind),
        "device_label": device(),
        "cores": cores(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "section_s": {},
    }


def load_peers(enabled: bool) -> tuple[Any, str | None]:
    """(peer namespace or None, the reason the peer rows are skipped).

    The namespace holds ``torch``, verl's ``core_algos`` and ``ActorConfig``, the
    torch ``device`` matching jax's backend, and a ``version`` string.
    """
    if not enabled:
        return None, "peer rows disabled in this configuration"
    try:
        import torch
        from verl.trainer.ppo import core_algos
        from verl.workers.config import ActorConfig
    except Exception as e:
        return None, f"verl/torch not importable ({type(e).__name__}: {e}); install them with {PEER_INSTALL}"
    if backend() == "cpu":
        dev = "cpu"
    elif backend() in ("gpu", "cuda") and torch.cuda.is_available():
        dev = "cuda"
    else:
        return None, f"jax runs on {backend()} and torch has no matching device: peer rows need the same hardware"
    torch.set_num_threads(cores())  # as many threads as XLA's CPU thread pool
    import verl

    version = f"verl {getattr(verl, '__version__', '?')}, torch {torch.__version__} ({dev})"
    return types.SimpleNamespace(
        torch=torch, core_algos=core_algos, ActorConfig=ActorConfig, device=dev, version=version
    ), None
