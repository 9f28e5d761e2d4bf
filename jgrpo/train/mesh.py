"""Meshes and placements: the "data" and "fsdp" axes, FSDP partitions of parameters, batch shardings.

Only ``jax.sharding`` annotations are used (NamedSharding placements and
``with_sharding_constraint``); GSPMD inserts the all-gathers of the weights and the
reduce-scatters of the gradients.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jgrpo._validate import check_int

__all__ = ["DATA_AXIS", "FSDP_AXIS", "batch_sharding", "data_mesh", "fsdp_shardings", "fsdp_spec", "make_mesh"]

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


def data_mesh(devices: Any = None) -> jax.sharding.Mesh:
    """A 1-D mesh with the axis "data" over ``devices`` (default: every device of every process).

    Call ``jax.distributed.initialize()`` first on multi-host systems.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def make_mesh(*, fsdp: int = 1, data: int | None = None, devices: Any = None) -> jax.sharding.Mesh:
    """A 2-D mesh ``("data", "fsdp")`` of ``data x fsdp`` devices (default: every device of every process).

    Args:
      fsdp: devices each parameter is split over (1 = replicated parameters).
      data: data-parallel replicas; default ``len(devices) // fsdp``.
      devices: the devices (default ``jax.devices()``; call ``jax.distributed.initialize()``
        first on multi-host systems).

    Raises:
      ValueError: ``data * fsdp`` is not the number of devices.
    """
    devices = jax.devices() if devices is None else list(devices)
    check_int("make_mesh", "fsdp", fsdp, 1)
    data = len(devices) // fsdp if data is None else data
    check_int("make_mesh", "data", data, 1)
    if data * fsdp != len(devices):
        raise ValueError(f"make_mesh: data * fsdp = {data} * {fsdp} must equal the number of devices ({len(devices)})")
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh((data, fsdp), (DATA_AXIS, FSDP_AXIS), axis_types=(auto, auto), devices=devices)


def _batch_axes(mesh: Any) -> tuple[str, ...]:
    return tuple(a for a in (DATA_AXIS, FSDP_AXIS) if a in mesh.shape)


def _check_mesh(mesh: Any) -> None:
    names = tuple(mesh.shape)
    if names not in ((DATA_AXIS,), (DATA_AXIS, FSDP_AXIS)):
        raise ValueError(
            f"mesh must have the axes ('{DATA_AXIS}',) or ('{DATA_AXIS}', '{FSDP_AXIS}') (see data_mesh, make_mesh), "
            f"got axes {dict(mesh.shape)}"
        )


def _check_divisible(name: str, batch: int, mesh: jax.sharding.Mesh) -> None:
    axes = _batch_axes(mesh)
    n = int(np.prod([mesh.shape[a] for a in axes]))
    if batch % n:
        raise ValueError(
            f"{name} = {batch} must be divisible by the number of devices on the mesh's batch axes {axes} ({n}); "
            f"use a multiple of {n}"
        )


def fsdp_spec(shape: tuple[int, ...], n: int) -> P:
    """The FSDP partition of a parameter of ``shape`` over ``n`` devices: its largest dimension divisible by n.

    The leading axis of a rank >= 3 leaf (the stacked layer axis of :mod:`jgrpo.models`,
    sliced by the layer scan) is not split. Leaves with no divisible dimension (scalars,
    small vectors) are replicated. Ties go to the last dimension.
    """
    if n <= 1:
        return P()
    candidates = [i for i, d in enumerate(shape) if d % n == 0 and d >= n and not (len(shape) >= 3 and i == 0)]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda i: (shape[i], i))
    return P(*[FSDP_AXIS if i == axis else None for i in range(len(shape))])


def fsdp_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """A pytree of ``NamedSharding`` for ``tree`` (arrays or ``ShapeDtypeStruct`` leaves): :func:`fsdp_spec` over
    the mesh's "fsdp" axis, replicated over "data" (fully replicated on a mesh without "fsdp")."""
    n = mesh.shape.get(FSDP_AXIS, 1)
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), n)), tree)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> NamedSharding:
    """Leading axis over every batch axis of the mesh ("data" and "fsdp"), the rest replicated."""
    return NamedSharding(mesh, P(_batch_axes(mesh), *([None] * (ndim - 1))))


def _place(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Every leaf placed with its :func:`fsdp_shardings` (from host values, so it also works across processes)."""
    shardings = fsdp_shardings(tree, mesh)
    return jax.tree.map(lambda x, sh: jax.device_put(np.asarray(jax.device_get(x)), sh), tree, shardings)


def _constrain(tree: Any, mesh: jax.sharding.Mesh | None) -> Any:
    """``with_sharding_constraint`` of every leaf to its :func:`fsdp_shardings` (inside jit)."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, fsdp_shardings(tree, mesh))


def _shard_batch(x: jax.Array, mesh: jax.sharding.Mesh | None) -> jax.Array:
    """Constrains the leading (prompt) axis of ``x`` to the batch axes ("data", and "fsdp" when present)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim))
