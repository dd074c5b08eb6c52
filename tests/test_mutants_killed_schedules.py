"""Tests written to kill the survivors of the mutation run of refdiff/schedules.py
(docs/mutation.md; python -m benchmarks.mutation --modules schedules).

Each test names the mutants it kills; expectations are closed forms written here or the
documented defaults, never the function under test.
"""

from __future__ import annotations

import numpy as np
import pytest

import refdiff as rd


@pytest.mark.parametrize("build", [rd.linear_schedule, rd.scaled_linear_schedule,
                                   rd.cosine_schedule, rd.guided_diffusion_linear_schedule])
def test_default_length_is_1000(build):
    """Kills the `num_train_timesteps = 1001` default mutants of the four builders (DDPM's
    T = 1000, the default of every original)."""
    assert build().num_train_timesteps == 1000


def test_linspace_is_float64_in_any_host_namespace():
    """Kills _linspace__mutmut_4/8 (dtype dropped: torch's linspace is float32 by default).
    Closed form β_t = β_0 + (β_end − β_0)·t/(T − 1), in float64."""
    torch_xp = pytest.importorskip("array_api_compat.torch")
    sch = rd.linear_schedule(10, 1e-4, 0.02, xp=torch_xp)
    want = 1e-4 + (0.02 - 1e-4) * np.arange(10) / 9
    np.testing.assert_allclose(np.asarray(sch.betas), want, rtol=1e-15, atol=0)


def test_complex_betas_refused():
    """Kills _real_array__mutmut_3 (`or` -> `and`: complex let through to a lossy cast)."""
    with pytest.raises(TypeError, match="betas must be real numbers, got dtype complex"):
        rd.Schedule.from_betas(np.array([0.1 + 0j, 0.2]))


def test_integer_betas_accepted():
    """Kills _real_array__mutmut_12..17 (the integral test broken): an integer β (only 1 is
    in (0, 1]) is a real number; a one-step schedule β = [1] has ᾱ = [0]."""
    sch = rd.Schedule.from_betas(np.array([1]))
    assert sch.betas.dtype == np.float64
    np.testing.assert_array_equal(sch.alphas_cumprod, [0.0])


def test_rescale_keeps_the_schedules_namespace():
    """Kills rescale_zero_terminal_snr__mutmut_35/37 (xp dropped: the tables come back as
    NumPy arrays for a schedule built in array-api-strict)."""
    xs = pytest.importorskip("array_api_strict")
    sch = rd.rescale_zero_terminal_snr(rd.linear_schedule(10, xp=xs))
    assert type(sch.alphas_cumprod).__module__.split(".")[0] == "array_api_strict"
    assert float(sch.alphas_cumprod[-1]) == 0.0


def test_one_step_schedule_accepted():
    """Kills from_betas__mutmut_18/19 (T = 1 refused): β = [0.5] gives ᾱ = [0.5]."""
    np.testing.assert_array_equal(rd.Schedule.from_betas([0.5]).alphas_cumprod, [0.5])


@pytest.mark.parametrize("betas,match,mutant", [
    ([1.5], r"betas must lie in \(0, 1\]", "_31: upper bound 2"),
    ([0.5, 1.0, 0.5], "only at the last step", "_34: betas[:+1], the first only"),
    ([1e-17, 0.5], "so small that alphas_cumprod\\[0\\] rounds to 1", "_44: checks ᾱ_1"),
    ([0.5, 0.5, 1e-17], "strictly decreasing", "_51: compares with ᾱ_0 only"),
])
def test_invalid_betas_refused_for_their_own_reason(betas, match, mutant):
    """Kills from_betas__mutmut_31/34/44/51. Hand values: 1 − 10⁻¹⁷ rounds to 1 in float64,
    so [0.5, 0.5, 1e-17] gives ᾱ = [0.5, 0.25, 0.25] (a stall after the first step) and
    [1e-17, 0.5] gives ᾱ_0 = 1."""
    with pytest.raises(ValueError, match=match):
        rd.Schedule.from_betas(betas)


# ----- inference_timesteps, Schedule.alpha_bar ----------------------------------------------

def test_negative_offset_and_timestep_refused():
    """Kills inference_timesteps__mutmut_24/27 (offset's lower bound 0 dropped: −1 gives a
    timestep −1) and Schedule.alpha_bar__mutmut_4/8 (t = −1 read as the last entry)."""
    with pytest.raises(ValueError, match=r"offset must lie in \[0"):
        rd.inference_timesteps(10, 5, "leading", offset=-1)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 9\]"):
        rd.linear_schedule(10).alpha_bar(-1)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "guided_diffusion",
                                     "guided_diffusion_ddim", "compvis_uniform"])
def test_timesteps_in_the_namespace_asked_for(spacing):
    """Kills inference_timesteps__mutmut_39/42/48/51/55/59/62 (xp not passed on, or ignored):
    the list comes back in array-api-strict when xp= asks for it."""
    xs = pytest.importorskip("array_api_strict")
    t = rd.inference_timesteps(100, 10, spacing, xp=xs)
    assert type(t).__module__.split(".")[0] == "array_api_strict"


def test_compvis_uniform_list_by_hand():
    """Kills inference_timesteps__mutmut_52..58 (an argument of compvis_timesteps dropped or
    None): CompVis' uniform list for T = 1000, n = 50 is range(0, 1000, 20) + 1, descending."""
    want = np.arange(0, 1000, 20)[::-1] + 1
    np.testing.assert_array_equal(rd.inference_timesteps(1000, 50, "compvis_uniform"), want)


def test_linspace_spacing_rounds_float64_values():
    """Kills inference_timesteps__mutmut_93/97 (linspace's dtype dropped: float32 in torch).
    T = 1000, n = 43: the 22nd point is 999·21/42 = 499.5, a tie, which float64 rounds half
    to even (500, with torch's linspace landing on 499.5 or just above) and a float32
    linspace lands just below (499). Expectation: round(999·i/42) in float64 with ties to
    even, except where the point is the exact tie, which the test pins to 500."""
    torch_xp = pytest.importorskip("array_api_compat.torch")
    got = np.asarray(rd.inference_timesteps(1000, 43, "linspace", xp=torch_xp))[::-1]
    want = np.round(999.0 * np.arange(43) / 42)
    assert want[21] == 500.0  # numpy rounds the tie 499.5 half to even: 500
    np.testing.assert_array_equal(got, want)


def test_compvis_quad_list_by_hand():
    """Kills inference_timesteps__mutmut_58 (the spacing not passed on: "uniform" is
    compvis_timesteps' default). CompVis' quad list: ⌊linspace(0, √(0.8·T), n)²⌋ + 1."""
    want = (np.linspace(0, np.sqrt(0.8 * 1000), 10) ** 2).astype(int)[::-1] + 1
    np.testing.assert_array_equal(rd.inference_timesteps(1000, 10, "compvis_quad"), want)
