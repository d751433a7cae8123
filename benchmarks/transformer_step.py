"""Training throughput of the tiny transformer: superpos_jax vs a PyTorch reference.

What is measured
----------------
Both sides train the same decoder-only transformer (`superpos_jax.lm.transformer`: GPT-2
pre-LN blocks, per-head W_Q/W_K/W_V/W_O, ReLU MLP, LayerNorm ε = 1e-5, untied unembedding with
bias) by next-token cross-entropy with AdamW (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight
decay 0.01 on every parameter), starting from the SAME initial weights (ours, copied into
torch) and fed the SAME pre-drawn batches of uniformly random tokens.

* **superpos_jax (jit step)**: `jax.jit` of value_and_grad(`next_token_loss`) + `optax.adamw`,
  params and optimizer state donated, called once per step from Python.
* **superpos_jax (scan)**: the same step inside one `lax.scan` over all `steps` batches, the way
  the training engine runs a chunk.
* **PyTorch reference**: an `nn.Module` with the same parameters and the same einsum forward,
  `zero_grad` / `backward` / `torch.optim.AdamW.step` per step. It is timed at torch's default
  thread count and at 1 thread (`--torch-threads`): on a small, shared CPU the multi-threaded
  kernels can be ~10× slower than one thread, so the ratio is taken against the FASTEST
  reference row.

Before timing, both sides train `--check-steps` steps from the shared init on the shared batches
and the per-step losses are compared (they agree to float32 rounding if the reference is
faithful). Each implementation is warmed up (JAX: compiled) and then timed `repeats` times over
`steps` steps; reported: training tokens/s = batch × n_ctx × steps / wall seconds, the median
over repeats (min–max), and the ratio ours / reference.

Usage::

    python benchmarks/transformer_step.py                      # 1 layer, d_model 128, batch 32
    python benchmarks/transformer_step.py --quick              # tiny config, seconds
    python benchmarks/transformer_step.py --out results.json --device-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from superpos_jax.lm.transformer import (
    TransformerConfig,
    TransformerParams,
    init_transformer,
    next_token_loss,
)

try:
    from benchmarks.toy_sweep import cpu_name, import_torch, usable_cores
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    from toy_sweep import cpu_name, import_torch, usable_cores  # type: ignore[no-redef]

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
EPS = 1e-8
TORCH_WARMUP_STEPS = 5


def make_config(args: argparse.Namespace) -> TransformerConfig:
    return TransformerConfig(
        n_layers=args.n_layers, d_model=args.d_model, n_heads=args.n_heads,
        d_head=args.d_model // args.n_heads, d_mlp=args.d_mlp, n_ctx=args.n_ctx, d_vocab=args.d_vocab,
        act=args.act,
    )


def make_batches(cfg: TransformerConfig, batch: int, steps: int, seed: int) -> np.ndarray:
    """int32 (steps, batch, n_ctx) uniformly random tokens, shared by both sides."""
    return np.random.default_rng(seed).integers(0, cfg.d_vocab, (steps, batch, cfg.n_ctx)).astype(np.int32)


# --------------------------------------------------------------------------------------
# superpos_jax
# --------------------------------------------------------------------------------------


def make_jax_step(optimizer: optax.GradientTransformation):
    """One training step, params and optimizer state donated."""

    def step(params: TransformerParams, opt_state, tokens):
        loss, grads = jax.value_and_grad(next_token_loss)(params, tokens)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def jax_optimizer() -> optax.GradientTransformation:
    return optax.adamw(LEARNING_RATE, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY)


def jax_losses(params: TransformerParams, batches: np.ndarray) -> np.ndarray:
    """Per-step losses of training on `batches` with the jit step (for the faithfulness check)."""
    optimizer = jax_optimizer()
    step = jax.jit(make_jax_step(optimizer))
    opt_state = optimizer.init(params)
    losses = []
    for tokens in batches:
        params, opt_state, loss = step(params, opt_state, jnp.asarray(tokens))
        losses.append(float(loss))
    return np.asarray(losses)


@dataclass
class Timing:
    """Wall seconds of each timed repeat of one implementation."""

    label: str
    tokens_per_step: int
    steps: int
    seconds: list[float]

    def rates(self) -> list[float]:
        return [self.tokens_per_step * self.steps / s for s in self.seconds]

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates())


def time_jax_step(params: TransformerParams, batches: np.ndarray, repeats: int) -> Timing:
    optimizer = jax_optimizer()
    step = jax.jit(make_jax_step(optimizer), donate_argnums=(0, 1))
    opt_state = optimizer.init(params)
    params = jax.tree.map(jnp.copy, params)
    device_batches = [jnp.asarray(b) for b in batches]
    params, opt_state, loss = step(params, opt_state, device_batches[0])  # compile
    jax.block_until_ready(loss)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for tokens in device_batches:
            params, opt_state, loss = step(params, opt_state, tokens)
        jax.block_until_ready((params, loss))
        seconds.append(time.perf_counter() - t0)
    return Timing("superpos_jax (jit step)", batches.shape[1] * batches.shape[2], len(batches), seconds)


def time_jax_scan(params: TransformerParams, batches: np.ndarray, repeats: int) -> Timing:
    optimizer = jax_optimizer()
    step = make_jax_step(optimizer)

    @partial(jax.jit, donate_argnums=(0, 1))
    def run(params, opt_state, all_tokens):
        def body(carry, tokens):
            params, opt_state, loss = step(*carry, tokens)
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), all_tokens)
        return params, opt_state, losses

    opt_state = optimizer.init(params)
    params = jax.tree.map(jnp.copy, params)
    all_tokens = jnp.asarray(batches)
    params, opt_state, losses = run(params, opt_state, all_tokens)  # compile
    jax.block_until_ready(losses)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, opt_state, losses = run(params, opt_state, all_tokens)
        jax.block_until_ready((params, losses))
        seconds.append(time.perf_counter() - t0)
    return Timing("superpos_jax (scan)", batches.shape[1] * batches.shape[2], len(batches), seconds)


# --------------------------------------------------------------------------------------
# PyTorch reference
# --------------------------------------------------------------------------------------


def make_torch_reference(torch, cfg: TransformerConfig, params: TransformerParams):
    """The same transformer in PyTorch, initialised with a copy of `params`.

    Returns `(model, optimizer, step)`; `step(tokens)` is one full training step (forward,
    next-token cross-entropy, backward, AdamW) and returns the loss tensor.
    """
    nn = torch.nn
    F = torch.nn.functional

    def p(x) -> nn.Parameter:
        return nn.Parameter(torch.tensor(np.asarray(x), dtype=torch.float32))

    class Block(nn.Module):
        def __init__(self, b) -> None:
            super().__init__()
            a = b.attn
            self.ln1_w, self.ln1_b = p(b.ln1.w), p(b.ln1.b)
            self.W_Q, self.W_K, self.W_V, self.W_O = p(a.W_Q), p(a.W_K), p(a.W_V), p(a.W_O)
            self.b_Q, self.b_K, self.b_V, self.b_O = p(a.b_Q), p(a.b_K), p(a.b_V), p(a.b_O)
            self.ln2_w, self.ln2_b = p(b.ln2.w), p(b.ln2.b)
            self.W_in, self.b_in, self.W_out, self.b_out = p(b.mlp.W_in), p(b.mlp.b_in), p(b.mlp.W_out), p(b.mlp.b_out)

        def forward(self, resid, causal):
            x = F.layer_norm(resid, (cfg.d_model,), self.ln1_w, self.ln1_b, eps=1e-5)
            q = torch.einsum("bpd,hde->bphe", x, self.W_Q) + self.b_Q
            k = torch.einsum("bpd,hde->bphe", x, self.W_K) + self.b_K
            v = torch.einsum("bpd,hde->bphe", x, self.W_V) + self.b_V
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(cfg.d_head)
            pattern = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
            resid = resid + torch.einsum("bqhe,hed->bqd", z, self.W_O) + self.b_O
            x = F.layer_norm(resid, (cfg.d_model,), self.ln2_w, self.ln2_b, eps=1e-5)
            pre = x @ self.W_in + self.b_in
            post = F.relu(pre) if cfg.act == "relu" else F.gelu(pre, approximate="tanh")
            return resid + post @ self.W_out + self.b_out

    class Reference(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.W_E, self.W_pos = p(params.W_E), p(params.W_pos)
            self.blocks = nn.ModuleList([Block(b) for b in params.blocks])
            self.lnf_w, self.lnf_b = p(params.ln_final.w), p(params.ln_final.b)
            self.W_U, self.b_U = p(params.W_U), p(params.b_U)
            self.register_buffer("causal", torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool).tril())

        def forward(self, tokens):
            n = tokens.shape[1]
            resid = self.W_E[tokens] + self.W_pos[:n]
            causal = self.causal[:n, :n]
            for block in self.blocks:
                resid = block(resid, causal)
            x = F.layer_norm(resid, (cfg.d_model,), self.lnf_w, self.lnf_b, eps=1e-5)
            return x @ self.W_U + self.b_U

    if cfg.attn_only:
        raise ValueError("the reference implements the MLP model only")
    model = Reference()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=BETAS, eps=EPS,
                                  weight_decay=WEIGHT_DECAY)

    def step(tokens):
        optimizer.zero_grad(set_to_none=True)
        logits = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, cfg.d_vocab), tokens[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        return loss

    return model, optimizer, step


def torch_losses(torch, cfg: TransformerConfig, params: TransformerParams, batches: np.ndarray) -> np.ndarray:
    _, _, step = make_torch_reference(torch, cfg, params)
    return np.asarray([float(step(torch.as_tensor(b, dtype=torch.long)).detach()) for b in batches])


def time_torch(torch, cfg: TransformerConfig, params: TransformerParams, batches: np.ndarray,
               repeats: int, threads: int) -> Timing:
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _time_torch(torch, cfg, params, batches, repeats, threads)
    finally:
        torch.set_num_threads(default_threads)


def _time_torch(torch, cfg: TransformerConfig, params: TransformerParams, batches: np.ndarray,
                repeats: int, threads: int) -> Timing:
    _, _, step = make_torch_reference(torch, cfg, params)
    torch_batches = [torch.as_tensor(b, dtype=torch.long) for b in batches]
    for tokens in torch_batches[:TORCH_WARMUP_STEPS]:
        step(tokens)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for tokens in torch_batches:
            step(tokens)
        seconds.append(time.perf_counter() - t0)
    label = f"PyTorch reference (cpu, {threads} thread{'s' if threads > 1 else ''})"
    return Timing(label, batches.shape[1] * batches.shape[2], len(batches), seconds)


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def machine_info(torch) -> dict[str, str]:
    info = {
        "machine": f"{cpu_name()}, {usable_cores()} cores ({platform.system()} {platform.machine()})",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax devices": ", ".join(str(d) for d in jax.devices()),
    }
    if hasattr(os, "getloadavg"):
        info["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["torch"] = "skipped" if torch is None else f"{torch.__version__}, {torch.get_num_threads()} threads"
    return info


def results_table(timings: Sequence[Timing], reference: Timing | None) -> str:
    lines = [
        "| implementation | steps | tokens/s (median) | min–max | s per run (median) | ours / reference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in timings:
        rates = t.rates()
        if reference is None:
            ratio = "n/a"
        elif t is reference:
            ratio = "1.00 (reference)"
        else:
            ratio = f"{t.median_rate / reference.median_rate:.2f}×"
        lines.append(f"| {t.label} | {t.steps} | {t.median_rate:,.0f} | {min(rates):,.0f}–{max(rates):,.0f} | "
                     f"{statistics.median(t.seconds):.3f} | {ratio} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny config and few steps (a smoke run)")
    ap.add_argument("--n-layers", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--d-mlp", type=int, default=512)
    ap.add_argument("--n-ctx", type=int, default=64)
    ap.add_argument("--d-vocab", type=int, default=256)
    ap.add_argument("--act", default="relu", choices=["relu", "gelu"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50, help="training steps per timed run (default 50)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per implementation (default 5)")
    ap.add_argument("--check-steps", type=int, default=10, help="steps of the loss-agreement check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device-only", action="store_true", help="skip the PyTorch reference")
    ap.add_argument("--torch-threads", type=int, nargs="+", default=None,
                    help="thread counts to time the reference at (default: torch's default and 1)")
    ap.add_argument("--out", default=None, metavar="PATH", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.d_model, args.n_heads, args.d_mlp, args.n_ctx, args.d_vocab = 32, 2, 64, 16, 64
        args.batch, args.steps, args.repeats, args.check_steps = 8, 10, 3, 3
    if min(args.steps, args.repeats, args.batch, args.check_steps) < 1 or args.d_model % args.n_heads:
        ap.error("steps, repeats, batch, check-steps must be >= 1 and n_heads must divide d_model")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch = None if args.device_only else import_torch()
    cfg = make_config(args)
    info = machine_info(torch)
    print("\n".join(f"{k}: {v}" for k, v in info.items()))
    print(f"config: {cfg}  batch={args.batch} steps={args.steps} repeats={args.repeats} "
          f"AdamW(lr={LEARNING_RATE}, wd={WEIGHT_DECAY})\n")

    params = init_transformer(cfg, key=jax.random.key(args.seed))
    batches = make_batches(cfg, args.batch, args.steps, args.seed)

    check: dict[str, object] = {}
    if torch is not None:
        ours = jax_losses(params, batches[: args.check_steps])
        theirs = torch_losses(torch, cfg, params, batches[: args.check_steps])
        diff = float(np.max(np.abs(ours - theirs)))
        check = {"steps": args.check_steps, "jax_losses": ours.tolist(), "torch_losses": theirs.tolist(),
                 "max_abs_difference": diff}
        print(f"loss check over {args.check_steps} steps from the same init and batches: "
              f"jax {ours[0]:.5f} -> {ours[-1]:.5f}, torch {theirs[0]:.5f} -> {theirs[-1]:.5f}, "
              f"max |difference| {diff:.2e}\n")

    timings = [time_jax_step(params, batches, args.repeats), time_jax_scan(params, batches, args.repeats)]
    for t in timings:
        print(f"[transformer_step] {t.label:<28} {t.median_rate:>12,.0f} tokens/s", flush=True)
    reference = None
    if torch is not None:
        threads = args.torch_threads or sorted({torch.get_num_threads(), 1}, reverse=True)
        for n in threads:
            t = time_torch(torch, cfg, params, batches, args.repeats, n)
            print(f"[transformer_step] {t.label:<28} {t.median_rate:>12,.0f} tokens/s", flush=True)
            timings.append(t)
            if reference is None or t.median_rate > reference.median_rate:
                reference = t

    table = results_table(timings, reference)
    print()
    print(table)
    result = {
        "benchmark": "transformer_step",
        "machine": info,
        "config": dataclasses.asdict(cfg),
        "batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "optimizer": {"name": "adamw", "learning_rate": LEARNING_RATE, "betas": BETAS, "eps": EPS,
                      "weight_decay": WEIGHT_DECAY},
        "loss_check": check,
        "reference": None if reference is None else reference.label,
        "timings": [
            {"label": t.label, "tokens_per_step": t.tokens_per_step, "seconds": t.seconds,
             "tokens_per_s": t.rates(), "median_tokens_per_s": t.median_rate,
             "ratio_to_reference": None if reference is None else t.median_rate / reference.median_rate}
            for t in timings
        ],
        "table": table,
    }
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        print(f"\n[transformer_step] wrote {path}")
    return result


if __name__ == "__main__":
    main()
