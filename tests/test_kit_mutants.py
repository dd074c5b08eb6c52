"""Mutation testing: every planted bug is caught by a PUBLIC check, every control passes.

The mutants (refdiff.testing.mutants.MUTANTS) are a hand-written tutorial sampler with one
bug each; the checks are the same ones a user runs. A test that cannot fail is a defect, so
the correct control of each check must pass and each mutant must fail, with a shrunk
counterexample and a bounded number of examples. The mutants are caught at the float64
bound (the default target) and at the float32 bound, and the first failing example lands
far above the bound (error/bound > 10 in float32). Later failing examples need not:
shrinking walks a slip towards where it vanishes (η → 0 for the DDIM direction without
−σ²), so the smallest ratio seen depends on the search's path, not on the bound."""

import pytest

from refdiff.testing import Target
from refdiff.testing import mutants as M

MUTANT_IDS = [c.name for c in M.MUTANTS]
CONTROL_IDS = [c.name for c in M.CONTROLS]


@pytest.mark.parametrize("case", M.CONTROLS, ids=CONTROL_IDS)
def test_correct_control_passes(case):
    result = M.run_case(case)
    assert result.passed, result.report()


@pytest.mark.parametrize("case", M.MUTANTS, ids=MUTANT_IDS)
def test_mutant_is_caught(case):
    result = M.run_case(case)
    assert not result.passed, f"{case.name} was not caught by {case.check.__name__}"
    assert result.examples_to_fail <= 100, result.examples_to_fail  # budget: 150 (50 for schedules)
    assert result.counterexample and result.reproduction and result.max_abs > 1e-9


ARRAY_MUTANTS = [c for c in M.MUTANTS if c.check not in (M.C.check_schedule, M.C.check_timesteps)]


@pytest.mark.parametrize("case", ARRAY_MUTANTS, ids=[c.name for c in ARRAY_MUTANTS])
def test_mutant_is_caught_in_float32(case):
    pytest.importorskip("torch")
    result, ratios = M.run_observed(case, target=Target("torch", "float32"))
    assert not result.passed, f"{case.name} was not caught in float32"
    assert result.examples_to_fail <= 100, result.examples_to_fail
    assert ratios["first"] > 10, ratios  # the first failing example far above the bound
    assert ratios["least"] > 1, ratios  # and every failing one above it


def test_at_least_twenty_five_mutants():
    assert len(M.MUTANTS) >= 25 and len({c.name for c in M.MUTANTS}) == len(M.MUTANTS)


def test_every_new_step_option_has_mutants_and_a_control():
    """Learned variances and dynamic thresholding each have planted bugs and controls."""
    for check, option in ((M.SC.check_ddpm_learned_variance, None),
                          (M.SC.check_ddim_step, "clip_x0"), (M.SC.check_ddpm_step, "clip_x0")):
        for cases in (M.MUTANTS, M.CONTROLS):
            assert any(c.check is check and (option is None or isinstance(
                c.options.get(option), M.DynamicThreshold)) for c in cases), (check, option)


def test_thresholding_mutants_need_a_threshold_above_one():
    """With diffusers' default sample_max_value = 1, s is always 1 (static clipping): a
    missing division by s is invisible there, and caught where s_max > 1 (THRESHOLD)."""
    assert M.THRESHOLD.max_value > 1
    bug = M.Case("no division, s_max = 1", M.SC.check_ddim_step,
                 lambda s: M.hand_ddim(s, threshold=M.DynamicThreshold(), threshold_bug="no_divide"),
                 {"clip_x0": M.DynamicThreshold()})
    assert M.run_case(bug, max_examples=60).passed


def test_noise_on_last_step_needs_a_nonzero_last_variance():
    """The 't > 0' bug is invisible where the last step's variance is 0 (fixed_small to
    alpha_bar = 1), and caught where it is not (fixed_large): the check is not vacuous."""
    bug = M.Case("noise on last step, fixed_small", M.SC.check_ddpm_step,
                 lambda s: M.hand_ddpm(s, noise_if="t>0"))
    assert M.run_case(bug).passed
