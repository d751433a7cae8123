"""Devices, meshes and processes: the SPMD layer under every sweep.

A sweep's instances live on one named mesh axis, `"sweep"`, laid over every device of every
process (`sweep_mesh`). Arrays with a leading instance axis are sharded along it
(`instance_sharding`); nothing else is ever sharded, so instances never communicate and
results do not depend on how many devices hold them.

Multi-host runs (Cloud TPU pods, several GPU hosts) call `initialize` once, before any
computation, in every process; every process then runs the same program. Host data that
every process computes identically (hyperparameters, keys, a restored checkpoint) becomes a
global array with `to_global`; results come back to every process with `to_host`, and only
the primary process writes files (`is_primary`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import numpy.typing as npt
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXIS = "sweep"
ENV_SWITCH = "SUPERPOS_DISTRIBUTED"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join this process to a multi-process JAX job (call before any JAX computation).

    With no arguments JAX detects the cluster itself (Cloud TPU, Slurm, Open MPI); elsewhere
    give the coordinator's `host:port`, the number of processes and this process's id.
    On CPU the cross-process collectives go through gloo.
    """
    given = [a is not None for a in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "distributed: give all of coordinator_address, num_processes and process_id, or none "
            f"(got coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
            f"process_id={process_id!r})"
        )
    if num_processes is not None and not (0 <= process_id < num_processes):  # type: ignore[operator]
        raise ValueError(f"distributed: process_id={process_id} must lie in [0, num_processes={num_processes})")
    if jax.distributed.is_initialized():
        return
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # option renamed or removed in a later JAX
        pass
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def requested_by_environment() -> bool:
    """True when `SUPERPOS_DISTRIBUTED` is set to 1/true/yes (the launcher's switch)."""
    return os.environ.get(ENV_SWITCH, "").strip().lower() in ("1", "true", "yes")


def is_primary() -> bool:
    """Whether this is the process that writes files (process 0)."""
    return jax.process_index() == 0


def sweep_mesh(devices: Sequence[jax.Device] | int | None = None) -> Mesh:
    """A 1-D mesh with axis "sweep" (Auto axis type) over `devices`.

    Args:
        devices: the devices (default: all devices of all processes), or a count `k` for the
            first `k` of them (single-process only).
    """
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, int):
        available = jax.devices()
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={devices}: this job has {len(available)} device(s)")
        if devices != len(available) and jax.process_count() > 1:
            raise ValueError("a device subset is only supported in single-process runs")
        devices = available[:devices]
    return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


def instance_sharding(mesh: Mesh) -> NamedSharding:
    """Shard the leading (instance) axis over the mesh; replicate everything else."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def to_global(host: Any, sharding: NamedSharding) -> Any:
    """Place a pytree of host arrays (identical in every process) as global sharded arrays."""

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, host)


def to_host(tree: Any) -> Any:
    """Copy a pytree of (possibly multi-process) arrays to NumPy, whole, in every process."""
    from jax.experimental import multihost_utils

    def get(x: Any) -> np.ndarray:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)


def agree(values: npt.ArrayLike | float | bool, how: str) -> np.ndarray:
    """Combine a small host value across processes ("any", "min" or "max"); identity with one process."""
    values = np.asarray(values)
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    stacked = np.asarray(multihost_utils.process_allgather(values))
    return {"any": np.any, "min": np.min, "max": np.max}[how](stacked, axis=0)


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
