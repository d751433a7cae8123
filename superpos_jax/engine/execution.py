"""How a sweep is laid out on the hardware: devices, equal padded blocks, the memory budget.

A sweep of N instances runs on a mesh of D devices in blocks of B instances, B a multiple of
D; all blocks have the same size (the last is padded by repeating the last instance), so
one compiled program serves every block. B is the largest size whose working set fits the
memory budget, or `max_instances_per_call` when given; the blocks are then made as equal
as possible, so padding stays below D instances per block.

On CPU devices B is further capped so that one call's working set stays near the caches
(`cpu_block_bytes`, 8 MiB per device by default): a sweep of 1024 n=20, m=5 models then runs
~5× faster than as one block (see benchmarks/RESULTS.md). Accelerators get the biggest block.

The working set is measured, not guessed: a probe block is compiled (`Trainer.lower_run`)
and XLA's own memory analysis (arguments, temporaries, outputs, less donated aliases, per
device) gives the bytes per instance; `plan_sweep` does this once per trainer and shape (the
cache is this module's, keyed weakly by trainer). Padding only repeats a real instance, so
it never makes NaNs, and it is dropped from every result.
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from superpos_jax.engine.distributed import agree, instance_sharding, sweep_mesh
from superpos_jax.engine.trainer import Trainer


@dataclass(frozen=True)
class Execution:
    """Where and in what pieces a sweep runs; none of this changes its results.

    Attributes:
        mesh: the device mesh (default: every device of every process; in a single process,
            a sweep of fewer instances than devices runs on the first `n_instances` devices,
            so no device only computes padding).
        max_instances_per_call: cap on the instances per compiled call (rounded down to a
            multiple of the device count, at least one per device). Default: from the budget.
        memory_fraction: share of each device's memory (host RAM for CPU devices, split
            between them) that one call's working set plus all resident states may use.
        cpu_block_bytes: on CPU devices, the working set per call and device to aim for
            (cache-sized blocks are faster there); None for no such cap.
    """

    mesh: Mesh | None = None
    max_instances_per_call: int | None = None
    memory_fraction: float = 0.5
    cpu_block_bytes: float | None = 8.0 * 2**20

    def __post_init__(self) -> None:
        m = self.max_instances_per_call
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m <= 0):
            raise ValueError(f"max_instances_per_call must be a positive integer, got {m!r}")
        if not 0.0 < self.memory_fraction <= 1.0:
            raise ValueError(f"memory_fraction must lie in (0, 1], got {self.memory_fraction!r}")

    def resolved_mesh(self, n_instances: int | None = None) -> Mesh:
        """`mesh`, or the default mesh for a sweep of `n_instances` (see `mesh`)."""
        if self.mesh is not None:
            return self.mesh
        if n_instances is not None and jax.process_count() == 1 and 0 < n_instances < jax.device_count():
            return sweep_mesh(n_instances)
        return sweep_mesh()


@dataclass(frozen=True)
class Footprint:
    """Bytes per instance on one device: `call` while a block runs, `resident` held between calls."""

    call: float
    resident: float


@dataclass(frozen=True)
class BlockPlan:
    """The instance axis cut into `n_blocks` equal blocks of `block_size` instances."""

    n_instances: int
    n_devices: int
    block_size: int
    n_blocks: int
    footprint: Footprint | None = None
    budget_bytes: float | None = None

    @property
    def padded_size(self) -> int:
        return self.block_size * self.n_blocks

    def describe(self) -> str:
        text = (
            f"{self.n_instances} instances on {self.n_devices} device(s): {self.n_blocks} block(s) of "
            f"{self.block_size} (padded to {self.padded_size})"
        )
        if self.footprint is not None and self.budget_bytes is not None:
            per_call = (self.footprint.call * self.block_size + self.footprint.resident * self.padded_size)
            text += (
                f", ~{per_call / self.n_devices / 2**20:,.1f} MiB of a {self.budget_bytes / 2**20:,.0f} MiB "
                "budget per device"
            )
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_instances": self.n_instances, "n_devices": self.n_devices, "block_size": self.block_size,
            "n_blocks": self.n_blocks, "padded_size": self.padded_size,
            "bytes_per_instance": None if self.footprint is None else vars(self.footprint),
            "budget_bytes_per_device": self.budget_bytes,
        }

    def pad(self, host: Any) -> Any:
        """Pad a pytree of host arrays (leading instance axis) to `padded_size` by repeating the last row."""
        extra = self.padded_size - self.n_instances
        return jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) if extra else a, host)

    def split(self, host: Any) -> list[Any]:
        """Cut a padded pytree into its blocks."""
        b = self.block_size
        return [jax.tree.map(lambda a, i=i: a[i * b : (i + 1) * b], host) for i in range(self.n_blocks)]

    def join(self, blocks: list[Any]) -> Any:
        """Concatenate host blocks and drop the padding."""
        return jax.tree.map(lambda *a: np.concatenate(a)[: self.n_instances], *blocks)


def plan_blocks(
    n_instances: int,
    n_devices: int,
    *,
    max_instances_per_call: int | None = None,
    footprint: Footprint | None = None,
    budget_bytes: float | int | None = None,
    target_bytes: float | int | None = None,
) -> BlockPlan:
    """Choose equal blocks for `n_instances` on `n_devices` (pure arithmetic).

    The cap per call is `max_instances_per_call` if given, else the largest multiple of
    `n_devices` with `footprint.call * per_device + footprint.resident * n_instances / n_devices
    <= budget_bytes` (per device) and, if `target_bytes` is given, `footprint.call *
    per_device <= target_bytes` (at least one instance per device); else everything in one block.

    Raises:
        MemoryError: the states alone exceed the budget, or not even one instance per device fits.
    """
    if n_instances <= 0:
        raise ValueError(f"a sweep needs at least one instance, got {n_instances}")
    per_device_total = math.ceil(n_instances / n_devices)
    if max_instances_per_call is not None:
        cap = max(1, max_instances_per_call // n_devices)
    elif footprint is not None and budget_bytes is not None:
        resident = footprint.resident * per_device_total
        if resident >= budget_bytes:
            raise MemoryError(
                f"the states of {n_instances} instances need ~{resident / 2**20:,.0f} MiB per device, "
                f"more than the {budget_bytes / 2**20:,.0f} MiB budget; use more devices or a smaller grid"
            )
        cap = int((budget_bytes - resident) // max(footprint.call, 1.0))
        if cap < 1:
            raise MemoryError(
                f"one instance needs ~{footprint.call / 2**20:,.0f} MiB per call, more than the "
                f"{(budget_bytes - resident) / 2**20:,.0f} MiB left of the budget per device"
            )
        if target_bytes is not None:
            cap = min(cap, max(1, int(target_bytes // max(footprint.call, 1.0))))
    else:
        cap = per_device_total
    cap = min(cap, per_device_total)
    n_blocks = math.ceil(per_device_total / cap)
    per_device = math.ceil(per_device_total / n_blocks)
    budget = None if budget_bytes is None else float(budget_bytes)
    return BlockPlan(n_instances, n_devices, per_device * n_devices, n_blocks, footprint, budget)


def device_memory_limit(device: jax.Device) -> int | None:
    """The device's memory limit in bytes (`memory_stats()["bytes_limit"]`), or None where the
    backend reports none (CPU devices: they share the host's RAM)."""
    try:
        stats = device.memory_stats()
    except (AttributeError, RuntimeError, NotImplementedError):
        stats = None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def host_ram_bytes() -> int:
    """Physical memory of this host."""
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def memory_budget(mesh: Mesh, fraction: float) -> float:
    """Bytes per device that a sweep may use: `fraction` of the device's limit (for CPU
    devices, of the host's RAM shared between this process's devices), agreed (min) across processes."""
    limit = device_memory_limit(mesh.devices.flat[0])
    if limit is not None:
        budget = fraction * float(limit)
    else:
        local = sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())
        budget = fraction * host_ram_bytes() / max(local, 1)
    return float(agree(np.float64(budget), "min"))


# Footprints measured per trainer and probe signature: one probe compile per trainer and
# shape, not per sweep. Weak keys, so the cache never keeps a trainer alive.
_FOOTPRINTS: weakref.WeakKeyDictionary[Trainer, dict[Any, Footprint | None]] = weakref.WeakKeyDictionary()


def measure_footprint(trainer: Trainer, hparams_block: Any, keys_block: Any, n_steps: int | None = None
                      ) -> Footprint | None:
    """Per-instance, per-device bytes of `trainer.run` on a probe block (arrays or
    `jax.ShapeDtypeStruct`s sharded over `trainer.mesh`) of `n_steps` (default `log_every`;
    the working set does not depend on it), from XLA's memory analysis of the compiled program
    (None where the backend gives none). Cached per trainer and shape. The probe's program is
    handed to the trainer (`Trainer.keep_compiled`): a sweep whose block and first call have the
    probe's shapes runs it rather than compiling it again."""
    n = int(np.shape(keys_block)[0])
    n_steps = trainer.log_every if n_steps is None else n_steps
    signature = (n, n_steps, str(jax.tree.map(lambda a: (a.shape, str(a.dtype)), (hparams_block, keys_block))))
    cache = _FOOTPRINTS.setdefault(trainer, {})
    if signature not in cache:
        cache[signature] = _probe(trainer, hparams_block, keys_block, n // trainer.mesh.size, n_steps)
    return cache[signature]


def _probe(trainer: Trainer, hparams_block: Any, keys_block: Any, per_device: int, n_steps: int) -> Footprint | None:
    state = jax.eval_shape(trainer.init, hparams_block, keys_block)
    try:
        compiled = trainer.lower_run(state, hparams_block, n_steps).compile()
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        return None
    if trainer.task.stream is None:
        trainer.keep_compiled(compiled, state, hparams_block, n_steps)
    if stats is None:
        return None
    shared = sum(a.nbytes for a in jax.tree.leaves(trainer.shared))  # once per device, not per instance
    args = float(stats.argument_size_in_bytes) - shared
    working = float(stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes)
    return Footprint(call=working / per_device, resident=args / per_device)


def plan_sweep(trainer: Trainer, hparams: Any, keys: Any, execution: Execution, n_steps: int | None = None
               ) -> BlockPlan:
    """The block plan of a sweep of `trainer` (already on `execution`'s mesh) over host
    `hparams` and `keys` (one per instance): the cap, or one block when the instances fit on
    the devices at one each, or else blocks sized from a probe's measured footprint (a probe
    of `n_steps`, the sweep's first call, when given: see `measure_footprint`)."""
    key_data = np.asarray(jax.random.key_data(keys))
    n, n_devices = key_data.shape[0], trainer.mesh.size
    if execution.max_instances_per_call is not None:
        return plan_blocks(n, n_devices, max_instances_per_call=execution.max_instances_per_call)
    if n <= n_devices:
        return plan_blocks(n, n_devices)
    on_cpu = trainer.mesh.devices.flat[0].platform == "cpu"
    sharding = instance_sharding(trainer.mesh)
    abstract = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)  # noqa: E731
    impl = jax.random.key_impl(keys)

    def probe_block(size: int) -> tuple[Any, Any]:
        rows = np.minimum(np.arange(size), n - 1)
        probe_keys = abstract(jax.eval_shape(lambda d: jax.random.wrap_key_data(d, impl=impl), key_data[rows]))
        return jax.tree.map(lambda a: abstract(np.asarray(a)[rows]), hparams), probe_keys

    probe = min(8, -(-n // n_devices)) * n_devices
    if on_cpu and execution.cpu_block_bytes is not None:
        # An instance whose state alone is a good share of the CPU block target will run one
        # per device: probe that block, whose program the sweep then runs (see
        # `measure_footprint`); small instances are probed several per device, so that fixed
        # costs do not count as theirs.
        state = jax.eval_shape(trainer.init, *probe_block(n_devices))
        per_instance = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state)) / n_devices
        if 4 * per_instance >= execution.cpu_block_bytes:
            probe = n_devices
    footprint = measure_footprint(trainer, *probe_block(probe), n_steps)
    if footprint is None:
        return plan_blocks(n, n_devices)
    return plan_blocks(
        n, n_devices, footprint=footprint, budget_bytes=memory_budget(trainer.mesh, execution.memory_fraction),
        target_bytes=execution.cpu_block_bytes if on_cpu else None,
    )
