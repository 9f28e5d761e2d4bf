"""Loss + gradient: ``jax.jit(jax.value_and_grad(jgrpo.loss))`` against verl and against the memory floor.

verl's ``compute_policy_loss_{vanilla,gspo}`` (with its ``agg_loss``) plus
``loss.backward()`` in torch run on identical float32 inputs; the floor is the
bytes the computation must move (read logp, logp_old, mask and rewards, write the
gradient) over the in-place copy bandwidth of the ``bandwidth`` section (same run,
same device).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo
from experiments.bench import env
from experiments.bench.config import Config
from experiments.bench.goals import goal
from experiments.bench.harness import Timing, blocking, cost, faults_per_call, op_profile, race
from experiments.bench.registry import Context, Section
from experiments.bench.render import fmt_ops, table
from experiments.bench.sections.bandwidth import reference
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


@functools.cache
def loss_grad_fn(spec: jgrpo.MethodSpec) -> Callable:
    """``jax.jit(jax.value_and_grad(jgrpo.loss))`` for one method, cached per spec."""
    return jax.jit(jax.value_and_grad(lambda logp, batch: jgrpo.loss(spec, logp, batch)[0]))


def floor_bytes(b: int, g: int, t: int) -> int:
    """Bytes that loss+grad must move: read logp, logp_old, mask (float32) and rewards; write the gradient."""
    return 4 * (4 * b * g * t + b * g)


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
    """Loss + gradient vs verl and vs the memory floor, for every case and size."""
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
            f = loss_grad_fn(spec)
            fns = {"jgrpo": blocking(f, logp, batch)}
            row: dict[str, Any] = {"case": label, "rows": n_rows, "T": t, "B": b, "G": g}
            if peers is not None:
                # threads = cores as XLA uses; on CPU also 1 thread, which an oversubscribed machine can favour
                verl = _verl_call(peers, spec, loss_mode, data, threads=env.cores())
                fns["verl"] = verl
                if peers.device == "cpu" and env.cores() > 1:
                    fns["verl_1thread"] = _verl_call(peers, spec, loss_mode, data, threads=1)
                row["check"] = _check(f(logp, batch), verl(), (b, g, t))
            times = race(fns, rounds=cfg.rounds, budget_s=cfg.budget_s)
            row["jgrpo_s"] = times["jgrpo"].median
            row["floor_s"] = floor_s
            row["floor_ratio"] = times["jgrpo"].median / floor_s
            if "verl" in times:
                row.update(_verl_ratios(times))
            else:
                row["verl_skipped"] = ctx.peer_skip
            row["samples"] = {k: v.samples for k, v in times.items()}
            rows.append(row)
            if cfg.profile:
                ops = size_idx == len(cfg.loss_sizes) - 1  # per-op trace at the largest size only
                profiles[f"{label} {n_rows}x{t}"] = _profile(f, logp, batch, (b, g, t), times["jgrpo"], bw, ops)
    return {"rows": rows, "profile": profiles, "bandwidth": bw, "peers": getattr(peers, "version", None)}


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
    """verl / jgrpo at each thread setting; the goal is judged against verl's faster setting."""
    j = times["jgrpo"]
    out = {"verl_s": times["verl"].median, "speedup_vs_verl_threads_cores": times["verl"].median / j.median}
    if "verl_1thread" in times:
        out["verl_1thread_s"] = times["verl_1thread"].median
        out["speedup_vs_verl_1thread"] = times["verl_1thread"].median / j.median
    verls = [times[k] for k in ("verl", "verl_1thread") if k in times]
    out["speedup_vs_verl"] = min(v.median for v in verls) / j.median
    out["speedup_vs_verl_min"] = min(min(v.samples) for v in verls) / min(j.samples)
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
    out = []
    for r in loss["rows"]:
        key = f"{r['case']} {r['rows']}x{r['T']}"
        if "speedup_vs_verl" in r:
            out.append(
                goal(
                    "loss_vs_verl",
                    key,
                    r["speedup_vs_verl"],
                    what=f"{key}: verl time (faster thread setting) / jgrpo time",
                )
            )
        out.append(goal("loss_vs_floor", key, r["floor_ratio"], what=f"{key}: jgrpo time / memory floor"))
    return out


def _ms(p: dict[str, Any], key: str) -> float | str:
    """A time in ms, or blank when it was not measured (never a 0 standing for 'unknown')."""
    return p[key] * 1e3 if key in p else ""


def render(loss: dict[str, Any]) -> list[str]:
    lines = [
        f"Floor = bytes that must move (read logp, logp_old, mask, rewards; write the gradient; float32) / "
        f"{reference(loss['bandwidth'])}. verl gets the same data flattened to [B*G, T] and its token-level "
        "advantages precomputed (untimed).",
        "",
    ]
    rows = []
    for r in loss["rows"]:
        check = r.get("check", {})
        rows.append(
            (
                r["case"],
                f"{r['rows']}x{r['T']}",
                r.get("speedup_vs_verl_threads_cores", r.get("verl_skipped", "")),
                r.get("speedup_vs_verl_1thread", ""),
                r.get("speedup_vs_verl", ""),
                r.get("speedup_vs_verl_min", ""),
                r["floor_ratio"],
                check.get("loss_rel_err", ""),
                check.get("grad_mismatch_frac", ""),
            )
        )
    header = [
        "case",
        "B*G x T",
        "verl (threads = cores) / jgrpo",
        "verl (1 thread) / jgrpo",
        "faster verl / jgrpo",
        "same, best runs",
        "jgrpo / floor",
        "loss rel err vs verl",
        "grad mismatch frac",
    ]
    lines.append(table(header, rows))
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
            "case",
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
            "absolute ms of this run, only to split the wall time; blank: not measured on this backend):",
            "",
            table(header, rows),
            "Top ops (ms per call, summed over threads):",
            "",
        ]
        lines += [f"- {label}: {fmt_ops(p['ops_ms'])}" for label, p in prof.items() if "ops_ms" in p] + [""]
    return lines


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
    prof = [p for p in (loss.get("profile") or {}).values() if "xla_bytes_per_token" in p]
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
        lines.append(text + ".")
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
