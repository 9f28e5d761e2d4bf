"""Loss + gradient: ``jax.jit(jax.value_and_grad(jgrpo.loss))`` against verl and against the memory floor.

jgrpo's loss is timed on both of its paths, side by side: the fused one (``jgrpo.fused``:
one pass for the value and aux, one for the hand-written gradient; what ``jgrpo.loss`` uses
for these methods) and the autodiff one (``fused=False``, the reference). verl's
``compute_policy_loss_{vanilla,gspo}`` (with its ``agg_loss``) plus ``loss.backward()`` in
torch run on identical float32 inputs; the floor is the bytes the computation must move
(read logp, logp_old, mask and rewards, write the gradient) over the in-place copy
bandwidth of the ``bandwidth`` section (same run, same device). The value alone (no
gradient) is timed too: with the gradient pass, it splits the fused time into its two passes.
The floor goal's measured bound runs in the same race: programs with the same inputs and
outputs that do less than the loss (:data:`BOUNDS`: the same I/O alone, with the per-token exp,
with a value reduced from the gradient as well), and, per loss, the least programs with that
loss's passes (:data:`STRUCTURES`: what its value and gradient cannot do without on XLA), each
over the floor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jgrpo
from experiments.bench import env
from experiments.bench.config import Config
from experiments.bench.goals import GOALS, goal
from experiments.bench.harness import Timing, blocking, cost, faults_per_call, op_profile, race
from experiments.bench.registry import Context, Section
from experiments.bench.render import fmt_ops, table
from experiments.bench.sections.bandwidth import reference
from jgrpo.fused import _row_sums  # row sums of several arrays as one variadic reduce (one loop)
from jgrpo.methods import Scale

__all__ = ["SECTION", "cases", "loss_data", "loss_grad_fn"]


def cases() -> list[tuple[str, jgrpo.MethodSpec, str]]:
    """(label, jgrpo spec, verl policy loss) of the compared losses."""
    return [
        ("ppo-clip token-mean", jgrpo.methods.get("grpo", flavor="verl", beta=0.0, agg="token-mean"), "vanilla"),
        (
            "ppo-clip seq-mean-token-mean",
            jgrpo.methods.get("grpo", flavor="verl", beta=0.0, agg="seq-mean-token-mean"),
            "vanilla",
        ),
        ("gspo", jgrpo.methods.get("gspo", flavor="verl"), "gspo"),
    ]


def loss_data(b: int, g: int, t: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Right-padded float32 data ``[B, G, T]``: lengths in [T/4, T], log-ratios ~ N(0, 0.3^2) (straddling the clip)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, t // 4), t + 1, size=(b, g))
    mask = (np.arange(t) < lengths[..., None]).astype(np.float32)
    logp_old = -rng.uniform(0.05, 3.0, size=(b, g, t)).astype(np.float32)
    logp = (logp_old + 0.3 * rng.standard_normal((b, g, t), dtype=np.float32)).astype(np.float32)
    rewards = rng.integers(0, 2, size=(b, g)).astype(np.float32)
    return dict(mask=mask, logp_old=logp_old, logp=logp, rewards=rewards)


def batch_of(data: dict[str, np.ndarray]) -> tuple[jax.Array, jgrpo.GroupBatch]:
    """(logp, GroupBatch) on the device from :func:`loss_data`'s arrays."""
    batch = jgrpo.GroupBatch(
        mask=jnp.asarray(data["mask"]), logp_old=jnp.asarray(data["logp_old"]), rewards=jnp.asarray(data["rewards"])
    )
    return jnp.asarray(data["logp"]), batch


PATHS = {"fused": "fused (jgrpo.loss's default here)", "autodiff": "autodiff (fused=False)"}


@functools.cache
def loss_grad_fn(spec: jgrpo.MethodSpec, fused: bool | None = None) -> Callable:
    """``jax.jit(jax.value_and_grad(jgrpo.loss))`` for one method and path (``fused``), cached."""
    return jax.jit(jax.value_and_grad(lambda logp, batch: jgrpo.loss(spec, logp, batch, fused=fused)[0]))


@functools.cache
def loss_value_fn(spec: jgrpo.MethodSpec) -> Callable:
    """The fused path's value pass alone: ``jax.jit`` of the loss value (aux unused, so not computed), cached."""
    return jax.jit(lambda logp, batch: jgrpo.loss(spec, logp, batch, fused=True)[0])


def gradient_pass(spec: jgrpo.MethodSpec, logp: jax.Array, batch: jgrpo.GroupBatch) -> Callable[[], Any]:
    """The fused path's gradient pass alone, as a blocking closure: the jitted VJP of the loss at (logp, batch).

    The VJP's residuals are its inputs (the custom VJP stores nothing of size [B, G, T]), so a call
    runs only the backward pass: one elementwise pass over logp, logp_old and mask writing dJ/dlogp.
    """
    _, vjp = jax.vjp(lambda lp: jgrpo.loss(spec, lp, batch, fused=True)[0], logp)
    # vjp is a pytree (its residuals are leaves): passed as an argument, they stay inputs, not constants.
    f = jax.jit(lambda vjp, ct: vjp(ct))
    return blocking(f, vjp, jnp.ones((), logp.dtype))


def floor_bytes(b: int, g: int, t: int) -> int:
    """Bytes that loss+grad must move: read logp, logp_old, mask (float32) and rewards; write the gradient."""
    return 4 * (4 * b * g * t + b * g)


# Programs that bound the floor goal from below: loss+grad's inputs and output, less of its work.
BOUNDS = {
    "bound_copy": "reads logp, logp_old, mask, rewards; writes a fresh [B, G, T] array m (logp - logp_old) r_i: "
    "exactly the floor's bytes, no transcendental",
    "bound_exp": "the same plus the exp of each token's log-ratio that every token-ratio loss evaluates, "
    "m exp(logp - logp_old) A_i",
    "bound_two_pass": "the unclipped token-mean surrogate by hand in the two passes of a loss whose gradient needs a "
    "reduction first (1 / sum m, per-completion lengths): row sums of m s A and m, then the gradient m s A / n; "
    "XLA computes m s once into a temporary (reads 12 bytes/token, writes 4) that the row sums and the gradient "
    "read (4 + 4, writes 4), the mask's row sums read 4: 32 bytes/token, 2x the floor's 16 at copy bandwidth",
    "bound_counts": "a token-ratio loss the other way round: row sums of m, m [x > log(1 + eps)], m [x < log(1 - eps)] "
    "(x the log-ratio; reads 12 bytes/token, no exp), then the gradient m exp(x) A_i / n (reads 12, writes 4), "
    "then the value from the gradient's sum and the clipped tokens' counts (reads 4); 32 bytes/token",
    "bound_sequence": "a sequence-ratio loss (GSPO) by hand: row sums of m and m x (reads 12 bytes/token, no exp), "
    "the clipped sequence term per completion, then the gradient m k_i from the mask alone (reads 4, writes 4); "
    "20 bytes/token, 1.25x the floor",
    "bound_copy_inplace": "bound_copy writing into a donated buffer (no fresh output: no page faults), "
    "the bandwidth probe's situation",
    "bound_outputs": "bound_exp's gradient plus a value reduced from it (sum m exp(logp - logp_old) A_i): both "
    "outputs of loss+grad for an unclipped surrogate, the reduction reading the cheapest array it can "
    "(4 bytes/token, the output); a clipped loss cannot do this (its value holds c A_i of the clipped tokens, "
    "where its gradient is 0)",
}

# The least programs with each loss's passes, on XLA's CPU backend, which fuses no reduction with an
# elementwise [B, G, T] output into one loop (a program with both writes the shared part out, or computes
# it twice). A clipped token-ratio loss (ppo-clip) reduces the clipped term over the inputs for its value
# (its gradient, 0 on the clipped tokens, does not carry it) and its gradient waits for 1 / sum m or the
# lengths: two passes over the inputs, as bound_two_pass, or counts first, as bound_counts; a sequence-
# ratio loss (GSPO) needs the row sums before any gradient: bound_sequence. The fused path itself (blocks of
# rows that stay in cache, one DRAM sweep for the value) is a third such program; the least of them is the
# goal's measured bound.
STRUCTURES = {
    "token ratio": ("bound_two_pass", "bound_counts"),
    "sequence ratio": ("bound_sequence",),
}


def structure(spec: jgrpo.MethodSpec) -> str:
    """Which :data:`STRUCTURES` entry a bench case's loss has."""
    return "sequence ratio" if spec.objective == jgrpo.methods.Objective.GSPO else "token ratio"


def bound_programs(logp: jax.Array, batch: jgrpo.GroupBatch, eps: float = 0.2) -> dict[str, Callable[[], Any]]:
    """The :data:`BOUNDS` programs on the loss's inputs, as blocking closures for :func:`race`.

    None of them is the loss (``eps`` is the clip width of ``bound_counts`` and ``bound_sequence``):
    ``bound_copy`` and ``bound_exp`` are the least any loss+grad with these inputs and this output does
    (read ``logp``, ``logp_old``, ``mask`` and ``rewards``; write a fresh ``[B, G, T]`` gradient; one
    exp per token), ``bound_outputs`` the same with a value reduced from the gradient (both outputs of
    an unclipped surrogate), ``bound_two_pass``, ``bound_counts`` and ``bound_sequence`` the least
    with the passes of each loss (:data:`STRUCTURES`), all as XLA programs on the same device.
    """
    lp_old, mask, rewards = batch.logp_old, batch.mask, batch.rewards
    g = mask.shape[-2]
    lo, hi = math.log(1.0 - eps), math.log(1.0 + eps)

    def centred(r):
        return r - jnp.mean(r, axis=-1, keepdims=True)

    copy = jax.jit(lambda lp, old, m, r: m * (lp - old) * r[..., None])
    exp = jax.jit(lambda lp, old, m, r: m * jnp.exp(lp - old) * centred(r)[..., None])

    @jax.jit
    def outputs(lp, old, m, r):
        grad = m * jnp.exp(lp - old) * centred(r)[..., None]
        return jnp.sum(grad), grad

    @jax.jit
    def two_pass(lp, old, m, r):
        a = centred(r)
        rows = jnp.sum(m * jnp.exp(lp - old) * a[..., None], axis=-1), jnp.sum(m, axis=-1)
        rows = lax.optimization_barrier(rows)  # the reduction pass completes before the gradient pass
        n = jnp.maximum(jnp.sum(rows[1]), 1.0)
        return jnp.sum(rows[0]) / n, m * jnp.exp(lp - old) * (a / n)[..., None]

    @jax.jit
    def counts(lp, old, m, r):
        # one variadic reduce (one loop) and barriers between the passes: the fastest of the forms tried
        a, x = centred(r), lp - old
        length, n_hi, n_lo = lax.optimization_barrier(_row_sums((m, m * (x > hi), m * (x < lo))))
        n = jnp.maximum(jnp.sum(length), 1.0)
        grad = lax.optimization_barrier(m * jnp.exp(x) * (a / n)[..., None])
        return jnp.sum(grad) + jnp.sum(a * ((1.0 + eps) * n_hi + (1.0 - eps) * n_lo)) / n, grad

    @jax.jit
    def sequence(lp, old, m, r):
        x = jnp.where(m != 0, lp - old, 0.0)
        length, total = lax.optimization_barrier(_row_sums((m, x)))
        safe = jnp.maximum(length, 1.0)
        s, a = jnp.exp(total / safe), centred(r)
        k = jnp.minimum(s * a, jnp.clip(s, 1.0 - eps, 1.0 + eps) * a) / (safe * g)
        return jnp.sum(k * length), m * k[..., None]

    inplace = jax.jit(lambda y, old, m, r: m * (y - old) * r[..., None], donate_argnums=0)
    state = {"y": jnp.array(logp, copy=True)}

    def run_inplace():
        state["y"] = inplace(state["y"], lp_old, mask, rewards)
        state["y"].block_until_ready()

    args = (logp, lp_old, mask, rewards)
    return {
        "bound_copy": blocking(copy, *args),
        "bound_exp": blocking(exp, *args),
        "bound_two_pass": blocking(two_pass, *args),
        "bound_counts": blocking(counts, *args),
        "bound_sequence": blocking(sequence, *args),
        "bound_copy_inplace": run_inplace,
        "bound_outputs": blocking(outputs, *args),
    }


def bound_ratios(times: dict[str, Timing], floor_s: float, kind: str | None = None) -> dict[str, float | str]:
    """Each bound program's time over the floor, and the fused path's over the bounds.

    ``bound_floor_ratio`` is ``bound_exp``'s (the I/O and the exp, no value); ``fused_vs_bound`` the
    fused path's time over ``bound_exp`` and ``fused_vs_two_pass`` over ``bound_two_pass``. With
    ``kind`` (a :data:`STRUCTURES` key: the loss's passes), ``least_floor_ratio`` is the least of the
    fused path and that structure's bound programs over the floor (the goal's measured bound) and
    ``least_program`` which one it was. The in-place copy does not return a fresh array as
    loss+grad must: reported, never the bound.
    """
    out: dict[str, float | str] = {}
    for name in BOUNDS:
        if name in times:
            out[f"{name}_s"] = times[name].median
            out[f"{name}_floor_ratio"] = times[name].median / floor_s
    if "bound_exp" in times:
        out["bound_floor_ratio"] = times["bound_exp"].median / floor_s
        out["fused_vs_bound"] = times["jgrpo"].median / times["bound_exp"].median
    if "bound_two_pass" in times:
        out["fused_vs_two_pass"] = times["jgrpo"].median / times["bound_two_pass"].median
    if kind is not None:
        if kind not in STRUCTURES:
            raise ValueError(f"kind must be one of {sorted(STRUCTURES)}; got {kind!r}")
        candidates = {n: times[n].median for n in ("jgrpo", *STRUCTURES[kind]) if n in times}
        least = min(candidates, key=candidates.__getitem__)
        out["structure"] = kind
        out["least_program"] = "fused path" if least == "jgrpo" else least
        out["least_floor_ratio"] = candidates[least] / floor_s
    return out


def _verl_call(peers: Any, spec: jgrpo.MethodSpec, loss_mode: str, data: dict[str, np.ndarray], threads: int):
    """verl's loss+backward as a blocking closure on ``[B*G, T]`` tensors returning (loss, grad).

    Each call first sets torch's intra-op thread count to ``threads`` (cheap), so
    that contenders with different thread counts can be interleaved.
    """
    torch, core_algos = peers.torch, peers.core_algos
    b, g, t = data["mask"].shape
    n = b * g
    dev = peers.device

    def flat(x):
        return torch.tensor(x.reshape(n, t), dtype=torch.float32, device=dev)

    mask, logp_old, logp = flat(data["mask"]), flat(data["logp_old"]), flat(data["logp"])
    scores = torch.zeros(n, t, dtype=torch.float32, device=dev)
    scores[:, 0] = torch.tensor(data["rewards"].reshape(n), device=dev)
    # Advantages come from verl's own estimator, once, outside the timed call (verl's
    # trainer computes them in a separate stage, as token-level [B*G, T] tensors).
    advantages, _ = core_algos.compute_grpo_outcome_advantage(
        scores,
        mask,
        np.repeat(np.arange(b), g),
        epsilon=spec.std_eps,
        norm_adv_by_std_in_grpo=spec.scale == Scale.GROUP_STD,
    )
    config = peers.ActorConfig(
        strategy="fsdp",
        rollout_n=g,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio=spec.eps_low,
        clip_ratio_low=spec.eps_low,
        clip_ratio_high=spec.eps_high,
        loss_agg_mode=str(spec.agg),
    )
    config.global_batch_info.update(dp_size=1, batch_num_tokens=None, global_batch_size=None, loss_scale_factor=None)
    policy_loss = core_algos.get_policy_loss_fn(loss_mode)

    def call():
        if dev == "cpu":
            torch.set_num_threads(threads)
        leaf = logp.detach().requires_grad_(True)
        loss, _ = policy_loss(
            old_log_prob=logp_old,
            log_prob=leaf,
            advantages=advantages,
            response_mask=mask,
            loss_agg_mode=str(spec.agg),
            config=config,
        )
        loss.backward()
        if dev == "cuda":
            torch.cuda.synchronize()
        return loss, leaf.grad

    return call


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """Loss + gradient of both jgrpo paths vs verl and vs the memory floor, for every case and size."""
    bw = ctx.results["bandwidth"]
    peers = ctx.peers
    rows, profiles = [], {}
    for size_idx, (n_rows, t) in enumerate(cfg.loss_sizes):
        g = cfg.loss_group
        b = n_rows // g
        data = loss_data(b, g, t, seed=size_idx)
        logp, batch = batch_of(data)
        floor_s = floor_bytes(b, g, t) / (bw["inplace_GBps"] * 1e9)
        for label, spec, loss_mode in cases():
            ctx.log(f"loss {label} {n_rows}x{t}")
            f, f_auto, f_value = loss_grad_fn(spec, True), loss_grad_fn(spec, False), loss_value_fn(spec)
            fns = {
                "jgrpo": blocking(f, logp, batch),
                "jgrpo_autodiff": blocking(f_auto, logp, batch),
                "jgrpo_value": blocking(f_value, logp, batch),
                "jgrpo_gradient": gradient_pass(spec, logp, batch),
                **bound_programs(logp, batch),
            }
            row: dict[str, Any] = {"case": label, "rows": n_rows, "T": t, "B": b, "G": g}
            row["check_autodiff"] = _check_paths(f(logp, batch), f_auto(logp, batch))
            if peers is not None:
                # threads = cores as XLA uses; on CPU also 1 thread, which an oversubscribed machine can favour
                verl = _verl_call(peers, spec, loss_mode, data, threads=env.cores())
                fns["verl"] = verl
                if peers.device == "cpu" and env.cores() > 1:
                    fns["verl_1thread"] = _verl_call(peers, spec, loss_mode, data, threads=1)
                row["check"] = _check(f(logp, batch), verl(), (b, g, t))
            times = race(fns, rounds=cfg.rounds, budget_s=cfg.budget_s)
            row.update(path_ratios(times, floor_s, value_floor_s=floor_s * value_floor_fraction(b, g, t)))
            row.update(bound_ratios(times, floor_s, structure(spec)))
            if "verl" in times:
                row.update(_verl_ratios(times))
            else:
                row["verl_skipped"] = ctx.peer_skip
            row["samples"] = {k: v.samples for k, v in times.items()}
            rows.append(row)
            if cfg.profile:
                ops = size_idx == len(cfg.loss_sizes) - 1  # per-op trace at the largest size only
                for path, fn, key in (("fused", f, "jgrpo"), ("autodiff", f_auto, "jgrpo_autodiff")):
                    profiles[f"{label} {n_rows}x{t} {path}"] = _profile(fn, logp, batch, (b, g, t), times[key], bw, ops)
    return {"rows": rows, "profile": profiles, "bandwidth": bw, "peers": getattr(peers, "version", None)}


def value_floor_fraction(b: int, g: int, t: int) -> float:
    """The value pass's share of the floor: it reads logp, logp_old, mask and rewards, writes nothing large."""
    return 4 * (3 * b * g * t + b * g) / floor_bytes(b, g, t)


def path_ratios(times: dict[str, Timing], floor_s: float, value_floor_s: float) -> dict[str, float]:
    """Times of both jgrpo paths and of the fused path's two passes, and their ratios to their floors.

    ``jgrpo_s`` and ``floor_ratio`` (what the goal judges) are the fused path's; ``autodiff_*``
    the reference path's; ``value_*`` the fused value pass alone against its own floor (the same
    reads, no gradient write); ``gradient_*`` the gradient pass alone against the full floor (it
    reads and writes exactly the floor's bytes); ``passes_share`` = (value + gradient) / loss+grad.
    """
    fused, auto = times["jgrpo"].median, times["jgrpo_autodiff"].median
    out = {
        "jgrpo_s": fused,
        "autodiff_s": auto,
        "floor_s": floor_s,
        "floor_ratio": fused / floor_s,
        "autodiff_floor_ratio": auto / floor_s,
        "speedup_vs_autodiff": auto / fused,
    }
    if "jgrpo_value" in times and "jgrpo_gradient" in times:
        value, grad = times["jgrpo_value"].median, times["jgrpo_gradient"].median
        out.update(
            value_s=value,
            value_floor_ratio=value / value_floor_s,
            gradient_s=grad,
            gradient_floor_ratio=grad / floor_s,
            passes_share=(value + grad) / fused,
        )
    return out


def _check_paths(fused_out, autodiff_out) -> dict[str, float]:
    """Agreement of the fused and the autodiff path: loss and gradient (relative to the largest entry)."""
    (fl, fg), (al, ag) = fused_out, autodiff_out
    fg, ag = np.asarray(fg), np.asarray(ag)
    return {
        "loss_rel_err": abs(float(fl) - float(al)) / max(abs(float(al)), 1e-30),
        "grad_max_err_rel": float(np.max(np.abs(fg - ag))) / max(float(np.max(np.abs(ag))), 1e-30),
    }


def _check(jgrpo_out, verl_out, shape) -> dict[str, float]:
    """Agreement of jgrpo's and verl's loss and gradient on the same inputs."""
    (jl, jg), (vl, vg) = jgrpo_out, verl_out
    vg = vg.detach().cpu().numpy().reshape(shape)
    jg = np.asarray(jg)
    vl = float(vl.detach())
    scale = max(float(np.max(np.abs(vg))), 1e-30)
    return {
        "loss_rel_err": abs(float(jl) - vl) / max(abs(vl), 1e-30),
        "grad_max_err_rel": float(np.max(np.abs(jg - vg))) / scale,
        # tokens sitting on a clip boundary may flip between float32 libraries
        "grad_mismatch_frac": float(np.mean(np.abs(jg - vg) > 1e-4 * scale)),
    }


def _verl_ratios(times: dict[str, Timing]) -> dict[str, float]:
    """verl / jgrpo at each thread setting; the goal is judged against verl's faster setting (fused path)."""
    j = times["jgrpo"]
    out = {"verl_s": times["verl"].median, "speedup_vs_verl_threads_cores": times["verl"].median / j.median}
    if "verl_1thread" in times:
        out["verl_1thread_s"] = times["verl_1thread"].median
        out["speedup_vs_verl_1thread"] = times["verl_1thread"].median / j.median
    verls = [times[k] for k in ("verl", "verl_1thread") if k in times]
    out["speedup_vs_verl"] = min(v.median for v in verls) / j.median
    out["speedup_vs_verl_min"] = min(min(v.samples) for v in verls) / min(j.samples)
    if "jgrpo_autodiff" in times:
        out["autodiff_speedup_vs_verl"] = min(v.median for v in verls) / times["jgrpo_autodiff"].median
    return out


def _profile(f, logp, batch, shape, timing: Timing, bw, ops: bool) -> dict[str, Any]:
    """Where loss+grad's time goes: XLA's bytes, temporaries, page faults and per-fusion times."""
    b, g, t = shape
    compiled = f.lower(logp, batch).compile()
    xla = cost(compiled)
    tokens = b * g * t
    out: dict[str, Any] = {"xla": xla, "floor_bytes_per_token": floor_bytes(b, g, t) / tokens}
    if "bytes_accessed" in xla:
        out["xla_bytes_per_token"] = xla["bytes_accessed"] / tokens
        out["bytes_time_s"] = xla["bytes_accessed"] / (bw["inplace_GBps"] * 1e9)
    if "temp_bytes" in xla:
        out["temp_arrays_BGT"] = xla["temp_bytes"] / (4 * tokens)
    if env.backend() == "cpu":
        out["faults_per_call"] = faults_per_call(blocking(f, logp, batch))
        if "seconds_per_fault" in bw:
            out["fault_time_s"] = out["faults_per_call"] * bw["seconds_per_fault"]
    out["measured_s"] = timing.median
    if "bytes_time_s" in out:
        out["model_s"] = out["bytes_time_s"] + out.get("fault_time_s", 0.0)
    if ops:
        out["ops_ms"] = op_profile(blocking(f, logp, batch), top=6)
    return out


def goals(loss: dict[str, Any]) -> list[dict[str, Any]]:
    """The fused path's ratios (what jgrpo.loss runs for these methods); the autodiff path's quoted alongside."""
    out = []
    for r in loss["rows"]:
        key = f"{r['case']} {r['rows']}x{r['T']}"
        if "speedup_vs_verl" in r:
            also = {"autodiff path": r["autodiff_speedup_vs_verl"]} if "autodiff_speedup_vs_verl" in r else {}
            out.append(
                goal(
                    "loss_vs_verl",
                    key,
                    r["speedup_vs_verl"],
                    what=f"{key}: verl time (faster thread setting) / jgrpo time (fused path)",
                    also=also,
                )
            )
        also = {"autodiff path": r["autodiff_floor_ratio"]}
        if "least_floor_ratio" in r:
            also[f"measured bound: least program with this loss's passes ({r['least_program']}) / floor"] = r[
                "least_floor_ratio"
            ]
        if "bound_floor_ratio" in r:
            if "bound_outputs_floor_ratio" in r:
                also["I/O + exp + a value reduced from the gradient (unclipped) / floor"] = r[
                    "bound_outputs_floor_ratio"
                ]
            also["same I/O + exp, no value / floor"] = r["bound_floor_ratio"]
            if "bound_two_pass_floor_ratio" in r:
                also["two-pass bound / floor"] = r["bound_two_pass_floor_ratio"]
        if "value_floor_ratio" in r:
            also["value pass / its floor"] = r["value_floor_ratio"]
            also["gradient pass / floor"] = r["gradient_floor_ratio"]
        out.append(
            goal(
                "loss_vs_floor", key, r["floor_ratio"], what=f"{key}: jgrpo time (fused path) / memory floor", also=also
            )
        )
    return out


def _ms(p: dict[str, Any], key: str) -> float | str:
    """A time in ms, or blank when it was not measured (never a 0 standing for 'unknown')."""
    return p[key] * 1e3 if key in p else ""


def render(loss: dict[str, Any]) -> list[str]:
    lines = [
        f"Floor = bytes that must move (read logp, logp_old, mask, rewards; write the gradient; float32) / "
        f"{reference(loss['bandwidth'])}. verl gets the same data flattened to [B*G, T] and its token-level "
        "advantages precomputed (untimed). jgrpo runs on both paths, interleaved in the same race: fused "
        "(jgrpo.fused, what jgrpo.loss uses for these methods) and autodiff (fused=False, the reference). "
        "The fused path's two passes are timed alone too: the value pass (jgrpo.loss's value without the "
        "gradient; its floor: the same reads, no write) and the gradient pass (the jitted VJP, which stores "
        "nothing of size [B, G, T] and recomputes each token's derivative; its floor is the whole floor).",
        "",
    ]
    rows = []
    for r in loss["rows"]:
        rows.append(
            (
                r["case"],
                f"{r['rows']}x{r['T']}",
                r.get("speedup_vs_verl_threads_cores", r.get("verl_skipped", "")),
                r.get("speedup_vs_verl_1thread", ""),
                r.get("speedup_vs_verl", ""),
                r.get("speedup_vs_verl_min", ""),
                r.get("autodiff_speedup_vs_verl", ""),
                r["floor_ratio"],
                r["autodiff_floor_ratio"],
                r["speedup_vs_autodiff"],
                r.get("value_floor_ratio", ""),
                r.get("gradient_floor_ratio", ""),
                r.get("passes_share", ""),
            )
        )
    header = [
        "case",
        "B*G x T",
        "verl (threads = cores) / fused",
        "verl (1 thread) / fused",
        "faster verl / fused",
        "same, best runs",
        "faster verl / autodiff",
        "fused / floor",
        "autodiff / floor",
        "autodiff / fused",
        "value pass / its floor",
        "gradient pass / floor",
        "(value + gradient pass) / fused",
    ]
    lines.append(table(header, rows))
    rows = []
    for r in loss["rows"]:
        check, paths = r.get("check", {}), r.get("check_autodiff", {})
        rows.append(
            (
                r["case"],
                f"{r['rows']}x{r['T']}",
                paths.get("loss_rel_err", ""),
                paths.get("grad_max_err_rel", ""),
                check.get("loss_rel_err", ""),
                check.get("grad_mismatch_frac", ""),
            )
        )
    header = [
        "case",
        "B*G x T",
        "fused vs autodiff: loss rel err",
        "fused vs autodiff: grad max err / max |grad|",
        "fused vs verl: loss rel err",
        "fused vs verl: grad mismatch frac",
    ]
    lines += ["Agreement on the timed inputs:", "", table(header, rows)]
    lines += _render_bounds(loss["rows"])
    prof = loss.get("profile") or {}
    if prof:
        rows = []
        for label, p in prof.items():
            ops = p.get("ops_ms")
            rows.append(
                (
                    label,
                    p.get("xla_bytes_per_token", ""),
                    p["floor_bytes_per_token"],
                    p.get("temp_arrays_BGT", ""),
                    p.get("faults_per_call", ""),
                    p["measured_s"] * 1e3,
                    _ms(p, "bytes_time_s"),
                    _ms(p, "fault_time_s"),
                    ops["total_ms"] if isinstance(ops, dict) else "",
                )
            )
        header = [
            "case, path",
            "XLA bytes/token",
            "floor bytes/token",
            "temporaries ([B,G,T] f32 arrays)",
            "page faults/call",
            "wall ms",
            "XLA bytes / BW, ms",
            "faults x cost, ms",
            "op time, ms (all threads)",
        ]
        lines += [
            "Where jgrpo's time goes (XLA cost and memory analysis, page-fault counts, jax.profiler; "
            "absolute ms of this run, only to split the wall time; blank: not measured on this backend). "
            "XLA's cost analysis counts a loop body once: the fused path's forward pass is a loop over "
            "blocks of rows, so its bytes are a lower count.",
            "",
            table(header, rows),
            "Top ops (ms per call, summed over threads):",
            "",
        ]
        lines += [f"- {label}: {fmt_ops(p['ops_ms'])}" for label, p in prof.items() if "ops_ms" in p] + [""]
    return lines


def _render_bounds(rows: list[dict[str, Any]]) -> list[str]:
    """The measured bound of the floor goal: each bound program's time over the floor, next to the fused path's."""
    rows = [r for r in rows if "bound_floor_ratio" in r]
    if not rows:
        return []
    names = [n for n in BOUNDS if f"{n}_floor_ratio" in rows[0]]
    least = all("least_floor_ratio" in r for r in rows)
    body = [
        [r["case"], f"{r['rows']}x{r['T']}", r["floor_ratio"]]
        + [r.get(f"{n}_floor_ratio", "") for n in names]
        + ([r["structure"], r["least_program"], r["least_floor_ratio"]] if least else [])
        for r in rows
    ]
    header = ["case", "B*G x T", "fused / floor"] + [f"{n} / floor" for n in names]
    header += ["passes", "least program with them", "least / floor"] if least else []
    text = (
        "Measured bound of the floor goal (same race, same inputs). "
        + " ".join(f"{n}: {BOUNDS[n]}." for n in names)
        + " bound_copy, bound_exp, bound_copy_inplace and bound_outputs skip a pass that every loss here needs; "
    )
    if least:
        text += (
            "the goal's measured bound is the least program with the loss's own passes (the fused path or "
            + "; ".join(f"for a {k} loss {', '.join(v)}" for k, v in STRUCTURES.items())
            + "): XLA's CPU backend fuses no reduction with an elementwise [B, G, T] output, a clipped "
            "token-ratio loss reduces its clipped term over the inputs (its gradient is 0 on the clipped tokens) "
            "and its gradient waits for a reduction, and a sequence-ratio loss needs its row sums before any "
            f"gradient. Where that least program takes more than {GOALS['loss_vs_floor']:g}x the floor, no XLA "
            "program with the loss's passes measured here reaches the floor as defined; the goal stays as "
            "defined and is judged on the fused path."
        )
    return [text, "", table(header, body)]


def _span(values: list[float], fmt: str = ".3g") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}-{hi:{fmt}}"


def summary(loss: dict[str, Any]) -> list[str]:
    lines = []
    rows = loss["rows"]
    checks = [r["check"] for r in rows if "check" in r]
    if checks:
        lines.append(
            f"Loss+grad against {loss.get('peers')}: loss agrees to {max(c['loss_rel_err'] for c in checks):.2g} "
            f"relative, gradient to {max(c['grad_max_err_rel'] for c in checks):.2g} of its largest entry."
        )
    elif rows and rows[0].get("verl_skipped"):
        lines.append(f"Loss+grad: no peer rows ({rows[0]['verl_skipped']}).")
    if rows:
        text = (
            f"Fused path (jgrpo.fused): {_span([r['floor_ratio'] for r in rows])}x the memory floor "
            f"(autodiff path: {_span([r['autodiff_floor_ratio'] for r in rows])}x), "
            f"{_span([r['speedup_vs_autodiff'] for r in rows])}x faster than autodiff"
        )
        if all("speedup_vs_verl" in r for r in rows):
            text += (
                f", {_span([r['speedup_vs_verl'] for r in rows])}x faster than verl "
                f"(autodiff: {_span([r['autodiff_speedup_vs_verl'] for r in rows])}x)"
            )
        if all("value_floor_ratio" in r for r in rows):
            text += (
                f"; alone, its value pass takes {_span([r['value_floor_ratio'] for r in rows])}x its own floor "
                f"(12 of the 16 bytes/token, no write) and its gradient pass "
                f"{_span([r['gradient_floor_ratio'] for r in rows])}x the floor (exactly the floor's bytes): "
                "loss+grad needs both, a reduction and an elementwise output that XLA's CPU backend does not "
                "fuse into one loop"
            )
        lines.append(text + ".")
    bounded = [r for r in rows if "bound_floor_ratio" in r]
    if bounded:
        target = GOALS["loss_vs_floor"]
        if all("least_floor_ratio" in r for r in bounded):
            key = "least_floor_ratio"
            what = (
                "the least program with each loss's passes (the fused path or the bound programs of a "
                "token-ratio or a sequence-ratio loss)"
            )
        elif all("bound_outputs_floor_ratio" in r for r in bounded):
            key = "bound_outputs_floor_ratio"
            what = "the I/O, one exp per token and a value reduced from the gradient (an unclipped surrogate)"
        else:
            key = "bound_floor_ratio"
            what = "the least program with loss+grad's inputs, fresh gradient output and per-token exp (no loss)"
        text = f"Measured bound of the floor goal: {what} takes {_span([r[key] for r in bounded])}x the floor"
        above = [f"{r['rows']}x{r['T']} {r['case']}" for r in bounded if r[key] > target]
        if len(above) == len(bounded):
            text += f": above the {target:g}x goal in every row, so the floor is out of reach here"
        elif above:
            text += f": above the {target:g}x goal for {', '.join(above)}"
        else:
            text += f": within the {target:g}x goal (the floor is reachable by such a program)"
        if key == "least_floor_ratio":
            which = sorted({r["least_program"] for r in bounded})
            text += f" (the least: {', '.join(which)})"
            if all("bound_outputs_floor_ratio" in r for r in bounded):
                text += (
                    f"; skipping a pass that every loss here needs, the I/O with a value reduced from the gradient "
                    f"{_span([r['bound_outputs_floor_ratio'] for r in bounded])}x"
                )
        elif key == "bound_outputs_floor_ratio":
            text += f"; without the value {_span([r['bound_floor_ratio'] for r in bounded])}x"
        if key != "least_floor_ratio" and all("bound_two_pass_floor_ratio" in r for r in bounded):
            text += (
                f"; in two passes, as a loss whose gradient waits for a reduction, "
                f"{_span([r['bound_two_pass_floor_ratio'] for r in bounded])}x"
            )
        if all("bound_copy_inplace_floor_ratio" in r for r in bounded):
            text += f"; the copy in place {_span([r['bound_copy_inplace_floor_ratio'] for r in bounded])}x"
        if all("fused_vs_two_pass" in r for r in bounded):
            text += f"; the fused path takes {_span([r['fused_vs_two_pass'] for r in bounded])}x the two-pass program"
        lines.append(text + ".")
    prof = [p for label, p in (loss.get("profile") or {}).items() if "xla_bytes_per_token" in p]
    if prof:
        text = (
            f"Memory floor: XLA moves {_span([p['xla_bytes_per_token'] for p in prof])} bytes/token against a floor "
            f"of {_span([p['floor_bytes_per_token'] for p in prof])}"
        )
        if all("temp_arrays_BGT" in p for p in prof):
            text += f" ({_span([p['temp_arrays_BGT'] for p in prof], '.2g')} [B, G, T] float32 temporaries)"
        largest = max(
            (p for label, p in loss["profile"].items() if "faults_per_call" in p),
            key=lambda p: p["measured_s"],
            default=None,
        )
        if largest is not None and "fault_time_s" in largest and largest["faults_per_call"] > 0:
            text += (
                f"; the slowest call pays {largest['faults_per_call']:.0f} page faults "
                f"(~{largest['fault_time_s'] * 1e3:.3g} ms of its {largest['measured_s'] * 1e3:.3g} ms)"
            )
        lines.append(text + " (both paths).")
    return lines


SECTION = Section(
    name="loss",
    title="Loss + gradient",
    measure=measure,
    goals=goals,
    render=render,
    summary=summary,
    needs=("bandwidth",),
)
