"""Tests written to kill the survivors of the mutation run of refdiff/training.py
(docs/mutation.md; python -m benchmarks.mutation --modules training).

Each test names the mutants it kills. Expectations never come from the function under test:
hand-derived values, closed forms written here, or the caller's own draw from the same seed
(the training helpers promise one float64 uniform per sample from the caller's generator).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import refdiff as rd
from refdiff.training import per_sample_mse
from refdiff.backends import numpy_backend


def _strict_device1():
    xs = pytest.importorskip("array_api_strict")
    return xs, xs.Device("device1")


# ----- _batch_size -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(), (0, 3)])
def test_empty_or_0d_batch_refused_with_value_error(shape):
    """Kills _batch_size__mutmut_1 (`or` -> `and`): a 0-d x0 then reaches shape[0]
    (IndexError) and an empty batch (0, 3) is let through."""
    x0 = np.zeros(shape)
    with pytest.raises(ValueError, match="non-empty batch axis"):
        rd.sample_timesteps(x0, 10, generator=0)
    with pytest.raises(ValueError, match="non-empty batch axis"):
        per_sample_mse(x0, x0)


# ----- _check_gamma, the default gammas -------------------------------------------------

@pytest.mark.parametrize("gamma", [True, math.inf])
def test_gamma_bool_and_infinity_refused(gamma):
    """Kills _check_gamma__mutmut_2 (`or` -> `and`: True accepted as 1) and _7
    (`< inf` -> `<= inf`)."""
    with pytest.raises(ValueError, match="gamma must be a positive finite float"):
        rd.min_snr_weight(0.5, gamma)


def test_default_gamma_is_five():
    """Kills min_snr_weight__mutmut_1 and diffusion_loss__mutmut_5 (default γ = 6): MINSNR
    §3's γ = 5. At ᾱ = 0.9 the ε weight is min(1, 5·0.1/0.9) = 5/9; the loss of an output
    off by 1 everywhere is 1·(5/9)."""
    assert rd.min_snr_weight(0.9) == pytest.approx(5.0 / 9.0, rel=1e-15)
    x0, eps = np.zeros((1, 2)), np.zeros((1, 2))
    loss = rd.diffusion_loss(np.ones((1, 2)), x0, eps, 0.9, weighting="min_snr")
    assert float(loss) == pytest.approx(5.0 / 9.0, rel=1e-15)


# ----- _min_snr_weight, _snr: the ᾱ = 0 and ᾱ = 1 ends ------------------------------------

def test_min_snr_eps_weight_is_one_at_alpha_bar_zero_for_small_gamma():
    """Kills _min_snr_weight__mutmut_62 (outer where's condition None): at ᾱ = 0 the ε weight
    is the limit 1 (min(1, γ(1 − ᾱ)/ᾱ) → 1), not min(1, γ) = 0.5 at γ = 0.5."""
    w = rd.min_snr_weight(np.array([0.0, 0.5]), 0.5)
    np.testing.assert_array_equal(w, [1.0, 0.5])  # 0.5·0.5/0.5 = 0.5


def test_limits_need_no_division_by_zero():
    """Kills _min_snr_weight__mutmut_80/87 and _snr__mutmut_14/21 (the safe divisor's
    condition None or == 1): the documented safe forms divide by a placeholder 1 at the
    ends, so no floating-point exception is raised. Hand values: SNR(0) = 0, SNR(1) = ∞,
    w_ε(0) = 1, w_ε(1) = 0."""
    ab = np.array([0.0, 1.0])
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(rd.snr(ab), [0.0, math.inf])
        np.testing.assert_array_equal(rd.min_snr_weight(ab, 5.0), [1.0, 0.0])


# ----- per_sample_mse, diffusion_loss -----------------------------------------------------

def test_per_sample_mse_hand_values():
    """Kills _per_sample_mse__mutmut_5 (d/d on 1-D), _7/_9/_14 (mean over every axis) and
    the per_sample_mse prologue mutants that no test ran: (1/D)·‖·‖² per row."""
    np.testing.assert_array_equal(per_sample_mse(np.array([1.0, 3.0]), np.zeros(2)), [1.0, 9.0])
    pred = np.array([[1.0, 1.0], [2.0, 4.0]])
    np.testing.assert_array_equal(per_sample_mse(pred, np.zeros((2, 2))), [1.0, 10.0])
    with pytest.raises(TypeError, match="target has dtype"):
        per_sample_mse(pred, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="target must have the shape of prediction"):
        per_sample_mse(pred, np.zeros((2, 3)))


def test_diffusion_loss_min_snr_with_float_and_per_sample_levels():
    """Kills diffusion_loss__mutmut_101 (reshape of a Python-float weight) and _107
    (reshape to (-2,)). Hand values: w_ε(0.5) = min(1, 5) = 1, w_ε(0.9) = 5/9; an output off
    by 1 everywhere has per-sample loss 1, so the losses are the weights."""
    x0 = eps = np.zeros((2, 3))
    out = np.ones((2, 3))
    loss = rd.diffusion_loss(out, x0, eps, 0.9, weighting="min_snr", reduction="none")
    np.testing.assert_allclose(loss, [5.0 / 9.0] * 2, rtol=1e-15)
    loss = rd.diffusion_loss(out, x0, eps, np.array([0.5, 0.9]), weighting="min_snr",
                             reduction="none")
    np.testing.assert_allclose(loss, [1.0, 5.0 / 9.0], rtol=1e-15)


def test_diffusion_loss_min_snr_weights_on_torch():
    """Kills diffusion_loss__mutmut_101/107 on a backend whose reshape is strict (NumPy
    reshapes a Python float to (1,) and reads (-2,) as "unknown", which hides both): the
    Python-float weight is used as is and the (B,) weight reshaped to (-1,)."""
    torch = pytest.importorskip("torch")
    x0 = eps = torch.zeros(2, 3, dtype=torch.float64)
    out = torch.ones(2, 3, dtype=torch.float64)
    loss = rd.diffusion_loss(out, x0, eps, 0.9, weighting="min_snr", reduction="none")
    assert torch.allclose(loss, torch.full((2,), 5.0 / 9.0, dtype=torch.float64), rtol=1e-15)
    loss = rd.diffusion_loss(out, x0, eps, torch.tensor([0.5, 0.9], dtype=torch.float64),
                             weighting="min_snr", reduction="none")
    assert torch.allclose(loss, torch.tensor([1.0, 5.0 / 9.0], dtype=torch.float64), rtol=1e-15)


def test_diffusion_loss_checks_eps_against_model_output():
    """Kills diffusion_loss__mutmut_16 (eps dropped from the array check)."""
    x = np.zeros((2, 3))
    with pytest.raises(TypeError, match="eps has dtype"):
        rd.diffusion_loss(x, x, np.zeros((2, 3), np.float32), 0.5)


# ----- the draws: dtype and device of the uniforms -----------------------------------------

def test_torch_draws_are_float64_uniforms_of_the_callers_seed():
    """Kills sample_timesteps__mutmut_17/21 and drop_condition__mutmut_34/38 (the uniforms'
    dtype dropped: torch then draws float32, a different stream). Expected: the documented
    t = ⌊u·T⌋ and u < p with u = torch.rand(B, dtype=float64) from the same seed."""
    torch = pytest.importorskip("torch")
    B, T, p = 64, 1000, 0.5
    u = torch.rand(B, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    t = rd.sample_timesteps(torch.zeros(B, 2), T, generator=7)
    assert torch.equal(t, torch.floor(u * T).to(torch.int64))
    cond = torch.arange(B, dtype=torch.int64)
    out, dropped = rd.drop_condition(cond, -1, p, generator=7)
    assert torch.equal(dropped, u < p)
    assert torch.equal(out, torch.where(u < p, -1, cond))


def test_draws_and_tables_stay_on_the_arrays_device():
    """Kills the device mutants of sample_timesteps (_18/_22), drop_condition (_35/_39),
    _null_array (_24/_27) and alpha_bar_at (_28/_31): on array-api-strict's fake device the
    results must live on "device1" (a table or a draw left on the CPU device mixes devices
    there, which array-api-strict refuses)."""
    xs, dev = _strict_device1()
    x0 = xs.zeros((4, 2), dtype=xs.float64, device=dev)
    t = rd.sample_timesteps(x0, 10, generator=0)
    assert t.device == dev
    ab = rd.alpha_bar_at(rd.linear_schedule(10), t)
    assert ab.device == dev
    cond = xs.asarray([1.0, 2.0, 3.0, 4.0], device=dev)
    out, dropped = rd.drop_condition(cond, 0.0, 0.5, generator=0)
    assert out.device == dev and dropped.device == dev


def test_largest_uniform_gives_the_last_timestep(monkeypatch):
    """The unclipped t = ⌊u·T⌋ stays below T (sample_timesteps' Notes): at the largest
    float64 uniform 1 − 2⁻⁵³, forced through the backend hook, t = T − 1 for T = 1000 and
    for a power of two, T = 1024 (where u·T = T − 2⁻⁴³ exactly)."""
    u_max = np.nextafter(1.0, 0.0)
    monkeypatch.setattr(numpy_backend.NumpyBackend, "_uniform",
                        lambda self, shape, dtype, device, gen: np.full(shape, u_max, dtype))
    for T in (1000, 1024):
        t = rd.sample_timesteps(np.zeros((3, 1)), T, generator=0)
        np.testing.assert_array_equal(t, [T - 1] * 3)


# ----- drop_condition, _null_array ----------------------------------------------------------

def test_null_condition_keeps_the_dtype_of_cond():
    """Kills _null_array__mutmut_23/26 (∅ made in the default dtype: float64 or int64, and a
    0-d float64 array promotes a float32 cond under NumPy 2's rules)."""
    out, _ = rd.drop_condition(np.ones(5, np.float32), 0.0, 1.0, generator=0)
    assert out.dtype == np.float32 and np.all(out == 0)
    out, _ = rd.drop_condition(np.ones(5, np.int32), 9, 1.0, generator=0)
    assert out.dtype == np.int32 and np.all(out == 9)


def test_null_condition_type_errors_name_the_expected_kind():
    """Kills _null_array__mutmut_11 (True accepted as the int 1), _17 (always "an int"),
    _20/_21 (the kind's text)."""
    with pytest.raises(TypeError, match="null_cond must be an int for cond of dtype int"):
        rd.drop_condition(np.arange(3), True, 0.5, generator=0)
    with pytest.raises(TypeError, match="null_cond must be a number or an array for cond of "
                                        "dtype float"):
        rd.drop_condition(np.ones(3), "none", 0.5, generator=0)


def test_drop_condition_prologue():
    """Kills drop_condition__mutmut_3/5 (null_cond dropped from the library check: a torch ∅
    with NumPy labels must be refused as a library mix) and _6 (an array p let through to
    the float check, which words it differently)."""
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="does not mix array libraries"):
        rd.drop_condition(np.ones(3), torch.zeros(()), 0.5, generator=0)
    with pytest.raises(TypeError, match="p must be a Python float"):
        rd.drop_condition(np.ones(3), 0.0, np.array(0.5), generator=0)
