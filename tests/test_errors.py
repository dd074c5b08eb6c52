"""Bad input gets a ValueError/TypeError that names the argument and what it got."""

import math

import numpy as np
import pytest

import refdiff as rd

X = np.ones((2, 3))


@pytest.mark.parametrize("call,exc,match", [
    # schedules: parameters and tables
    (lambda: rd.linear_schedule(0), ValueError, "num_train_timesteps must be a positive int, got 0"),
    (lambda: rd.linear_schedule(10, beta_start=math.nan), ValueError, "beta_start must lie in"),
    (lambda: rd.linear_schedule(10, beta_end=1.5), ValueError, r"beta_end must lie in \(0, 1\], got 1.5"),
    (lambda: rd.linear_schedule(10, beta_start="0.1"), TypeError, "beta_start must be a float, got str"),
    (lambda: rd.cosine_schedule(10, s=-1.0), ValueError, r"s must lie in \[0, inf\], got -1.0"),
    (lambda: rd.cosine_schedule(10, max_beta=0.0), ValueError, "max_beta must lie in"),
    (lambda: rd.Schedule.from_betas([0.1, math.inf]), ValueError, "betas must be finite"),
    (lambda: rd.Schedule.from_betas([0.1, 0.0]), ValueError, r"betas must lie in \(0, 1\]"),
    (lambda: rd.Schedule.from_betas([1.0, 0.5]), ValueError, "betas may equal 1 only at the last"),
    (lambda: rd.Schedule.from_betas([[0.1]]), ValueError, "betas must be 1-D"),
    (lambda: rd.Schedule.from_betas([1e-300, 1e-300]), ValueError, "rounds to 1 in float64"),
    (lambda: rd.Schedule.from_betas([0.5, 1e-300]), ValueError, "strictly decreasing"),
    # inference timesteps
    (lambda: rd.inference_timesteps(10, 11), ValueError, r"num_inference_steps must lie in 1..10"),
    (lambda: rd.inference_timesteps(10, 0), ValueError, "num_inference_steps must be a positive int"),
    (lambda: rd.inference_timesteps(10, 5, "uniform"), ValueError,
     "spacing must be one of 'leading', 'trailing', 'linspace'; got 'uniform'"),
    (lambda: rd.inference_timesteps(10, 5, offset=2), ValueError, "offset must keep every timestep"),
    # alpha-bar ranges and order
    (lambda: rd.q_sample(X, 1.5, X), ValueError, r"alpha_bar_t must lie in \[0, 1\], got 1.5"),
    (lambda: rd.q_sample(X, math.nan, X), ValueError, "alpha_bar_t must lie in"),
    (lambda: rd.predict_x0_eps(X, X, 0.0), ValueError, r"alpha_bar_t must lie in \(0, 1\]"),
    (lambda: rd.predict_x0_eps(X, X, 1.0, "sample"), ValueError, r"alpha_bar_t must lie in \[0, 1\)"),
    (lambda: rd.ddim_step(X, X, 0.5, 0.4), ValueError, "alpha_bar_prev must be >= alpha_bar_t"),
    (lambda: rd.ddim_step(X, X, 1.0, 1.0), ValueError, r"alpha_bar_t must lie in \[0, 1\)"),
    (lambda: rd.ddpm_step(X, X, 0.5, 0.0, X), ValueError, r"alpha_bar_prev must lie in \(0, 1\]"),
    (lambda: rd.q_posterior(X, X, 0.5, 0.4), ValueError, "alpha_bar_prev must be >= alpha_bar_t"),
    (lambda: rd.ddim_step(X, X, np.array([0.5, 0.6]), np.array([0.9, 0.5])), ValueError,
     "alpha_bar_prev must be >= alpha_bar_t"),
    (lambda: rd.q_sample(X, np.array([0.5, 1.5]), X), ValueError, "alpha_bar_t must lie in"),
    (lambda: rd.q_sample(X, np.array([0.5, 0.5, 0.5]), X), ValueError,
     r"alpha_bar_t must be a float, a 0-d array or an array of shape \(B,\) = \(2,\), got shape \(3,\)"),
    (lambda: rd.q_sample(X, "0.5", X), TypeError, "alpha_bar_t must be a float or an array, got str"),
    (lambda: rd.ddim_inversion_step(X, X, 0.5, 0.6), ValueError, "alpha_bar_t must be >= alpha_bar_next"),
    # eta and noise
    (lambda: rd.ddim_step(X, X, 0.5, 0.6, eta=-0.1, noise=X), ValueError, "eta must be a finite float >= 0"),
    (lambda: rd.ddim_step(X, X, 0.1, 0.9, eta=2.0, noise=X), ValueError, "eta=2.0 makes the DDIM variance"),
    (lambda: rd.ddim_step(X, X, 0.5, 0.6, eta=0.5), ValueError, "noise is required when eta > 0"),
    (lambda: rd.ddpm_step(X, X, 0.5, 0.6, None), ValueError, "noise is required for ddpm_step"),
    (lambda: rd.ddim_step(X, X, 0.5, 0.6, clip_x0=-1.0), ValueError, "clip_x0 must be None, a finite bound > 0"),
    # shapes and dtypes
    (lambda: rd.ddim_step(X, np.ones((2, 4)), 0.5, 0.6), ValueError,
     r"eps must have the shape of x_t \(2, 3\), got \(2, 4\)"),
    (lambda: rd.ddpm_step(X, X, 0.5, 0.6, np.ones(3)), ValueError, "noise must have the shape of x_t"),
    (lambda: rd.cfg(X, np.ones((3, 3)), 2.0), ValueError, "eps_cond must have the shape of eps_uncond"),
    (lambda: rd.q_sample(np.ones((2, 3), dtype=np.int64), 0.5, X), TypeError,
     "x0 must have a real floating dtype, got int64"),
    (lambda: rd.q_sample(X.astype(np.float32), 0.5, X), TypeError,
     "eps has dtype float64 but x0 has dtype float32"),
    (lambda: rd.q_sample(X, np.array([1, 1]), X), TypeError, "alpha_bar_t must have a real floating dtype"),
    # names
    (lambda: rd.predict_x0_eps(X, X, 0.5, "eps"), ValueError,
     "prediction_type must be one of 'epsilon', 'sample', 'v_prediction'; got 'eps'"),
    (lambda: rd.ddpm_step(X, X, 0.5, 0.6, X, variance_type="learnt"), ValueError,
     "variance_type must be one of 'fixed_small', 'fixed_large', 'learned', 'learned_range'; "
     "got 'learnt'"),
    (lambda: rd.ddpm_step(X, X, 0.5, 0.6, X, variance_type="learned"), ValueError,
     "variance_type='learned' needs var_values="),
    (lambda: rd.guidance_rescale(X, X, 1.5), ValueError, r"phi must lie in \[0, 1\], got 1.5"),
    (lambda: rd.cfg(X, X, math.inf), ValueError, "scale must lie in"),
    (lambda: rd.cfg_multi(X, [X], [1.0, 2.0]), ValueError, "eps_conds and scales must be non-empty"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_mixing_libraries_names_both():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"x_t is a numpy.ndarray but eps is a torch.Tensor"):
        rd.ddim_step(X, torch.ones(2, 3, dtype=torch.float64), 0.5, 0.6)
    with pytest.raises(TypeError, match="alpha_bar_t is a numpy.ndarray"):
        rd.q_sample(torch.ones(2, 3), np.array([0.5, 0.5]), torch.ones(2, 3))


def test_mixing_devices_names_both():
    xs = pytest.importorskip("array_api_strict")
    a = xs.asarray([[1.0, 2.0]])
    b = xs.asarray([[1.0, 2.0]], device=xs.Device("device1"))
    with pytest.raises(ValueError, match=r"x0 is on device .*CPU_DEVICE.* but eps is on device .*device1"):
        rd.q_sample(a, 0.5, b)


def test_device_alpha_bar_values_not_checked_on_accelerator(monkeypatch):
    """Per-call value checks are skipped off the host (no device synchronisation)."""
    from refdiff import _xp
    monkeypatch.setattr(_xp, "readable", lambda a: False)
    with np.errstate(invalid="ignore"):  # √(1 − 1.5) is NaN: exactly what goes unchecked
        out = rd.q_sample(X, np.array([0.5, 1.5]), X)  # would raise on the host
    assert out.shape == X.shape and np.isnan(out[1]).all()


def test_zero_terminal_snr_with_eps_prediction_refused_in_loop():
    sch = rd.rescale_zero_terminal_snr(rd.linear_schedule(20))
    with pytest.raises(ValueError, match=r"alpha_bar_t = 0 \(zero terminal SNR\)"):
        rd.sample(lambda x, t, c: x * 0, np.ones((1, 2)), sch, num_inference_steps=5,
                  spacing="trailing")


@pytest.mark.parametrize("kwargs,match", [
    (dict(sampler="euler"), "sampler must be one of 'ddim', 'ddpm'; got 'euler'"),
    (dict(final_alpha_bar="zero"), "final_alpha_bar must be one of"),
    (dict(timesteps=[3, 5]), "timesteps must be a non-empty, strictly descending list"),
    (dict(timesteps=[99, 5]), r"in \[0, 19\]"),
    (dict(num_inference_steps=21), r"num_inference_steps must lie in 1..20"),
    (dict(guidance=rd.Guidance(rescale=0.5, rescale_space="x0")),
     "Guidance.rescale_space must be one of 'epsilon', 'sample', 'v_prediction'; got 'x0'"),
])
def test_sample_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rd.sample(lambda x, t, c: x * 0, np.ones((1, 2)), rd.linear_schedule(20), **kwargs)


def test_unknown_backend_lists_known():
    from refdiff.backends import get_backend
    with pytest.raises(ValueError, match="unknown backend 'nonesuch'; known: .*jax.*numpy.*torch"):
        get_backend("nonesuch")
    with pytest.raises(TypeError, match="no refdiff backend owns an object of type list"):
        get_backend([1.0])
