"""experiments.shared: seed intervals, matched progress, the exact "contains" reward, one-hot selectors."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import stats
from experiments.common import MIN_SEEDS, decided
from experiments.shared import progress, seeds, tasks
from jgrpo.policies import tabular_init

# ----------------------------------------------------------------------------- seeds


def test_finite_ci_leaves_out_undefined_seeds():
    x = [0.1, np.nan, 0.3, 0.2, np.inf, 0.25]
    ci = seeds.finite_ci(x)
    ref = stats.mean_ci([0.1, 0.3, 0.2, 0.25])
    assert (ci.lo, ci.hi, ci.center, ci.n) == (ref.lo, ref.hi, ref.center, 4)
    one = seeds.finite_ci([np.nan, 2.0])  # one defined seed: no interval, no centre
    assert one.n == 1 and one.lo == -math.inf and one.hi == math.inf and math.isnan(one.center)
    assert seeds.finite_ci([]).n == 0


def test_paired_finite_ci_drops_pairs_jointly():
    a, b = [1.0, 2.0, np.nan, 4.0, 5.0], [0.5, 1.0, 1.0, np.nan, 4.0]
    ci = seeds.paired_finite_ci(a, b)
    ref = stats.paired_diff_ci([1.0, 2.0, 5.0], [0.5, 1.0, 4.0])
    assert (ci.lo, ci.hi, ci.n) == (ref.lo, ref.hi, 3)
    assert seeds.paired_finite_ci([1.0, np.nan], [np.nan, 1.0]).n == 0
    with pytest.raises(ValueError, match="pair up"):
        seeds.paired_finite_ci([1.0, 2.0], [1.0])
    assert seeds.fmt_ci(None) == "undefined" and seeds.fmt_ci(ci) == ci.fmt("+.3f")


def test_lies_above_and_decided():
    above, below, across = (stats.Interval(lo, hi, 0.0, 6) for lo, hi in ((0.1, 0.3), (-0.3, -0.1), (-0.1, 0.1)))
    assert [seeds.lies_above(c) for c in (above, below, across, None)] == [True, False, None, None]
    assert seeds.lies_above(above, 0.2) is None and seeds.lies_above(above, 0.05) is True
    assert decided(True, MIN_SEEDS) == "reproduced" and decided(False, MIN_SEEDS) == "not reproduced"
    assert decided(True, MIN_SEEDS - 1) == "inconclusive" and decided(None, 100) == "inconclusive"


def test_band_is_mean_ci_per_column():
    y = np.random.default_rng(0).normal(size=(6, 4))
    mean, lo, hi = seeds.band(y)
    for j in range(4):
        ci = stats.mean_ci(y[:, j])
        assert (mean[j], lo[j], hi[j]) == (ci.center, ci.lo, ci.hi)
    mean_t, lo_t, _ = seeds.band(y.T, axis=1)
    np.testing.assert_array_equal(mean_t, mean)
    np.testing.assert_array_equal(lo_t, lo)
    m1, l1, h1 = seeds.band(y[:1])  # one seed: a zero-width band
    np.testing.assert_array_equal(l1, m1)
    np.testing.assert_array_equal(h1, y[0])
    y[2, 1] = np.nan
    assert np.isnan(seeds.band(y)[1][1]) and np.isfinite(seeds.band(y)[1][0])  # a column with NaN is not drawn


# ----------------------------------------------------------------------------- matched progress


def test_first_reach_and_values_at_levels():
    r = np.array([0.1, 0.3, 0.2, 0.5, 0.4])
    assert progress.first_reach(r, 0.25) == 1 and progress.first_reach(r, 0.1) == 0
    assert progress.first_reach(r, 0.45) == 3 and progress.first_reach(r, 0.6) is None
    values = np.array([[10.0, 11.0, 12.0, 13.0, 14.0]])
    got = progress.values_at_levels(r[None], values, np.array([0.05, 0.3, 0.45, 0.9]))
    np.testing.assert_array_equal(got, [[10.0, 11.0, 13.0, 14.0]])  # never reached: the last step


def test_matched_progress_reads_both_runs_at_equal_reward():
    r1, v1 = np.array([0.2, 0.4, 0.6, 0.8]), np.array([1.0, 2.0, 3.0, 4.0])
    r2, v2 = np.array([0.2, 0.3, 0.4, 0.5]), np.array([1.0, 1.0, 1.0, 1.0])
    diff, gain = progress.matched_progress(r1, v1, r2, v2, levels=2, min_gain=0.1)
    # common range 0.2 .. 0.5, levels 0.23 and 0.5: run 1 first reaches them at steps 1 and 2
    assert gain == pytest.approx(0.3) and diff == pytest.approx(((2 - 1) + (3 - 1)) / 2)
    diff, gain = progress.matched_progress(r1, v1, r2, v2, levels=2, min_gain=0.5)
    assert math.isnan(diff) and gain == pytest.approx(0.3)


# ----------------------------------------------------------------------------- tasks


def _enumerate_contains(logits: np.ndarray, token: int, eos: int | None) -> float:
    """float64 enumeration of P(the completion contains ``token``) under the tabular policy (EOS ends it)."""
    t_max, _, vocab = logits.shape
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    total = 0.0
    for seq in itertools.product(range(vocab), repeat=t_max):
        if eos is not None and eos in seq[:-1] and any(v != 0 for v in seq[seq.index(eos) + 1 :]):
            continue  # a completion that ends early is counted once (padding after EOS)
        lp, prev = 0.0, vocab
        end = seq.index(eos) + 1 if eos is not None and eos in seq else t_max
        for t in range(end):
            lp += logp[t, prev, seq[t]]
            prev = seq[t]
        total += math.exp(lp) * (token in seq[:end])
    return total


@pytest.mark.parametrize("eos", [None, 1])
def test_contains_probability_matches_enumeration(eos):
    params = tabular_init(jax.random.key(4), vocab=3, max_len=4, scale=1.0)
    exact = float(tasks.contains_probability(params, 2, eos=eos, length=4))
    ref = _enumerate_contains(np.asarray(params["logits"], np.float64), 2, eos)
    assert exact == pytest.approx(ref, rel=1e-5) and 0.05 < ref < 0.95


def test_one_hot_sum_selects_exactly():
    values = [jnp.float32(1.5), jnp.float32(-2.0), jnp.float32(7.0)]
    for k in range(3):
        sel = jax.nn.one_hot(k, 3)
        assert float(tasks.one_hot_sum(sel, values)) == float(values[k])
    grads = jax.grad(lambda x: tasks.one_hot_sum(jax.nn.one_hot(1, 3), [x, 2 * x, 3 * x]))(1.0)
    assert float(grads) == 2.0  # only the selected value carries a gradient
    specs = tasks.comparison_specs()
    assert set(specs) == {"grpo", "dr_grpo", "dapo", "gspo", "grpo+debias"} and specs["grpo+debias"].prefix_debias
