"""The reward_scaling experiment's measurement (no I/O): one compiled deviation grid per (policy, dtype, preset).

``analysis.reward_scale.deviation_grid`` runs μ optimizer steps on one fixed batch for φ = 1, every φ of
the sweep and the floor runs, over every setting and data set (traced ``vmap`` axes); each setting
becomes one :class:`~experiments.reward_scaling.cells.Cell`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jgrpo
import jgrpo.models as M
from analysis import reward_scale as rs
from experiments.reward_scaling.cells import Cell
from experiments.reward_scaling.config import DTYPES, Config, Setting, settings
from experiments.reward_scaling.data import (
    checkpoint_data,
    fit_entropy_filter,
    preset_spec,
    stack,
    tabular_data,
    transformer_data,
    transformer_model,
)
from experiments.shared import checkpoint
from jgrpo import policies as P


def _hypers(cfg: Config, rows: Sequence[Setting], adam_lr: float, sgd_lr: float):
    f32 = lambda xs: np.asarray(xs, np.float32)  # noqa: E731
    hyper = rs.OptimizerHyper(
        learning_rate=f32([sgd_lr if s.sgd else adam_lr for s in rows]),
        eps=f32([s.eps for s in rows]),
        weight_decay=f32([s.weight_decay for s in rows]),
        l2=f32([s.l2 for s in rows]),
        sgd=f32([float(s.sgd) for s in rows]),
    )
    return hyper, f32([s.beta for s in rows])


def measure_cells(cfg, spec, name, policy, dtype, logprob_fn, params, batch, prompt, perms, kinds, rows, lrs, per_call):
    """Runs one compiled grid (or equal chunks of settings) and returns one :class:`Cell` per setting."""
    chunks = [rows] if per_call <= 0 else [rows[i : i + per_call] for i in range(0, len(rows), per_call)]
    out = []
    for chunk in chunks:
        hyper, betas = _hypers(cfg, chunk, *lrs)
        d = rs.deviation_grid(
            spec,
            logprob_fn,
            params,
            batch,
            np.asarray(cfg.scales, np.float32),
            prompt=prompt,
            num_steps=cfg.num_steps,
            optimizer="adamw_or_sgd",
            hypers=hyper,
            betas=betas,
            permutations=perms,
        )
        d = jax.tree.map(lambda x: np.asarray(x, np.float64), d)
        floor_runs = np.max(d.floor_rel_param_dev, axis=-1)  # [D, R, F]
        n_ulp = len(rs.ULP_PHIS)
        for j, s in enumerate(chunk):
            out.append(
                Cell(
                    policy=policy,
                    dtype=dtype,
                    preset=name,
                    degree=rs.reward_degree(spec),
                    setting=s.key,
                    dev=d.max_rel_param_dev[:, j],
                    floor=d.noise_floor[:, j],
                    kinds=tuple(kinds),
                    rms_sqrt_v=d.ref_rms_sqrt_v[:, j, -1],
                    displacement=d.displacement[:, j, -1],
                    ulp_floor=np.max(floor_runs[:, j, :n_ulp], axis=-1),
                    reorder_floor=np.max(floor_runs[:, j, n_ulp:], axis=-1, initial=0.0),
                )
            )
    return out


def run_tabular(cfg, rows, specs, progress):
    data = [tabular_data(cfg, seed, kind) for kind in cfg.reward_kinds for seed in range(cfg.seeds)]
    kinds = [kind for kind in cfg.reward_kinds for _ in range(cfg.seeds)]
    params, batch, prompt, perms = (stack([x[i] for x in data]) for i in range(4))
    specs = {n: None if s is None else fit_entropy_filter(s, batch) for n, s in specs.items()}
    cells, timings = [], {}
    for dtype in DTYPES:
        names = [n for n in (cfg.presets if dtype == "float32" else cfg.bf16_presets) if specs.get(n) is not None]
        p_dtype = jax.tree.map(lambda x, dt=dtype: jnp.asarray(x, dt), params)
        for name in names:
            progress(f"tabular {dtype} {name}")
            t0 = time.perf_counter()
            cells += measure_cells(
                cfg,
                specs[name],
                name,
                "tabular",
                dtype,
                P.tabular_logprob,
                p_dtype,
                batch,
                prompt,
                perms,
                kinds,
                rows,
                (cfg.adam_lr, cfg.sgd_lr),
                0,
            )
            timings[f"tabular/{dtype}/{name}"] = time.perf_counter() - t0
    return cells, timings, specs


def run_transformer(cfg, rows, specs, progress):
    cells, timings, model = [], {}, None
    kinds = [kind for kind in cfg.tf_reward_kinds for _ in range(cfg.seeds)]
    for dtype in cfg.tf_dtypes:
        if cfg.model is not None:  # --model: the checkpoint's parameters and rollouts (jgrpo.models' logprob_fn)
            data = [
                checkpoint_data(cfg, dtype, seed, kind) for kind in cfg.tf_reward_kinds for seed in range(cfg.seeds)
            ]
            mc = data[0][0].config
            model = {"checkpoint": cfg.model, "description": data[0][5], "n_layers": mc.num_layers,
                     "d_model": mc.hidden_size, "vocab": mc.vocab_size}  # fmt: skip
            logprob_fn = M.logprob_fn(data[0][0])
            longest = max(x[3].ids.shape[-1] for x in data)  # a common prompt length P, to stack the data sets
            pad = checkpoint.load(cfg.model, dtype).tokenizer.pad_id
            data = [(*x[:3], checkpoint.left_pad(x[3], longest, pad), *x[4:]) for x in data]
        else:
            mcfg = transformer_model(cfg, dtype)
            model = dataclasses.asdict(mcfg)
            data = [
                transformer_data(cfg, mcfg, seed, kind) for kind in cfg.tf_reward_kinds for seed in range(cfg.seeds)
            ]
            logprob_fn = jgrpo.nnx_logprob_fn(data[0][0])
        params, batch, prompt, perms = (stack([x[i] for x in data]) for i in range(1, 5))
        fitted = {n: None if s is None else fit_entropy_filter(s, batch) for n, s in specs.items()}
        for name in cfg.tf_presets:
            if fitted.get(name) is None:
                continue
            progress(f"transformer {dtype} {name}")
            t0 = time.perf_counter()
            cells += measure_cells(
                cfg,
                fitted[name],
                name,
                "transformer",  # the model rows (the NNX transformer or --model's checkpoint)
                dtype,
                logprob_fn,
                params,
                batch,
                prompt,
                perms,
                kinds,
                rows,
                (cfg.tf_adam_lr, cfg.tf_sgd_lr),
                cfg.tf_settings_per_call,
            )
            timings[f"transformer/{dtype}/{name}"] = time.perf_counter() - t0
    return cells, timings, model


class Measurement(NamedTuple):
    """Everything the claims and the report read.

    Attributes:
      rows: the optimizer settings (the map's columns); specs: ``{preset name: MethodSpec or None}``.
      cells: one :class:`Cell` per (policy, dtype, preset, setting) run.
      model: the transformer's config as a dict (None without the transformer rows).
      timings: seconds per (policy, dtype, preset) and in total.
    """

    rows: tuple[Setting, ...]
    specs: dict
    cells: list
    model: dict | None
    timings: dict


def measure(cfg: Config, progress=lambda f, m: None) -> Measurement:
    """Every tabular (policy, dtype, preset) grid, then the transformer's."""
    t_start = time.perf_counter()
    rows = settings(cfg)
    names = tuple(dict.fromkeys((*cfg.presets, *(cfg.tf_presets if cfg.transformer else ()))))
    specs = {n: preset_spec(n) for n in names}
    total = (
        len(cfg.presets) + len(cfg.bf16_presets) + (len(cfg.tf_presets) * len(cfg.tf_dtypes) if cfg.transformer else 0)
    )
    done = [0]

    def step(msg: str) -> None:
        progress(done[0] / max(total, 1), msg)
        done[0] += 1

    cells, timings, specs = run_tabular(cfg, rows, specs, step)
    model = None
    if cfg.transformer:
        tf_cells, tf_timings, model = run_transformer(cfg, rows, specs, step)
        cells += tf_cells
        timings.update(tf_timings)
    timings["total"] = time.perf_counter() - t_start
    return Measurement(rows, specs, cells, model, timings)
