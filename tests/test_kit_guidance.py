"""The kit's guidance checks: the guidance interval, APG and CFG++.

Each planted slip of refdiff.testing.guidance_mutants.GUIDANCE_MUTANTS is caught by its public
check (in the deterministic CI search and in seeded ones); each control, written differently
from refdiff, passes on NumPy float64, NumPy float32 and torch float32; refdiff passes its own
checks; the reproductions reproduce; diffusers' APG is judged under both of its formulations."""

import importlib.util
import math

import numpy as np
import pytest

import refdiff as rd
from refdiff.testing import (ConformanceError, Target, check_apg, check_cfgpp,
                             check_guidance_interval)
from refdiff.testing import apg_check as AC, guidance_checks as GC, guidance_mutants as GM

SCHED = rd.linear_schedule(1000)


def _has(name):
    return importlib.util.find_spec(name) is not None


TARGETS = [Target(), Target("numpy", "float32"), pytest.param(
    Target("torch", "float32"), id="torch-float32",
    marks=pytest.mark.skipif(not _has("torch"), reason="torch missing"))]
ARRAY_CONTROLS = [c for c in GM.GUIDANCE_CONTROLS if c.check is not check_guidance_interval]
INTERVAL_CONTROLS = [c for c in GM.GUIDANCE_CONTROLS if c.check is check_guidance_interval]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", ARRAY_CONTROLS, ids=[c.name for c in ARRAY_CONTROLS])
def test_control_passes(case, target):
    result = GM.run_guidance_case(case, target=target, max_examples=40)
    assert result.passed, result.report()


@pytest.mark.parametrize("case", INTERVAL_CONTROLS, ids=[c.name for c in INTERVAL_CONTROLS])
def test_interval_control_passes(case):
    """The interval check has no arrays (scales are Python floats): one row."""
    result = GM.run_guidance_case(case, max_examples=100)
    assert result.passed, result.report()


@pytest.mark.parametrize("case", GM.GUIDANCE_MUTANTS, ids=[c.name for c in GM.GUIDANCE_MUTANTS])
def test_slip_is_caught(case):
    """Caught by the CI search and by a seeded search, within 100 examples, with a
    shrunk counterexample and a reproduction."""
    for seed in (None, 0):
        result = GM.run_guidance_case(case, seed=seed)
        assert not result.passed, f"{case.name} not caught (seed {seed})"
        assert result.examples_to_fail <= 100, (seed, result.examples_to_fail)
        assert result.counterexample and result.reproduction and result.max_abs > 1e-9
        if seed is None:  # the reproduction, pasted, reproduces the disagreement
            with pytest.raises(AssertionError):
                exec(result.reproduction, {"candidate": case.make(SCHED)})
    print(f"{case.name}: caught after {result.examples_to_fail} examples (seed 0)")


ARRAY_MUTANTS = [c for c in GM.GUIDANCE_MUTANTS if c.check is not check_guidance_interval]


@pytest.mark.skipif(not _has("torch"), reason="torch missing")
@pytest.mark.parametrize("case", ARRAY_MUTANTS, ids=[c.name for c in ARRAY_MUTANTS])
def test_slip_is_caught_in_float32(case):
    from refdiff.testing.tolerance import observe

    ratios = []
    with observe(lambda rec: ratios.append(rec["ratio"]) if not rec["passed"] else None):
        result = GM.run_guidance_case(case, target=Target("torch", "float32"))
    assert not result.passed and result.examples_to_fail <= 100
    # the first failing example lands far above the float32 bound; an index shift by one
    # moves ᾱ by β_t (~1e-4 relative at small t), a few times the float32 bound there
    assert ratios[0] > (2 if "index" in case.name else 10), ratios[:3]


def test_refdiff_passes_its_own_guidance_checks():
    def scales(sigmas, scale, lo, hi):
        g = rd.ScaleSchedule("interval", scale, sigma_lo=lo, sigma_hi=hi)
        return [rd.scheduled_scale(g, i, len(sigmas), v) for i, v in enumerate(sigmas)]

    def apg(pred_uncond, pred_cond, scale, *, eta, norm_threshold, momentum, state):
        return rd.apg(pred_uncond, pred_cond, scale, eta=eta, norm_threshold=norm_threshold,
                      momentum=momentum, running=state)

    def cfgpp(x, eu, ec, lam, t, t_prev):
        return rd.cfgpp_ddim_step(x, eu, ec, lam, SCHED.alpha_bar(t),
                                  SCHED.alpha_bar(t_prev) if t_prev >= 0 else 1.0)

    results = [check_guidance_interval(scales, max_examples=60)]
    for target in [Target()] + ([Target("torch", "float32")] if _has("torch") else []):
        results += [check_apg(apg, momentum=-0.75, target=target, max_examples=40),
                    check_cfgpp(cfgpp, target=target, max_examples=40)]
    for result in results:
        assert result.passed, result.report()


def test_official_cfgpp_table_needs_its_convention():
    """The official CFG++ code's table (1.0 prepended: timestep t has the original ᾱ_{t−1})
    fails refdiff's convention and passes alpha_bar_index="t_minus_1"."""
    official = GM.hand_cfgpp(SCHED, table="official")
    shifted = check_cfgpp(official)
    assert not shifted.passed and shifted.counterexample["t"] >= 0
    assert check_cfgpp(official, alpha_bar_index="t_minus_1", max_examples=40).passed
    assert not check_cfgpp(GM.hand_cfgpp(SCHED), alpha_bar_index="t_minus_1").passed
    ab_t, ab_prev, *_ = GC.cfgpp_levels(SCHED, 10, 0, "t_minus_1")
    assert (ab_t, ab_prev) == (SCHED.alpha_bar(9), 1.0)


def test_cfgpp_equals_cfg_ddim_at_the_equivalent_scale():
    """The identity the CFG++ docstring states, which the renoise slip violates: CFG++ at λ
    is CFG-DDIM at s = λ·σ_t/(σ_t − σ_prev)."""
    rng = np.random.default_rng(0)
    x, eu, ec = rng.standard_normal((3, 2, 4))
    ab_t, ab_p, lam = SCHED.alpha_bar(500), SCHED.alpha_bar(480), 0.6
    s_t, s_p = rd.sigma_from_alpha_bar(ab_t), rd.sigma_from_alpha_bar(ab_p)
    cfg = rd.ddim_step(x, rd.cfg(eu, ec, lam * s_t / (s_t - s_p)), ab_t, ab_p)
    np.testing.assert_allclose(rd.cfgpp_ddim_step(x, eu, ec, lam, ab_t, ab_p), cfg, rtol=1e-10)
    slip = GM.hand_cfgpp(SCHED, "renoise_guided")(x, eu, ec, lam, 500, 480)
    np.testing.assert_allclose(slip, rd.ddim_step(x, rd.cfg(eu, ec, lam), ab_t, ab_p), rtol=1e-12)


def test_the_apg_bound_is_tight():
    """A relative error of 1e-4 in float32 (~1700 ulps) fails; the correct float32 control
    passes (test_control_passes): the bound sits between."""
    good = GM.hand_apg()

    def off(pred_uncond, pred_cond, scale, *, eta, norm_threshold):
        return good(pred_uncond, pred_cond, scale, eta=eta, norm_threshold=norm_threshold) * (1 + 1e-4)

    assert not check_apg(off, target=Target("numpy", "float32"), max_examples=60).passed


def test_interval_steps_convention_and_wrapping():
    """The official code's inclusive step indices pass convention="steps"; the same
    candidate wrapped for σ bounds as the docstring says passes convention="sigma"."""
    steps = GM.hand_interval_steps()

    def wrapped(sigmas, scale, lo, hi):
        first = sum(v > hi for v in sigmas)
        return steps(sigmas, scale, first, sum(v > lo for v in sigmas) - 1)

    assert check_guidance_interval(wrapped, max_examples=100).passed
    off_by_one = lambda sig, s, first, last: steps(sig, s, first, last + 1)  # noqa: E731
    result = check_guidance_interval(off_by_one, convention="steps")
    assert not result.passed and set(result.counterexample) == {"sigmas", "scale", "first", "last"}


def test_momentum_reproduction_runs():
    result = check_apg(GM.hand_apg("onto_delta"), momentum=0.5)
    assert not result.passed and len(result.counterexample["pred_cond"]) == AC.APG_STEPS
    exec(result.reproduction, {"candidate": GM.hand_apg("onto_delta")})


@pytest.mark.parametrize("call, match", [
    (lambda: check_guidance_interval(GM.hand_interval(), convention="index"), "convention"),
    (lambda: check_apg(GM.hand_apg(), formulation="cfg"), "formulation"),
    (lambda: check_apg(GM.hand_apg(), momentum=2.0), "momentum"),
    (lambda: check_cfgpp(GM.hand_cfgpp(SCHED), alpha_bar_index="t-1"), "alpha_bar_index"),
])
def test_bad_options_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----- diffusers' normalized_guidance -------------------------------------------------------

def test_diffusers_apg_default_is_not_the_paper_form():
    """Finding: diffusers' default (use_original_formulation=False) returns
    pred_uncond + guidance_scale·update: not APG's D_c + (s − 1)·update once update ≠ Δ."""
    pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    from refdiff.testing.diffusers_adapters import check_diffusers_apg, diffusers_apg

    result = check_diffusers_apg(eta=0.0)
    print(result.report())
    assert not result.passed and result.classification.startswith("finding: diffusers'")
    assert result.examples_to_fail == 1  # docs/testing.md and the README say "the first"
    ce = result.counterexample
    assert ce["pred_uncond"].shape == (1, 1) and ce["pred_cond"].tolist() == [[1.0]]
    assert ce["pred_uncond"].tolist() == [[0.0]] and ce["scale"] == 0.0
    assert result.actual.tolist() == [[0.0]] and result.expected.tolist() == [[1.0]]
    with pytest.raises(ConformanceError):
        exec(result.reproduction, {})
    threshold = check_diffusers_apg(eta=1.0, norm_threshold=0.5)
    assert not threshold.passed and threshold.classification.startswith("finding")
    assert threshold.actual.tolist() == [[0.0]] and threshold.expected.tolist() == [[0.5]]
    # it is what it says: D_u + s·update, and CFG where update = Δ
    assert check_diffusers_apg(formulation="diffusers", max_examples=40).passed
    assert check_diffusers_apg(eta=1.0, norm_threshold=0.0, max_examples=40).passed
    # exactly: default − paper = update − Δ = −(1 − η)·Δ∥, whatever s (r = 0, no momentum)
    rng = np.random.default_rng(1)
    du, dc = rng.standard_normal((2, 2, 3, 4))
    d = dc - du
    par = (d * dc).sum(axis=(1, 2), keepdims=True) / (dc * dc).sum(axis=(1, 2), keepdims=True) * dc
    for s, eta in ((7.5, 0.0), (3.0, 0.25)):
        got = diffusers_apg()(torch.asarray(du), torch.asarray(dc), s, eta=eta, norm_threshold=0.0)
        paper = rd.apg(du, dc, s, eta=eta)[0]
        np.testing.assert_allclose(got.numpy() - paper, -(1 - eta) * par, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, -0.5])
def test_diffusers_apg_original_formulation_is_the_paper_form(momentum):
    """use_original_formulation=True with guidance_scale = s − 1 passes, momentum included."""
    pytest.importorskip("diffusers")
    pytest.importorskip("torch")
    from refdiff.testing.diffusers_adapters import check_diffusers_apg

    result = check_diffusers_apg(True, momentum=momentum, max_examples=40)
    assert result.passed, result.report()
    wrong_scale = check_diffusers_apg(True, scale_shift=0.0, max_examples=40)
    assert not wrong_scale.passed and not math.isnan(wrong_scale.max_abs)


GUIDANCE_MODULE = '''
import importlib.util
import math


def official_cfgpp(schedule, x_t, eps_uncond, eps_cond, lam, t, t_prev):
    """CFG++ on the official code's table: 1.0 prepended, so timestep t has alpha_bar_{t-1}."""
    ab = [1.0] + [float(a) for a in schedule.alphas_cumprod]
    a_t, a_p = ab[t], (ab[t_prev] if t_prev >= 0 else 1.0)
    eps_l = eps_uncond + lam * (eps_cond - eps_uncond)
    x0 = (x_t - math.sqrt(1 - a_t) * eps_l) / math.sqrt(a_t)
    return math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * eps_uncond


def steps_interval(sigmas, scale, first, last):
    return [scale if first <= i <= last else 1.0 for i in range(len(sigmas))]
'''


def test_refdiff_check_runs_the_guidance_checks(tmp_path, monkeypatch, capsys):
    from refdiff.cli import main

    (tmp_path / "my_guidance.py").write_text(GUIDANCE_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "my_guidance", raising=False)
    cfgpp = ["check", "my_guidance:official_cfgpp", "--checks", "cfgpp", "--max-examples", "30"]
    assert main(cfgpp) == 1 and "FAIL  CFG++ DDIM step" in capsys.readouterr().out
    assert main(cfgpp + ["--option", "alpha_bar_index=t_minus_1", "--dtype", "float32"]) == 0
    assert main(["check", "my_guidance:steps_interval", "--checks", "guidance_interval",
                 "--option", "convention=steps", "--max-examples", "30"]) == 0
    assert main(["check", "my_guidance:steps_interval", "--checks", "apg", "--option",
                 "momentum=3"]) == 2
    assert "--option momentum=3: expected a number in [-1, 1]" in capsys.readouterr().err


def test_docstring_examples_run():
    import doctest

    for module in (GC, AC, GM):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
