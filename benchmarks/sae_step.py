"""SAE training throughput: our engine's step vs a PyTorch reference step, side by side.

What is measured
----------------
Both sides train the same sparse autoencoder (d_in = 512, d_sae = 16 × d_in = 8192, batch
4096 by default) on the same activations: a fixed float32 array of `--rows` synthetic
ground-truth activations (`sources.GroundTruthSource` with a fixed key, materialised once).
Every step draws a batch of rows uniformly with replacement from that array.

* **superpos_jax**: `make_trainer(sae_task(SAETraining(kind, ...), ArrayRows(x)),
  recipe_optim(...))`, exactly as the experiments train SAEs. `trainer.run(state, hp, n)` is one
  compiled `lax.scan` of n steps; time per step = call time / n (compile and a warm-up call
  excluded).
* **PyTorch reference**: an eager implementation of the same architecture and recipe, as a
  researcher would write it: `nn.Parameter`s W_enc (d_sae, d_in), b_enc, W_dec (d_in, d_sae),
  b_dec; x̄ = x − b_dec; `torch.optim.Adam`; unit-norm decoder (the gradient component
  parallel to each decoder column removed before the step, columns renormalised after).
  `--kind relu` (default): the 2023 recipe, loss ‖x − x̂‖² + λ‖f‖₁. `--kind topk`: k = 32 per
  row (`torch.topk`), plus α·AuxK over the dead latents (a latent is dead after `dead_steps`
  steps without firing, tracked every step; AuxK runs only when some latent is dead).
  `torch.set_num_threads(os.cpu_count())`; each step gathers its batch with `torch.randint`.

* **superpos_jax, sparse kernels** (`--kind topk`): the same engine and task with
  `TopK(k_max=32)` — top_k of each row, decode by gathering the 32 active W_dec columns, a
  sparse backward (scatter-adds), AuxK skipped when no latent is dead (`sae/sparse.py`). The
  dense path above is then labelled "dense reference path".
* **SAELens** (if `sae_lens` is importable; `--no-saelens` skips it): SAELens's own
  `TopKTrainingSAE` / `StandardTrainingSAE` trained by `SAETrainer._train_step` (its forward,
  dead-latent bookkeeping, backward, gradient clipping at norm 1, Adam), same d_in, d_sae, k,
  λ, lr, dead window and batches drawn the same way; its own initialisation, and TopK without a
  decoder-norm constraint (`rescale_acts_by_decoder_norm=False`), as SAELens trains it.

`--compile` also times tracing/lowering and XLA compilation of every architecture's init and
run programs (one instance; the k-sparse ones dense and sparse) and records the HLO size.

Faithfulness check: on a tiny configuration both sides start from the same parameters (ours,
copied into torch) and take 3 steps on the same batches; the losses, the first step's
gradients and the final parameters must agree to ~1e-4 ("faithful: yes/no"). For topk half of
the latents start dead, so AuxK is exercised.

Utilisation: FLOPs per step = `sae.scaling.sae_training_flops(d_in, d_sae, batch)` =
12·batch·d_in·d_sae (6 matmuls of batch × d_in × d_sae); achieved FLOP/s divided by the
measured rate of one dense jitted `jnp.dot` of (batch, d_in) @ (d_in, d_sae) on the same device
(median of repeats). Torch's own matmul rate is printed for reference.

Sweep: 8 SAEs with 8 λ values (or k values for topk) as ONE vmapped `trainer.run` (8
instances) vs 8 sequential single-instance `trainer.run` calls over the same steps (compile
excluded for both). On a small CPU this runs at a reduced size (`--sweep-*` options; the
default is reduced on CPU and full size on accelerators).

Usage::

    python benchmarks/sae_step.py                      # relu, full size step, reduced sweep on CPU
    python benchmarks/sae_step.py --kind topk
    python benchmarks/sae_step.py --quick              # small configuration, < 1 minute
    python benchmarks/sae_step.py --json out.json --write   # JSON + section in RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from superpos_jax.sae import sources

try:
    from benchmarks.toy_sweep import cpu_name, timed_runs, usable_cores, write_section
    from benchmarks.toy_sweep import import_torch as _import_torch
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    from toy_sweep import cpu_name, timed_runs, usable_cores, write_section  # type: ignore[no-redef]
    from toy_sweep import import_torch as _import_torch  # type: ignore[no-redef]
from superpos_jax.sae.architectures import get as get_architecture
from superpos_jax.sae.training import SAETraining, recipe_optim, sae_hparams, sae_task
from superpos_jax.sae.scaling import sae_training_flops
from superpos_jax.engine.trainer import instance_keys, make_trainer

LEARNING_RATE = 4e-4
L1_COEFFICIENT = 5.0
TOPK_K = 32
DEAD_STEPS = 1000
DATA_KEY = 1234
SWEEP_SIZE = 8
MATMUL_REPEATS = 15
DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION_PREFIX = "## SAE training step"


# --------------------------------------------------------------------------------------
# Shared data
# --------------------------------------------------------------------------------------


def activations(n_rows: int, d_in: int) -> np.ndarray:
    """A fixed (n_rows, d_in) float32 array of synthetic ground-truth activations
    (4·d_in features, firing ∝ 0.999**i, 20 active per example on average)."""
    n_gt = 4 * d_in
    dictionary = sources.ground_truth_dictionary(n_gt, d_in, key=jax.random.key(DATA_KEY))
    source = sources.GroundTruthSource(dictionary, sources.decaying_probabilities(n_gt, 0.999, 20.0))
    chunk = min(8192, n_rows)
    draw = jax.jit(lambda key: source.sample(key, chunk))
    keys = jax.random.split(jax.random.key(DATA_KEY + 1), -(-n_rows // chunk))
    out = np.concatenate([np.asarray(draw(k)) for k in keys])[:n_rows]
    return np.ascontiguousarray(out, np.float32)


def coefficient_kwargs(kind: str, n: int) -> dict[str, list[float]]:
    """The swept coefficient of `kind` for n instances (λ for relu, k for topk)."""
    if kind == "topk":
        return {"k": [float(TOPK_K * 2 ** (i % 4 - 1)) for i in range(n)] if n > 1 else [float(TOPK_K)]}
    return {"l1_coefficient": [L1_COEFFICIENT * 2.0 ** (i - n // 2) for i in range(n)] if n > 1 else [L1_COEFFICIENT]}


def our_training(kind: str, d_in: int, d_sae: int, batch: int, k_max: int | None = None) -> SAETraining:
    return SAETraining(kind, d_in, d_sae, batch_size=batch, dead_steps=DEAD_STEPS, k_max=k_max)


def make_ours(kind: str, x: np.ndarray, d_sae: int, batch: int, n_steps: int, n_instances: int = 1,
              k_max: int | None = None):
    """(trainer, hparams, state) of our engine for n_instances SAEs on the rows of x (k-sparse
    kinds on the sparse kernels when `k_max` is given)."""
    training = our_training(kind, x.shape[1], d_sae, batch, k_max)
    source = sources.ArrayRows(jnp.asarray(x))
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, n_steps, LEARNING_RATE),
                           log_every=n_steps)
    hp = jax.device_put(sae_hparams(training, **coefficient_kwargs(kind, n_instances)))
    state = trainer.init(hp, instance_keys(np.arange(n_instances)))
    return trainer, hp, state


# --------------------------------------------------------------------------------------
# PyTorch reference (lazily imported)
# --------------------------------------------------------------------------------------


def import_torch():
    torch = _import_torch()
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
    return torch


def make_torch_reference(torch, kind: str, x: np.ndarray, d_sae: int, batch: int,
                         coefficient: float, device: str = "cpu", seed: int = 0):
    """The reference SAE, optimizer and step. Returns `(model, step)`; `step(xb=None)` trains
    on `xb` if given, else on a random batch of rows of x, and returns the loss tensor."""
    nn = torch.nn
    torch.manual_seed(seed)
    dev = torch.device(device)
    data = torch.as_tensor(x, device=dev)
    n_rows, d_in = data.shape

    class SAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            W = torch.randn(d_in, d_sae, device=dev)
            W = W / W.norm(dim=0, keepdim=True)
            self.W_enc = nn.Parameter(W.T.contiguous())
            self.b_enc = nn.Parameter(torch.zeros(d_sae, device=dev))
            self.W_dec = nn.Parameter(W.clone())
            self.b_dec = nn.Parameter(data[:4096].median(dim=0).values.clone())
            self.register_buffer("since_fired", torch.zeros(d_sae, dtype=torch.long, device=dev))

        def forward(self, xb):
            z = (xb - self.b_dec) @ self.W_enc.T + self.b_enc
            if kind == "topk":
                vals, idx = z.topk(int(coefficient), dim=-1)
                f = torch.zeros_like(z).scatter(-1, idx, torch.relu(vals))
            else:
                f = torch.relu(z)
            x_hat = f @ self.W_dec.T + self.b_dec
            return z, f, x_hat

    model = SAE()
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    k_aux = d_in // 2
    aux_coef = 1.0 / 32.0

    def step(xb=None):
        if xb is None:
            xb = data[torch.randint(0, n_rows, (batch,), device=dev)]
        dead = model.since_fired >= DEAD_STEPS
        opt.zero_grad(set_to_none=True)
        z, f, x_hat = model(xb)
        recon = (xb - x_hat).pow(2).sum(-1).mean()
        if kind == "topk":
            loss = recon
            if dead.any():
                masked = z.masked_fill(~dead, float("-inf"))
                vals, idx = masked.topk(min(k_aux, int(dead.sum())), dim=-1)
                f_aux = torch.zeros_like(z).scatter(-1, idx, torch.relu(vals))
                e = (xb - x_hat).detach()
                loss = loss + aux_coef * (e - f_aux @ model.W_dec.T).pow(2).sum(-1).mean()
        else:
            loss = recon + coefficient * f.abs().sum(-1).mean()
        loss.backward()
        with torch.no_grad():
            W, g = model.W_dec, model.W_dec.grad
            g -= (W * g).sum(0, keepdim=True) / W.pow(2).sum(0, keepdim=True) * W
        opt.step()
        with torch.no_grad():
            model.W_dec /= model.W_dec.norm(dim=0, keepdim=True)
            fired = (f > 0).any(0)
            model.since_fired.copy_(torch.where(fired, 0, model.since_fired + 1))
        return loss

    return model, step


# --------------------------------------------------------------------------------------
# Faithfulness: same parameters, same batches, 3 steps
# --------------------------------------------------------------------------------------


def faithfulness_check(torch, kind: str, n_steps: int = 3, sparse: bool = False) -> dict[str, Any]:
    """Ours (the engine's `step_one`; topk on the sparse kernels if `sparse`) vs the torch step
    on a tiny config from identical parameters and batches; returns the largest relative
    discrepancies and the verdict."""
    d_in, d_sae, batch, k = 16, 64, 32, 4
    x = activations(256, d_in)
    training = our_training(kind, d_in, d_sae, batch, k if sparse else None)
    task = sae_task(training, sources.ArrayRows(jnp.asarray(x)))
    trainer = make_trainer(task, recipe_optim(training, n_steps, LEARNING_RATE))
    coef = {"k": [float(k)]} if kind == "topk" else {"l1_coefficient": [0.3]}
    hp_b = jax.device_put(sae_hparams(training, **coef))
    state = jax.tree.map(lambda a: a[0], trainer.init(hp_b, instance_keys([0])))
    hp = {name: v[0] for name, v in hp_b.items()}
    if kind == "topk":  # half the latents start dead, so AuxK is exercised
        since = jnp.where(jnp.arange(d_sae) < d_sae // 2, DEAD_STEPS, 0).astype(jnp.int32)
        state = eqx.tree_at(lambda s: s.extra["since_fired"], state, since)

    model, step = make_torch_reference(torch, kind, x, d_sae, batch, float(k) if kind == "topk" else 0.3)
    names = ("W_enc", "b_enc", "W_dec", "b_dec")
    with torch.no_grad():
        for name in names:
            getattr(model, name).copy_(torch.from_numpy(np.array(getattr(state.params, name))))
        model.since_fired.copy_(torch.from_numpy(np.array(state.extra["since_fired"])).long())

    step_one = jax.jit(trainer.step_one)
    grad_fn = jax.jit(jax.grad(lambda p, xb, h: training.arch.loss(p, xb, h)[0]))

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))

    loss_err, grad_err = 0.0, 0.0
    for i in range(n_steps):
        hp_prepared = task.prepare(hp, state, shared=trainer.shared)
        xb = np.array(trainer.batch(state, hp_prepared))
        if i == 0:
            ours_grad = grad_fn(state.params, jnp.asarray(xb), hp_prepared)
        state, ours_loss = step_one(state, hp)
        t_loss = step(torch.as_tensor(xb))
        loss_err = max(loss_err, abs(float(ours_loss) - t_loss.item()) / max(abs(float(ours_loss)), 1e-12))
        if i == 0:
            # torch's W_dec.grad has had its parallel part removed; compare the raw ones
            for name in ("W_enc", "b_enc", "b_dec"):
                grad_err = max(grad_err, rel(getattr(model, name).grad.numpy(), np.asarray(getattr(ours_grad, name))))
    param_err = max(rel(getattr(model, n).detach().numpy(), np.asarray(getattr(state.params, n))) for n in names)
    ok = max(loss_err, grad_err, param_err) < 1e-4
    return {"config": {"d_in": d_in, "d_sae": d_sae, "batch": batch, "steps": n_steps, **({"k": k} if kind == "topk" else {"l1": 0.3})},
            "max_rel_loss_diff": loss_err, "max_rel_grad_diff": grad_err, "max_rel_param_diff": param_err,
            "faithful": ok}


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def time_ours(kind: str, x: np.ndarray, d_sae: int, batch: int, steps: int, repeats: int,
              k_max: int | None = None) -> list[float]:
    """Seconds per step of each timed `trainer.run(…, steps)` call (one instance)."""
    trainer, hp, state = make_ours(kind, x, d_sae, batch, steps, k_max=k_max)
    seconds, state, trace = timed_runs(lambda s: trainer.run(s, hp, steps), state, repeats)
    out = [t / steps for t in seconds]
    if not np.all(np.isfinite(np.asarray(trace))):
        print("[sae_step] warning: non-finite losses on our side")
    return out


def time_torch(torch, kind: str, x: np.ndarray, d_sae: int, batch: int, steps: int, repeats: int,
               device: str) -> list[float]:
    """Seconds per step of each timed block of `steps` reference steps (2 warm-up steps)."""
    coef = float(TOPK_K) if kind == "topk" else L1_COEFFICIENT
    _, step = make_torch_reference(torch, kind, x, d_sae, batch, coef, device)
    return _time_torch_steps(torch, step, steps, repeats, device, "the reference")


def _time_torch_steps(torch, step: Callable[[], Any], steps: int, repeats: int, device: str, what: str) -> list[float]:
    """Seconds per step of each of `repeats` timed blocks of `steps` calls of a torch `step`
    (after 2 warm-up calls), synchronising CUDA around each block."""
    sync: Callable[[], None] = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        step()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        sync()
        out.append((time.perf_counter() - t0) / steps)
    if not bool(torch.isfinite(loss)):
        print(f"[sae_step] warning: non-finite losses in {what}")
    return out


def make_saelens(torch, kind: str, x: np.ndarray, d_sae: int, batch: int, device: str = "cpu"):
    """SAELens's own training SAE and trainer (`TopKTrainingSAE` / `StandardTrainingSAE`,
    `SAETrainer`) on the same config; returns `(sae, trainer, step)` where `step(xb=None)` is
    `SAETrainer._train_step` (forward, dead-latent bookkeeping, backward, clip at norm 1, Adam)
    on `xb` or a random batch of rows of x. None if sae_lens is not importable.

    Same config as ours: k = TOPK_K, AuxK α = 1/32, dead after DEAD_STEPS (topk), or λ =
    L1_COEFFICIENT (relu); lr LEARNING_RATE, constant schedule. SAELens's differences are its
    own: TopK without a unit-norm decoder constraint (`rescale_acts_by_decoder_norm=False`),
    gradient clipping at global norm 1, its initialisation."""
    try:
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.training.sae_trainer import SAETrainer
    except ImportError as err:
        print(f"[sae_step] sae_lens not importable ({err}); its column is skipped")
        return None
    d_in = x.shape[1]
    if kind == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=TOPK_K, aux_loss_coefficient=1.0 / 32.0,
                                                    rescale_acts_by_decoder_norm=False, device=device))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=L1_COEFFICIENT,
                                                            device=device))
    cfg = SAETrainerConfig(total_training_samples=batch * 10**6, train_batch_size_samples=batch, lr=LEARNING_RATE,
                           lr_end=LEARNING_RATE,
                           dead_feature_window=DEAD_STEPS, device=device,
                           logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))
    data = torch.as_tensor(x, device=device)

    def step(xb=None):
        if xb is None:
            xb = data[torch.randint(0, data.shape[0], (batch,), device=device)]
        out = trainer._train_step(sae, xb)
        trainer.n_training_steps += 1
        return out.loss

    return sae, trainer, step


def time_saelens(torch, kind: str, x: np.ndarray, d_sae: int, batch: int, steps: int, repeats: int,
                 device: str) -> list[float] | None:
    """Seconds per step of each timed block of `steps` SAELens training steps (2 warm-up)."""
    made = make_saelens(torch, kind, x, d_sae, batch, device)
    if made is None:
        return None
    _, _, step = made
    return _time_torch_steps(torch, step, steps, repeats, device, "SAELens")


def compile_times(x: np.ndarray, d_sae: int, batch: int, steps: int, k_max: int) -> dict[str, dict[str, float]]:
    """Per architecture (k-sparse ones dense and with `k_max`): seconds to trace+lower and to
    compile the init and run programs of one instance, and the run program's HLO size."""
    out = {}
    variants = [(name, None) for name in ("relu", "topk", "batchtopk", "jumprelu", "gated")]
    variants += [("topk", k_max), ("batchtopk", k_max)]
    for kind, km in variants:
        training = our_training(kind, x.shape[1], d_sae, batch, km)
        coef = {training.arch.swept: [float(TOPK_K) if training.arch.swept == "k" else L1_COEFFICIENT]}
        trainer = make_trainer(sae_task(training, sources.ArrayRows(jnp.asarray(x))),
                               recipe_optim(training, steps, LEARNING_RATE), log_every=steps)
        hp = jax.device_put(sae_hparams(training, **coef))
        keys = instance_keys(np.arange(1))
        t0 = time.perf_counter()
        lowered_init = trainer.lower_init(hp, keys)
        t1 = time.perf_counter()
        lowered_init.compile()
        t2 = time.perf_counter()
        state = jax.eval_shape(lambda: trainer.init(hp, keys))
        t3 = time.perf_counter()
        lowered = trainer.lower_run(state, hp, steps)
        t4 = time.perf_counter()
        lowered.compile()
        t5 = time.perf_counter()
        label = kind + (f" (sparse, k_max={km})" if km else "")
        out[label] = {"init_lower_s": t1 - t0, "init_compile_s": t2 - t1, "run_lower_s": t4 - t3,
                      "run_compile_s": t5 - t4, "run_hlo_chars": len(lowered.as_text())}
        print(f"compile {label}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in out[label].items())
              + f" (load {os.getloadavg()[0]:.2f})", flush=True)
    return out


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_rate_jax(batch: int, d_in: int, d_sae: int, repeats: int) -> float:
    """FLOP/s of a jitted dense (batch, d_in) @ (d_in, d_sae) jnp.dot (median time)."""
    a = jax.random.normal(jax.random.key(0), (batch, d_in), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (d_in, d_sae), jnp.float32)
    dot = jax.jit(jnp.dot)
    return 2.0 * batch * d_in * d_sae / median_time(lambda: dot(a, b).block_until_ready(), repeats)


def matmul_rate_torch(torch, batch: int, d_in: int, d_sae: int, repeats: int, device: str) -> float:
    a = torch.randn(batch, d_in, device=device)
    b = torch.randn(d_in, d_sae, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run() -> None:
        a @ b
        sync()

    return 2.0 * batch * d_in * d_sae / median_time(run, repeats)


def breakdown_ours(kind: str, x: np.ndarray, d_sae: int, batch: int, repeats: int) -> dict[str, float]:
    """Seconds of pieces of our step (jitted, one instance, fixed batch): loss only,
    loss + gradient, and for topk loss + gradient without the AuxK term (no `dead` key)."""
    training = our_training(kind, x.shape[1], d_sae, batch)
    trainer, hp_b, state_b = make_ours(kind, x, d_sae, batch, 1)
    params = jax.tree.map(lambda a: a[0], state_b.params)
    hp = trainer.task.prepare({k: v[0] for k, v in hp_b.items()}, jax.tree.map(lambda a: a[0], state_b),
                              shared=trainer.shared)
    xb = jnp.asarray(x[:batch])
    arch = get_architecture(training.architecture)
    fwd = jax.jit(lambda p, xb, h: arch.loss(p, xb, h)[0])
    grad = jax.jit(jax.value_and_grad(lambda p, xb, h: arch.loss(p, xb, h)[0]))
    out = {
        "forward_s": median_time(lambda: fwd(params, xb, hp).block_until_ready(), repeats),
        "forward_backward_s": median_time(lambda: jax.block_until_ready(grad(params, xb, hp)), repeats),
    }
    if kind == "topk":
        no_dead = {k: v for k, v in hp.items() if k != "dead"}
        out["forward_backward_without_auxk_s"] = median_time(
            lambda: jax.block_until_ready(grad(params, xb, no_dead)), repeats)
    return out


def breakdown_sparse(x: np.ndarray, d_sae: int, batch: int, k: int, repeats: int) -> dict[str, float]:
    """Seconds of the sparse TopK step's pieces (jitted, one instance, fixed batch): the two
    primitives it cannot avoid (the encoder GEMM over the whole dictionary and `lax.top_k` of
    its rows), their sum (a floor for any exact TopK step on this backend), the sparse loss,
    and the loss + gradient vmapped over one instance, as the engine runs it."""
    training = our_training("topk", x.shape[1], d_sae, batch, k)
    trainer, hp_b, state_b = make_ours("topk", x, d_sae, batch, 1, k_max=k)
    params = jax.tree.map(lambda a: a[0], state_b.params)
    hp = trainer.task.prepare({n: v[0] for n, v in hp_b.items()}, jax.tree.map(lambda a: a[0], state_b),
                              shared=trainer.shared)
    xb = jnp.asarray(x[:batch])
    arch = training.arch
    gemm = jax.jit(lambda p, xb: (xb - p.b_dec[None, :]) @ p.W_enc.T)
    z = gemm(params, xb)
    top = jax.jit(lambda z: jax.lax.top_k(z, k))
    fwd = jax.jit(lambda p, xb, h: arch.loss(p, xb, h)[0])
    grad = jax.jit(jax.vmap(jax.value_and_grad(lambda p, xb, h: arch.loss(p, xb, h)[0]), in_axes=(0, None, 0)))
    hp_v = jax.tree.map(lambda a: jnp.asarray(a)[None], hp)
    out = {
        "encoder_gemm_s": median_time(lambda: gemm(params, xb).block_until_ready(), repeats),
        "top_k_s": median_time(lambda: jax.block_until_ready(top(z)), repeats),
    }
    out["gemm_plus_top_k_s"] = out["encoder_gemm_s"] + out["top_k_s"]
    out["sparse_forward_s"] = median_time(lambda: fwd(params, xb, hp).block_until_ready(), repeats)
    out["sparse_forward_backward_vmapped_s"] = median_time(
        lambda: jax.block_until_ready(grad(state_b.params, xb, hp_v)), repeats)
    return out


def time_sweep(kind: str, x: np.ndarray, d_sae: int, batch: int, steps: int, repeats: int) -> dict[str, Any]:
    """8 SAEs (8 coefficients) as one vmapped call vs 8 sequential single-instance calls."""
    vm_trainer, vm_hp, vm_state = make_ours(kind, x, d_sae, batch, steps, SWEEP_SIZE)
    vm_state, trace = vm_trainer.run(vm_state, vm_hp, steps)
    jax.block_until_ready((vm_state, trace))
    one_hp = [jax.tree.map(lambda a, i=i: a[i:i + 1], vm_hp) for i in range(SWEEP_SIZE)]
    seq_states = [jax.tree.map(lambda a, i=i: a[i:i + 1], vm_state) for i in range(SWEEP_SIZE)]
    seq_trainer, _, warm = make_ours(kind, x, d_sae, batch, steps, 1)
    jax.block_until_ready(seq_trainer.run(warm, one_hp[0], steps))  # compile the 1-instance program
    vmapped, sequential = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        vm_state, trace = vm_trainer.run(vm_state, vm_hp, steps)
        jax.block_until_ready((vm_state, trace))
        vmapped.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(SWEEP_SIZE):
            seq_states[i], tr = seq_trainer.run(seq_states[i], one_hp[i], steps)
            jax.block_until_ready((seq_states[i], tr))
        sequential.append(time.perf_counter() - t0)
    v, s = statistics.median(vmapped), statistics.median(sequential)
    return {"d_in": x.shape[1], "d_sae": d_sae, "batch": batch, "steps": steps, "instances": SWEEP_SIZE,
            "coefficients": coefficient_kwargs(kind, SWEEP_SIZE), "vmapped_s": vmapped,
            "sequential_s": sequential, "vmapped_median_s": v, "sequential_median_s": s, "speedup": s / v}


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def machine_info(torch) -> dict[str, str]:
    cores = usable_cores()
    d = jax.devices()[0]
    info = {
        "machine": f"{cpu_name()}, {cores} cores ({platform.system()} {platform.machine()})",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax device": f"{d.platform}: {getattr(d, 'device_kind', '') or d.platform}",
        "torch": torch.__version__ if torch is not None else "not run",
    }
    if torch is not None:
        info["torch threads"] = str(torch.get_num_threads())
    return info


def summary_table(res: dict[str, Any]) -> str:
    cfg, flops = res["config"], res["flops_per_step"]
    rate = res["matmul_flops_per_s_jax"]
    tokens = cfg["batch"]
    lines = [
        "| implementation | s/step (median) | min–max | tokens/s | TFLOP/s | of jnp.dot rate | ours / reference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines[0] = lines[0].replace("| ours / reference |", "| PyTorch ref. / this | SAELens / this |")
    lines[1] = lines[1] + "---:|"
    ref, lens = res.get("torch"), res.get("saelens")
    rows = (("superpos_jax" + (" (dense reference path)" if res.get("ours_sparse") else ""), res["ours"]),
            (f"superpos_jax (sparse kernels, k_max={cfg.get('k')})", res.get("ours_sparse")),
            ("PyTorch reference", ref), (f"SAELens {res.get('saelens_version', '')} `SAETrainer._train_step`", lens))
    for label, r in rows:
        if r is None:
            continue
        med = r["median_s_per_step"]
        ratios = [f"{o['median_s_per_step'] / med:.2f}×" if o else "n/a" for o in (ref, lens)]
        lines.append(f"| {label} | {med:.4f} | {min(r['s_per_step']):.4f}–{max(r['s_per_step']):.4f} | "
                     f"{tokens / med:,.0f} | {flops / med / 1e12:.3f} | {flops / med / rate:.0%} | "
                     f"{ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def section(res: dict[str, Any]) -> tuple[str, str]:
    """(heading, markdown body) of one run's section in RESULTS.md."""
    info, cfg = res["machine"], res["config"]
    heading = f"{SECTION_PREFIX} ({cfg['kind']}) — {res['date'][:10]} — {info['machine']} — {info['jax device']}"
    lines = [f"`{res['command'].strip()}`", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    end = res.get("load_average_end")
    if end:
        lines.append("- load average at end: " + " ".join(f"{v:.2f}" for v in end))
    coef = f"k={cfg['k']}" if "k" in cfg else f"λ={cfg['l1_coefficient']}"
    lines.append(f"- config: d_in={cfg['d_in']}, d_sae={cfg['d_sae']}, batch={cfg['batch']}, {coef}, "
                 f"lr={cfg['learning_rate']}, {cfg['rows']} rows, {cfg['steps']} steps × {cfg['repeats']} repeats")
    f = res.get("faithfulness")
    if f:
        fc = ", ".join(f"{k}={v}" for k, v in f["config"].items())
        lines.append(f"- faithful: {'yes' if f['faithful'] else 'no'} (tiny config {fc}, same initial parameters and "
                     f"batches: max relative difference "
                     f"loss {f['max_rel_loss_diff']:.1e}, gradients {f['max_rel_grad_diff']:.1e}, parameters after "
                     f"{f['config']['steps']} steps {f['max_rel_param_diff']:.1e})")
    mm = f"- dense matmul ({cfg['batch']},{cfg['d_in']})@({cfg['d_in']},{cfg['d_sae']}): jnp.dot " \
         f"{res['matmul_flops_per_s_jax'] / 1e9:.1f} GFLOP/s"
    if "matmul_flops_per_s_torch" in res:
        mm += f", torch {res['matmul_flops_per_s_torch'] / 1e9:.1f} GFLOP/s"
    lines += [mm, "", summary_table(res), ""]
    b = res.get("breakdown_ours")
    if b:
        lines.append("Our step, broken down (s, one instance, jitted, median): "
                     + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.3f}" for k, v in b.items()) + ".")
    b = res.get("breakdown_sparse")
    if b:
        lines.append("")
        lines.append("The sparse step, broken down (s, one instance, jitted, median): "
                     + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.3f}" for k, v in b.items()
                                 if v is not None) + ".")
    ct = res.get("compile")
    if ct:
        lines += ["", "Compile (one instance, s; load average at start of each row in the JSON):", "",
                  "| architecture | init lower | init compile | run lower | run compile | run HLO chars |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['init_lower_s']:.2f} | {v['init_compile_s']:.2f} | {v['run_lower_s']:.2f} | "
                  f"{v['run_compile_s']:.2f} | {v['run_hlo_chars']:,} |" for k, v in ct.items()]
    sw = res.get("sweep")
    if sw:
        lines.append("")
        lines.append(f"Sweep of {sw['instances']} SAEs ({', '.join(sw['coefficients'])} = "
                     f"{', '.join(f'{c:g}' for c in next(iter(sw['coefficients'].values())))}), "
                     f"d_in={sw['d_in']}, d_sae={sw['d_sae']}, batch={sw['batch']}, {sw['steps']} steps"
                     + (" (**reduced size** on this machine)" if sw["reduced"] else "")
                     + f": one vmapped call {sw['vmapped_median_s']:.3f} s vs {sw['instances']} sequential calls "
                     f"{sw['sequential_median_s']:.3f} s (medians) → **{sw['speedup']:.2f}×**.")
    return heading, "\n".join(lines)


def write_results(res: dict[str, Any], path: Path) -> None:
    heading, body = section(res)
    write_section(path, heading, body)
    print(f"[sae_step] wrote section to {path}")


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["relu", "topk"], default="relu")
    ap.add_argument("--d-in", type=int, default=512)
    ap.add_argument("--expansion", type=int, default=16, help="d_sae = expansion × d_in (default 16)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=65536, help="rows of the shared activation array")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed call (default 5)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per side (default 3)")
    ap.add_argument("--sweep-d-in", type=int, default=None,
                    help="d_in of the 8-SAE sweep comparison (default: --d-in on accelerators, 128 on CPU)")
    ap.add_argument("--sweep-expansion", type=int, default=None, help="default: --expansion")
    ap.add_argument("--sweep-batch", type=int, default=None,
                    help="default: --batch on accelerators, 1024 on CPU")
    ap.add_argument("--sweep-steps", type=int, default=None, help="default: --steps")
    ap.add_argument("--no-sweep", action="store_true", help="skip the 8-SAE sweep comparison")
    ap.add_argument("--no-saelens", action="store_true", help="skip the SAELens column")
    ap.add_argument("--no-dense", action="store_true", help="topk: skip our dense reference path")
    ap.add_argument("--compile", action="store_true",
                    help="also time lowering and compiling every architecture's programs (one instance)")
    ap.add_argument("--device-only", action="store_true", help="skip torch (JAX side only)")
    ap.add_argument("--torch-device", default="cpu")
    ap.add_argument("--quick", action="store_true",
                    help="d_in 64, ×8, batch 512, 4096 rows, 3 steps, 2 repeats, sweep at that size")
    ap.add_argument("--report", default=None, metavar="JSON",
                    help="run nothing: print (and with --write, write) the section of a saved --json file")
    ap.add_argument("--json", default=None, metavar="PATH", help="write all results as JSON here")
    ap.add_argument("--write", nargs="?", const=str(DEFAULT_RESULTS), default=None, metavar="PATH",
                    help=f"add/replace this run's section in a markdown file (default {DEFAULT_RESULTS.name})")
    args = ap.parse_args(argv)
    if args.quick:
        args.d_in, args.expansion, args.batch, args.rows, args.steps, args.repeats = 64, 8, 512, 4096, 3, 2
    on_cpu = jax.default_backend() == "cpu"
    args.sweep_d_in = args.sweep_d_in or (128 if on_cpu and not args.quick else args.d_in)
    args.sweep_expansion = args.sweep_expansion or args.expansion
    args.sweep_batch = args.sweep_batch or (min(1024, args.batch) if on_cpu else args.batch)
    args.sweep_steps = args.sweep_steps or args.steps
    for name in ("d_in", "expansion", "batch", "rows", "steps", "repeats"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.report:
        res = json.loads(Path(args.report).read_text())
        print("\n\n".join(section(res)))
        if args.write:
            write_results(res, Path(args.write))
        return res
    torch = None if args.device_only else import_torch()
    d_in, batch = args.d_in, args.batch
    d_sae = args.expansion * d_in
    info = machine_info(torch)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    info["load average at start"] = " ".join(f"{v:.2f}" for v in load)
    print("\n".join(f"{k}: {v}" for k, v in info.items()))
    print(f"config: kind={args.kind} d_in={d_in} d_sae={d_sae} batch={batch} rows={args.rows} "
          f"steps={args.steps} repeats={args.repeats} lr={LEARNING_RATE} "
          + (f"k={TOPK_K}" if args.kind == "topk" else f"λ={L1_COEFFICIENT}"), flush=True)

    res: dict[str, Any] = {
        "command": "python benchmarks/sae_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info, "load_average_start": list(load),
        "config": {"kind": args.kind, "d_in": d_in, "d_sae": d_sae, "batch": batch, "rows": args.rows,
                   "steps": args.steps, "repeats": args.repeats, "learning_rate": LEARNING_RATE,
                   **({"k": TOPK_K} if args.kind == "topk" else {"l1_coefficient": L1_COEFFICIENT})},
    }
    if torch is not None:
        res["faithfulness"] = faithfulness_check(torch, args.kind)
        f = res["faithfulness"]
        print(f"faithful: {'yes' if f['faithful'] else 'no'} (max rel. diff: loss {f['max_rel_loss_diff']:.1e}, "
              f"grad {f['max_rel_grad_diff']:.1e}, params after {f['config']['steps']} steps "
              f"{f['max_rel_param_diff']:.1e})", flush=True)

    x = activations(args.rows, d_in)
    res["flops_per_step"] = sae_training_flops(d_in, d_sae, batch)
    res["matmul_flops_per_s_jax"] = matmul_rate_jax(batch, d_in, d_sae, MATMUL_REPEATS)
    print(f"dense jnp.dot ({batch},{d_in})@({d_in},{d_sae}): {res['matmul_flops_per_s_jax'] / 1e9:.1f} GFLOP/s",
          flush=True)
    if torch is not None:
        res["matmul_flops_per_s_torch"] = matmul_rate_torch(torch, batch, d_in, d_sae, MATMUL_REPEATS,
                                                            args.torch_device)
        print(f"dense torch matmul: {res['matmul_flops_per_s_torch'] / 1e9:.1f} GFLOP/s", flush=True)

    def record(s_per_step: list[float]) -> dict[str, Any]:
        med = statistics.median(s_per_step)
        return {"s_per_step": s_per_step, "median_s_per_step": med, "tokens_per_s": batch / med,
                "flops_per_s": res["flops_per_step"] / med,
                "utilisation_vs_jnp_dot": res["flops_per_step"] / med / res["matmul_flops_per_s_jax"]}

    def show(label: str, r: dict[str, Any]) -> None:
        print(f"{label}: {r['median_s_per_step']:.4f} s/step, {r['tokens_per_s']:,.0f} tokens/s "
              f"(load {os.getloadavg()[0]:.2f})", flush=True)

    if args.kind == "topk":
        if torch is not None:
            res["faithfulness_sparse"] = fs = faithfulness_check(torch, args.kind, sparse=True)
            print(f"faithful (sparse kernels): {'yes' if fs['faithful'] else 'no'} (max rel. diff: loss "
                  f"{fs['max_rel_loss_diff']:.1e}, grad {fs['max_rel_grad_diff']:.1e}, params "
                  f"{fs['max_rel_param_diff']:.1e})", flush=True)
        res["ours_sparse"] = record(time_ours(args.kind, x, d_sae, batch, args.steps, args.repeats, k_max=TOPK_K))
        show("superpos_jax (sparse)", res["ours_sparse"])
    if args.kind != "topk" or not args.no_dense:
        res["ours"] = record(time_ours(args.kind, x, d_sae, batch, args.steps, args.repeats))
        show("superpos_jax" + (" (dense)" if args.kind == "topk" else ""), res["ours"])
    else:
        res["ours"] = res.pop("ours_sparse")
    if torch is not None and not args.no_saelens:
        lens = time_saelens(torch, args.kind, x, d_sae, batch, args.steps, args.repeats, args.torch_device)
        if lens is not None:
            import sae_lens
            res["saelens_version"] = sae_lens.__version__
            res["saelens"] = record(lens)
            show("SAELens", res["saelens"])
    if torch is not None:
        res["torch"] = record(time_torch(torch, args.kind, x, d_sae, batch, args.steps, args.repeats,
                                         args.torch_device))
        res["ratio_ours_over_torch"] = res["torch"]["median_s_per_step"] / res["ours"]["median_s_per_step"]
        print(f"PyTorch reference: {res['torch']['median_s_per_step']:.4f} s/step, "
              f"{res['torch']['tokens_per_s']:,.0f} tokens/s; ours / reference = {res['ratio_ours_over_torch']:.2f}×",
              flush=True)
    if args.compile:
        res["compile"] = compile_times(x, d_sae, batch, args.steps, TOPK_K)
    res["breakdown_ours"] = breakdown_ours(args.kind, x, d_sae, batch, args.repeats)
    res["breakdown_ours"]["six_dense_matmuls_s"] = res["flops_per_step"] / res["matmul_flops_per_s_jax"]
    res["breakdown_ours"]["full_step_s"] = res["ours"]["median_s_per_step"]
    print("breakdown (ours, s): " + ", ".join(f"{k} {v:.4f}" for k, v in res["breakdown_ours"].items()), flush=True)
    if args.kind == "topk":
        res["breakdown_sparse"] = breakdown_sparse(x, d_sae, batch, TOPK_K, args.repeats)
        res["breakdown_sparse"]["full_step_s"] = (res.get("ours_sparse") or res["ours"])["median_s_per_step"]
        print("breakdown (sparse, s): " + ", ".join(f"{k} {v:.4f}" for k, v in res["breakdown_sparse"].items()
                                                   if v is not None), flush=True)

    if not args.no_sweep:
        sx = x if args.sweep_d_in == d_in else activations(min(args.rows, 16384), args.sweep_d_in)
        sw = time_sweep(args.kind, sx, args.sweep_expansion * args.sweep_d_in, args.sweep_batch,
                        args.sweep_steps, args.repeats)
        sw["reduced"] = (sw["d_in"], sw["d_sae"], sw["batch"]) != (d_in, d_sae, batch)
        res["sweep"] = sw
        print(f"sweep of {SWEEP_SIZE} (d_in={sw['d_in']}, d_sae={sw['d_sae']}, batch={sw['batch']}, "
              f"{sw['steps']} steps{', REDUCED size' if sw['reduced'] else ''}): vmapped {sw['vmapped_median_s']:.3f} s, "
              f"sequential {sw['sequential_median_s']:.3f} s, speedup {sw['speedup']:.2f}×", flush=True)

    res["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print()
    print(summary_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"\n[sae_step] wrote {args.json}")
    if args.write:
        write_results(res, Path(args.write))
    return res


if __name__ == "__main__":
    main()
