"""Bad input gets a clear error naming the argument (issue 9 §4): jgrpo.loss, GroupBatch, methods.get, MethodSpec."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgrpo
from jgrpo import methods
from tests.conftest import make_batch


def _batch():
    return make_batch(0)


@pytest.mark.parametrize("value", [2.0, 0.5, -1.0])
def test_mask_other_than_zero_one_is_an_error(value):
    batch, logp = _batch()
    mask = np.asarray(batch.mask).copy()
    mask[1, 2, 0] = value
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1 .* first .* at index \(1, 2, 0\)"):
        jgrpo.loss(methods.get("grpo"), logp, dataclasses.replace(batch, mask=mask))


def test_bool_mask_is_accepted():
    batch, logp = _batch()
    v1 = jgrpo.loss(methods.get("grpo"), logp, batch)[0]
    v2 = jgrpo.loss(methods.get("grpo"), logp, dataclasses.replace(batch, mask=np.asarray(batch.mask) > 0))[0]
    np.testing.assert_allclose(v1, v2, rtol=1e-6)


@pytest.mark.parametrize("field", ["logp", "logp_old", "logp_ref"])
@pytest.mark.parametrize(
    "value, match",
    [
        (3.0, r"must be <= 0 \(a log-probability\); got positive values on 1 completion token"),
        (np.inf, r"has \+inf on 1 completion token"),
        (-np.inf, r"has -inf on 1 completion token"),
        (np.nan, r"has NaN on 1 completion token"),
    ],
)
def test_bad_log_probabilities_are_errors(field, value, match):
    batch, logp = _batch()
    arrays = {"logp": logp.copy(), "logp_old": np.asarray(batch.logp_old).copy()}
    arrays["logp_ref"] = np.asarray(batch.logp_ref).copy()
    arrays[field][0, 0, 0] = value  # a completion token (lengths >= 1 there)
    assert batch.mask[0, 0, 0] == 1
    bad = dataclasses.replace(batch, logp_old=arrays["logp_old"], logp_ref=arrays["logp_ref"])
    with pytest.raises(ValueError, match=f"{field} {match}" if field != "logp" else f"^logp {match}"):
        jgrpo.loss(methods.get("grpo"), arrays["logp"], bad)


def test_rounding_level_positive_log_probability_is_accepted():
    batch, logp = _batch()
    logp = logp.copy()
    logp[0, 0, 0] = np.float32(1e-7)  # < 4 eps(float32): rounding of a log-softmax
    jgrpo.loss(methods.get("grpo"), logp, batch)


def test_padding_may_hold_anything():
    batch, logp = _batch()
    pad = np.asarray(batch.mask) == 0
    assert pad.any()
    dirty = np.where(pad, 5.0, logp).astype(np.float32)  # positive junk on padding is not checked
    jgrpo.loss(methods.get("grpo"), dirty, batch)


def test_kl_with_extreme_log_probability_is_bounded_and_flagged():
    """logp = -90 on a token with a KL term: the k3 clamp bounds it (documented) and aux says so."""
    batch, logp = _batch()
    logp = logp.copy()
    logp_old = np.asarray(batch.logp_old).copy()
    logp[0, 0, 0] = -90.0
    logp_old[0, 0, 0] = -90.0  # ratio 1; the KL log-ratio logp_ref - logp is ~ +90
    spec = methods.get("grpo")
    value, aux = jgrpo.loss(spec, logp, dataclasses.replace(batch, logp_old=logp_old))
    c = spec.kl_log_ratio_clamp
    assert c == 20.0
    bound = spec.beta * (np.exp(c) - c - 1)  # one token's share is at most beta * weight * k3_max, weight <= 1
    assert 0 < abs(float(value)) <= bound
    assert float(aux["clamp_frac"]) > 0  # not silent
    clean_aux = jgrpo.loss(spec, *_batch()[::-1])[1]
    assert float(clean_aux["clamp_frac"]) == 0.0


def test_python_lists_are_converted():
    batch, logp = _batch()
    as_lists = jgrpo.GroupBatch(
        mask=np.asarray(batch.mask).tolist(),
        logp_old=np.asarray(batch.logp_old).tolist(),
        rewards=np.asarray(batch.rewards).tolist(),
        logp_ref=np.asarray(batch.logp_ref).tolist(),
    )
    spec = methods.get("grpo")
    ref = jgrpo.loss(spec, logp, dataclasses.replace(batch, tokens=None, entropy=None))[0]
    np.testing.assert_allclose(jgrpo.loss(spec, logp.tolist(), as_lists)[0], ref, rtol=1e-6)


def test_ragged_list_gives_a_short_error():
    with pytest.raises(ValueError) as info:
        jgrpo.GroupBatch(mask=[[1, 1, 1], [1]], logp_old=[[-1.0, -1.0, -1.0], [-1.0]], rewards=[1.0, 0.0])
    message = str(info.value)
    assert message.startswith("GroupBatch.mask: a Python list could not be converted") and len(message) < 200


def test_group_batch_replace():
    batch, _ = _batch()
    assert batch.replace(rewards=np.zeros((2, 4))).rewards.shape == (2, 4)
    with pytest.raises(ValueError, match=r"unknown GroupBatch field\(s\) \['reward'\]"):
        batch.replace(reward=1)


# ----------------------------------------------------------------------------- methods.get / MethodSpec


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(eps_high="0.2"), TypeError, r"MethodSpec.eps_high must be a float; got '0.2' \(str\)"),
        (dict(beta=None), TypeError, r"MethodSpec.beta must be a float; got None"),
        (dict(gtpo_conflicts=1), TypeError, r"MethodSpec.gtpo_conflicts must be a bool; got 1 \(int\)"),
        (dict(std_ddof=1.0), TypeError, r"MethodSpec.std_ddof must be an int"),
        (dict(reward_weights=[1.0, "a"]), TypeError, r"MethodSpec.reward_weights must be a float; got 'a'"),
        (dict(top_entropy_quantile=1.5), ValueError, r"MethodSpec.top_entropy_quantile must be in \[0, 1\]"),
        (dict(sequence_terms="once"), ValueError, r"sequence_terms 'once' applies to objective 'sequence'"),
        (dict(ratio_level="sequence", objective="logp"), ValueError, r"ratio_level 'sequence' applies to"),
    ],
)
def test_wrongly_typed_or_valued_override_names_its_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        methods.get("dapo", **kwargs)


def test_numpy_scalars_are_accepted_and_stored_as_floats():
    spec = methods.get("dapo", eps_high=np.float32(0.25), reward_weights=[1, 0.5])
    assert type(spec.eps_high) is float and spec.reward_weights == (1.0, 0.5)
    hash(spec)


def test_beta_as_jax_array_is_refused_at_get():
    with pytest.raises(TypeError, match=r"MethodSpec.beta must be a Python float, got a jax.Array"):
        methods.get("grpo", beta=jnp.float32(0.04))


def test_replace_unknown_field_is_the_same_error_as_get():
    with pytest.raises(ValueError) as via_get:
        methods.get("grpo", foo=1)
    with pytest.raises(ValueError) as via_replace:
        methods.get("grpo").replace(foo=1)
    assert str(via_get.value) == str(via_replace.value)
    assert str(via_get.value).startswith("unknown MethodSpec field(s) ['foo']")


def test_rloo_with_one_completion_names_the_real_reason():
    batch, logp = make_batch(0, g=1, empty=False)
    with pytest.raises(ValueError, match=r"rloo's leave-one-out baseline .* needs a group size G >= 2; got G = 1"):
        jgrpo.loss(methods.get("rloo"), logp, batch)
    with pytest.raises(ValueError, match=r"divides by a group reward std and needs a group size G >= 2"):
        jgrpo.loss(methods.get("grpo"), logp, batch)


@pytest.mark.parametrize("flavor, kind", [("paper", "kl"), ("verl", "kl"), ("trl", "kl_importance")])
def test_beta_on_a_preset_without_regularizer_turns_the_kl_on(flavor, kind):
    spec = methods.get("dapo", flavor=flavor, beta=0.04)
    assert spec.regularizer == kind and spec.beta == 0.04
    batch, logp = _batch()
    with_kl = jgrpo.loss(spec, logp, batch)
    without = jgrpo.loss(methods.get("dapo", flavor=flavor), logp, batch)
    assert float(with_kl[1]["regularizer"].sum()) > 0
    np.testing.assert_allclose(with_kl[1]["policy"], without[1]["policy"], rtol=1e-6)
    assert float(with_kl[0]) != float(without[0])  # the KL is in the loss, not silently dropped
    assert methods.get("dapo", beta=0.0).regularizer == "none"


def test_beta_without_regularizer_is_refused_when_explicit():
    with pytest.raises(ValueError, match=r"MethodSpec.beta = 0.04 has no effect with regularizer 'none'"):
        methods.get("dapo").replace(beta=0.04)
    with pytest.raises(ValueError, match=r"has no effect with regularizer 'none'"):
        methods.get("dapo", beta=0.04, regularizer="none")


# ----------------------------------------------------------------------------- checked mode under jit


def test_checked_loss_reports_bad_values_under_jit():
    batch, logp = _batch()
    spec = methods.get("grpo")
    checked = jax.jit(jgrpo.checked_loss, static_argnums=0)
    err, (value, _) = checked(spec, logp, batch)
    err.throw()  # clean input: no error
    np.testing.assert_allclose(value, jgrpo.loss(spec, logp, batch)[0], rtol=1e-6)
    cases = [
        ("logp", np.nan, "logp has NaN on completion tokens"),
        ("logp", 3.0, "logp must be <= 0"),
        ("logp_ref", np.inf, "logp_ref has \\+-inf on completion tokens"),
        ("mask", 2.0, "mask must hold only 0 and 1"),
    ]
    for field, bad_value, match in cases:
        arrays = {"logp": logp.copy(), "logp_ref": np.asarray(batch.logp_ref).copy()}
        arrays["mask"] = np.asarray(batch.mask).copy()
        arrays[field][0, 0, 0] = bad_value
        bad = dataclasses.replace(batch, mask=arrays["mask"], logp_ref=arrays["logp_ref"])
        err, (value, _) = checked(spec, arrays["logp"], bad)
        with pytest.raises(Exception, match=match):
            err.throw()
    # Without the checked mode, jit gives a bare number (here NaN): what the checked mode is for.
    nan_logp = logp.copy()
    nan_logp[0, 0, 0] = np.nan
    assert not np.isfinite(float(jax.jit(jgrpo.loss, static_argnums=0)(spec, nan_logp, batch)[0]))
