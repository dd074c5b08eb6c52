"""Tier 1: values derived by hand for a tiny schedule, T = 4.

ᾱ = (0.81, 0.64, 0.36, 0.16) so that √ᾱ = (0.9, 0.8, 0.6, 0.4); then most coefficients are
exact binary fractions and each expected value below is written with its derivation.
"""

import math

import numpy as np
import pytest

import refdiff as rd

AB = [0.81, 0.64, 0.36, 0.16]
BETAS = [1 - AB[0]] + [1 - AB[i] / AB[i - 1] for i in range(1, 4)]


def test_tiny_schedule_tables():
    s = rd.Schedule.from_betas(BETAS)
    np.testing.assert_allclose(s.alphas_cumprod, AB, rtol=0, atol=1e-15)
    np.testing.assert_allclose(s.betas, [0.19, 1 - 0.64 / 0.81, 0.4375, 1 - 0.16 / 0.36], atol=1e-15)
    assert s.num_train_timesteps == 4 and s.alphas_cumprod.dtype == np.float64


def test_posterior_t2_to_t1():
    # β' = 1 − 0.36/0.64 = 0.4375; c0 = 0.8·0.4375/0.64 = 0.546875;
    # ct = √0.5625·0.36/0.64 = 0.75·0.5625 = 0.421875; β̃ = 0.36/0.64·0.4375 = 0.24609375
    mean, var = rd.q_posterior(np.array([1.0]), np.array([2.0]), 0.36, 0.64)
    assert mean[0] == pytest.approx(0.546875 * 1 + 0.421875 * 2, abs=1e-15)  # 1.390625
    assert float(var) == pytest.approx(0.24609375, abs=1e-16)
    c0, ct, var2, beta_step = rd.posterior_coefficients(0.36, 0.64)
    assert (c0, ct, beta_step) == pytest.approx((0.546875, 0.421875, 0.4375), abs=1e-15)


def test_q_sample_and_v():
    x0, eps = np.array([1.0]), np.array([0.5])
    assert rd.q_sample(x0, 0.36, eps)[0] == pytest.approx(0.6 * 1 + 0.8 * 0.5, abs=1e-15)  # 1.0
    assert rd.v_target(x0, eps, 0.36)[0] == pytest.approx(0.6 * 0.5 - 0.8 * 1, abs=1e-15)  # -0.5


def test_ddim_eta0_t2_to_t1():
    # x̂_0 = (1 − 0.8·0.5)/0.6 = 1; x_prev = 0.8·1 + 0.6·0.5 = 1.1
    out = rd.ddim_step(np.array([1.0]), np.array([0.5]), 0.36, 0.64)
    assert out[0] == pytest.approx(1.1, abs=1e-15)


def test_ddim_eta1_and_ddpm_t2_to_t1():
    # σ² = β̃ = 0.24609375 = 63/256; √(0.36 − 63/256) = √0.11390625 = 0.3375
    # mean = 0.8·1 + 0.3375·0.5 = 0.96875 (= 0.546875·1 + 0.421875·1, the posterior mean)
    x, e, z = np.array([1.0]), np.array([0.5]), np.array([1.0])
    expected = 0.96875 + math.sqrt(63) / 16
    assert rd.ddim_step(x, e, 0.36, 0.64, eta=1.0, noise=z)[0] == pytest.approx(expected, abs=1e-15)
    assert rd.ddpm_step(x, e, 0.36, 0.64, z)[0] == pytest.approx(expected, abs=1e-15)
    # fixed_large: σ² = β' = 0.4375
    large = rd.ddpm_step(x, e, 0.36, 0.64, z, variance_type="fixed_large")[0]
    assert large == pytest.approx(0.96875 + math.sqrt(0.4375), abs=1e-15)


def test_last_step_to_one():
    # from ᾱ_0 = 0.81 with x_t = 0.9, ε = 0: x̂_0 = 0.9/0.9 = 1, and ᾱ_prev = 1 returns x̂_0
    for out in (rd.ddim_step(np.array([0.9]), np.array([0.0]), 0.81, 1.0),
                rd.ddpm_step(np.array([0.9]), np.array([0.0]), 0.81, 1.0, np.array([5.0]))):
        assert out[0] == pytest.approx(1.0, abs=1e-15)


def test_guidance_values():
    # CFG: 1 + 7.5·(3 − 1) = 16, and the paper's w = 6.5 is s = 7.5
    assert rd.cfg(np.array([1.0]), np.array([3.0]), 7.5)[0] == 16.0
    assert rd.cfg_scale_from_w(6.5) == 7.5 and rd.w_from_cfg_scale(7.5) == 6.5
    # CG Algorithm 2: 1 − 3·√(1 − 0.36)·2 = 1 − 4.8 = −3.8
    assert rd.classifier_guided_eps(np.array([1.0]), np.array([2.0]), 0.36, 3.0)[0] == \
        pytest.approx(-3.8, abs=1e-15)
    # CG Algorithm 1: 1 + 3·0.25·2 = 2.5
    assert rd.classifier_guided_mean(np.array([1.0]), 0.25, np.array([2.0]), 3.0)[0] == 2.5
    # several conditions: 1 + 2·(3 − 1) − 1·(2 − 1) = 4
    assert rd.cfg_multi(np.array([1.0]), [np.array([3.0]), np.array([2.0])], [2.0, -1.0])[0] == 4.0


@pytest.mark.parametrize("T,n,spacing,expected", [
    (4, 2, "leading", [2, 0]),        # stride 4 // 2 = 2
    (4, 2, "trailing", [3, 1]),       # round(4 − i·2) − 1
    (4, 2, "linspace", [3, 0]),       # round(linspace(0, 3, 2))
    (10, 3, "leading", [6, 3, 0]),    # stride 3
    (10, 3, "trailing", [9, 6, 2]),   # round(10, 6.67, 3.33) − 1
    (10, 3, "linspace", [9, 4, 0]),   # round(0, 4.5, 9): 4.5 rounds half to even
    (1000, 10, "leading", list(range(900, -1, -100))),
    (1000, 10, "trailing", list(range(999, 0, -100))),
    (6, 4, "trailing", [5, 3, 2, 1]),  # round(6, 4.5, 3, 1.5) − 1: ties go to even
    (1000, 10, "linspace", list(range(999, -1, -111))),
])
def test_inference_timesteps_values(T, n, spacing, expected):
    t = rd.inference_timesteps(T, n, spacing)
    assert t.tolist() == expected and t.dtype == np.int64


def test_trailing_exact_tie():
    """T = 1000, n = 240, i = 195: T·(n − i)/n = 187.5 exactly, which rounds to 188, so t = 187.
    The float form T − i·(T/n) gives 187.4999… and t = 186 (11 such n at T = 1000)."""
    assert rd.inference_timesteps(1000, 240, "trailing")[195] == 187
    assert round(1000 - 195 * (1000 / 240)) - 1 == 186


def test_leading_offset():
    assert rd.inference_timesteps(1000, 10, "leading", offset=1).tolist() == \
        list(range(901, 0, -100))
