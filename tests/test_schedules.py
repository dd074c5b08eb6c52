"""Schedules and inference timesteps: Hypothesis invariants and closed forms."""

import math

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd

T_ = st.integers(2, 2000)


def _check_valid(s: rd.Schedule):
    ab = np.asarray(s.alphas_cumprod)
    assert ab.dtype == np.float64 and ab.shape == (s.num_train_timesteps,)
    assert np.all(np.diff(ab) < 0), "alphas_cumprod must be strictly decreasing"
    assert np.all((ab >= 0) & (ab < 1))
    np.testing.assert_allclose(np.asarray(s.alphas), 1 - np.asarray(s.betas), rtol=0, atol=0)


@given(T=T_, b0=st.floats(1e-5, 1e-2), span=st.floats(1e-4, 0.05))
def test_linear_schedules_valid(T, b0, span):
    s = rd.linear_schedule(T, b0, b0 + span)
    _check_valid(s)
    assert s.betas[0] == b0 and s.betas[-1] == pytest.approx(b0 + span, rel=1e-14)
    _check_valid(rd.scaled_linear_schedule(T, b0, b0 + span))


@given(T=T_)
def test_guided_diffusion_linear_rescales_with_T(T):
    if T < 20:  # β_end = 0.02·1000/T would exceed 1: refused, not clipped to a ZSNR table
        with pytest.raises(ValueError, match="num_train_timesteps must be >= 20"):
            rd.guided_diffusion_linear_schedule(T)
        return
    s = rd.guided_diffusion_linear_schedule(T)
    _check_valid(s)
    assert s.betas[0] == pytest.approx(1e-4 * 1000 / T, rel=1e-14)
    assert s.betas[-1] == pytest.approx(0.02 * 1000 / T, rel=1e-14)


def test_guided_diffusion_linear_equals_linear_at_1000():
    np.testing.assert_array_equal(rd.guided_diffusion_linear_schedule(1000).betas,
                                  rd.linear_schedule(1000).betas)


@given(T=T_, s=st.floats(0.0, 0.1))
def test_cosine_matches_closed_form(T, s):
    sch = rd.cosine_schedule(T, s=s)
    _check_valid(sch)
    f = lambda tau: math.cos((tau + s) / (1 + s) * math.pi / 2) ** 2  # IDDPM Eq. 17
    expected = [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)]
    np.testing.assert_allclose(sch.betas, expected, rtol=1e-12, atol=1e-15)
    # where no β was clipped, ᾱ_t = f((t+1)/T)/f(0)
    unclipped = np.cumprod(np.asarray(expected) < 0.999).astype(bool)
    ab = np.array([f((i + 1) / T) / f(0) for i in range(T)])
    np.testing.assert_allclose(sch.alphas_cumprod[unclipped], ab[unclipped], rtol=1e-9)


@given(T=T_, kind=st.sampled_from(["linear", "scaled_linear", "cosine"]))
def test_zero_terminal_snr(T, kind):
    base = {"linear": rd.linear_schedule, "scaled_linear": rd.scaled_linear_schedule,
            "cosine": rd.cosine_schedule}[kind](T)
    z = rd.rescale_zero_terminal_snr(base)
    assert z.alphas_cumprod[-1] == 0.0 and z.betas[-1] == 1.0
    assert z.alphas_cumprod[0] == pytest.approx(base.alphas_cumprod[0], rel=4e-16, abs=0)
    assert np.all(np.diff(z.alphas_cumprod) < 0)
    assert np.all((z.betas[:-1] > 0) & (z.betas[:-1] < 1))


@given(T=st.integers(1, 300), data=st.data())
def test_inference_timesteps_invariants(T, data):
    n = data.draw(st.integers(1, T), label="n")
    for spacing in rd.SPACINGS:
        t = rd.inference_timesteps(T, n, spacing)
        assert t.dtype == np.int64 and t.shape == (n,)
        assert np.all(np.diff(t) < 0), f"{spacing}: not strictly descending: {t}"
        assert t.min() >= 0 and t.max() <= T - 1
    assert rd.inference_timesteps(T, n, "trailing")[0] == T - 1
    assert rd.inference_timesteps(T, n, "linspace")[-1] == 0


@pytest.mark.parametrize("T", [1, 7, 1000])
def test_inference_timesteps_every_n(T):
    """Every n in 1..T, against the definitions written out independently: trailing with exact
    rationals (Python's round of a Fraction is half to even, like NumPy's)."""
    for n in range(1, T + 1):
        lead = np.arange(n)[::-1] * (T // n)
        trail = np.array([round(Fraction(T * (n - i), n)) - 1 for i in range(n)], np.int64)
        lin = np.round(np.linspace(0, T - 1, n))[::-1].astype(np.int64)
        for spacing, ref in (("leading", lead), ("trailing", trail), ("linspace", lin)):
            t = rd.inference_timesteps(T, n, spacing)
            np.testing.assert_array_equal(t, ref, err_msg=f"{spacing} T={T} n={n}")
            assert len(set(t.tolist())) == n


def test_trailing_float_arange_trap():
    """A float-step arange gives n + 1 steps (the last one −1) for T = 1000, n = 61."""
    naive = np.round(np.arange(1000, 0, -1000 / 61)).astype(np.int64) - 1
    assert len(naive) == 62 and naive[-1] == -1
    t = rd.inference_timesteps(1000, 61, "trailing")
    assert len(t) == 61 and t[-1] >= 0


def test_schedule_alpha_bar_lookup():
    s = rd.linear_schedule(10)
    assert s.alpha_bar(3) == float(s.alphas_cumprod[3])
    with pytest.raises(ValueError, match="t must lie in"):
        s.alpha_bar(10)


def test_schedules_on_array_api_strict():
    xs = pytest.importorskip("array_api_strict")
    for make in (rd.linear_schedule, rd.scaled_linear_schedule, rd.cosine_schedule,
                 rd.guided_diffusion_linear_schedule):
        s = make(50, xp=xs)
        ref = make(50)
        assert type(s.alphas_cumprod).__module__.startswith("array_api_strict")
        np.testing.assert_allclose(np.from_dlpack(s.alphas_cumprod), ref.alphas_cumprod,
                                   rtol=1e-14)
    z = rd.rescale_zero_terminal_snr(rd.linear_schedule(50, xp=xs))
    assert float(z.alphas_cumprod[-1]) == 0.0
    np.testing.assert_array_equal(np.from_dlpack(rd.inference_timesteps(50, 7, "trailing", xp=xs)),
                                  rd.inference_timesteps(50, 7, "trailing"))
