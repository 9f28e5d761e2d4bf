"""Checkpoints with orbax (atomic): arrays and JSON metadata per step."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from jgrpo.train.mesh import fsdp_shardings


def _abstract(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    shardings = fsdp_shardings(tree, mesh)
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sh), tree, shardings)


class _Checkpointer:
    """orbax CheckpointManager holding ``state`` (arrays) and ``meta`` (JSON) per step."""

    def __init__(self, directory: str):
        import orbax.checkpoint as ocp  # optional dependency (the "checkpoint" extra)

        self._ocp = ocp
        self.manager = ocp.CheckpointManager(
            os.path.abspath(os.fspath(directory)),
            options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> None:
        args = self._ocp.args
        self.manager.save(
            step, args=args.Composite(state=args.StandardSave(state), meta=args.JsonSave(meta)), force=True
        )

    def restore(self, step: int, abstract_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        args = self._ocp.args
        out = self.manager.restore(
            step, args=args.Composite(state=args.StandardRestore(abstract_state), meta=args.JsonRestore())
        )
        return out["state"], out["meta"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
