"""The kit on diffusers' σ-space and flow schedulers: what passes, what it finds, with configurations.

Each finding is asserted as a failure of a check on a stated configuration, with its
classification and its shrunk counterexample; the step checks pass on the default
configurations (the adapters are not what fails), and a 1 % slip is called a math error."""

import math
import subprocess
import sys

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

import refdiff as rd  # noqa: E402
from refdiff.testing import check_flow_times, solver_checks as SC  # noqa: E402
from refdiff.testing.checks import compare  # noqa: E402
from refdiff.testing.diffusers_adapters import MATH  # noqa: E402
from refdiff.testing.diffusers_sigma_lists import (check_configured_sigmas,  # noqa: E402
                                                   diffusers_lower_order_final)
from refdiff.testing.diffusers_solvers import NAMES, STEP_CHECK, DiffusersSolver, run_solver_checks  # noqa: E402

E, EA, H, D, F = NAMES
FAST = 12  # examples per step check: the defaults pass at 200 (docs/testing.md)


def one(name, check, max_examples=FAST, **config):
    mu = config.pop("mu", None)
    (result,) = run_solver_checks(DiffusersSolver(name, mu=mu, **config), [check],
                                  max_examples=max_examples)
    return result


def finding(result, *parts):
    assert not result.passed
    assert result.classification.startswith("finding: "), result.report()
    for part in parts:
        assert part in result.classification, result.classification


@pytest.mark.parametrize("name", NAMES)
def test_default_step_checks_pass(name):
    result = one(name, STEP_CHECK[name])
    assert result.passed, result.report()


@pytest.mark.parametrize("name,config", [(E, {"use_karras_sigmas": True}),
                                         (H, {"use_karras_sigmas": True}),
                                         (D, {"use_karras_sigmas": True}),
                                         (E, {"timestep_spacing": "trailing"}),
                                         (D, {"timestep_spacing": "trailing"}),
                                         (E, {"final_sigmas_type": "sigma_min"}),
                                         (D, {"final_sigmas_type": "sigma_min"}),
                                         (E, {"prediction_type": "v_prediction"}),
                                         (H, {"prediction_type": "sample"}),
                                         (F, {"shift": 3.0})])
def test_step_checks_pass_on_common_configurations(name, config):
    result = one(name, STEP_CHECK[name], **config)
    assert result.passed, result.report()


@pytest.mark.parametrize("name", [E, EA, H])
def test_linspace_timesteps_are_fractional(name):
    """n = 3: t = 499.5, σ interpolated linearly between σ(499) and σ(500); refdiff's
    linspace rounds to t = 500."""
    result = one(name, "timesteps")
    finding(result, "'linspace' timesteps are fractional")
    assert result.counterexample == {"n": 3} and "195 of 203 values of n differ" in result.message
    sig = DiffusersSolver(name).schedule()
    s499, s500 = (math.sqrt((1 - sig.alpha_bar(t)) / sig.alpha_bar(t)) for t in (499, 500))
    assert result.actual[1] == pytest.approx((s499 + s500) / 2, rel=2e-6)
    assert result.expected[1] == pytest.approx(s500, rel=1e-12)


def test_dpm_linspace_drops_the_last_of_n_plus_one_points():
    result = one(D, "timesteps")
    finding(result, "takes n + 1 points and drops the last")
    assert result.counterexample == {"n": 1} and "203 of 203" in result.message
    assert one(D, "timesteps", final_sigmas_type="sigma_min").classification == result.classification


def test_flow_match_default_list_passes():
    assert one(F, "timesteps").passed


@pytest.mark.parametrize("name", [E, H])
def test_karras_ends_from_the_inference_list(name):
    """One step: diffusers' linspace list is t = [0], so its Karras σ_max is σ(0)."""
    result = one(name, "timesteps", use_karras_sigmas=True)
    finding(result, "the Karras ends are σ of the first and last inference timestep")
    assert result.counterexample == {"n": 1} and "1 of 203" in result.message
    sched = DiffusersSolver(name).schedule()
    ab0 = sched.alpha_bar(0)
    assert result.actual[0] == pytest.approx(math.sqrt((1 - ab0) / ab0), rel=4e-4)


def test_dpm_karras_list_passes():
    assert one(D, "timesteps", use_karras_sigmas=True).passed


def test_euler_karras_check():
    assert one(E, "karras", use_karras_sigmas=True).passed
    result = one(E, "karras", use_karras_sigmas=True, final_sigmas_type="sigma_min")
    finding(result, "appends the table's σ(t = 0) = 0.0100005")
    assert result.actual[-1] == pytest.approx(0.010001329705119133)


@pytest.mark.parametrize("name", [E, D])
def test_trailing_float_step_arange(name):
    result = one(name, "timesteps", timestep_spacing="trailing")
    finding(result, "round(arange(T, 0, -T/n)) - 1")
    assert result.counterexample == {"n": 48} and "10 of 203" in result.message
    assert len(DiffusersSolver(name, timestep_spacing="trailing").sigma_list(61)) == 63


def test_final_sigma_min_appends_sigma_of_t0():
    sig = DiffusersSolver(E, final_sigmas_type="sigma_min").sigma_list(5)
    ab0 = DiffusersSolver(E).schedule().alpha_bar(0)
    assert sig[-1] == sig[-2] == pytest.approx(math.sqrt((1 - ab0) / ab0), rel=4e-4)


def test_flow_match_double_shift():
    adapter = DiffusersSolver(F, shift=3.0)
    listed = one(F, "timesteps", shift=3.0)
    finding(listed, "shifts twice")
    assert listed.counterexample == {"n": 2} and "202 of 203" in listed.message
    result = one(F, "flow_times", shift=3.0)
    finding(result, "shifts twice", "time_shift(1/T, 3.0) = 0.00299401")
    assert result.counterexample["shift"] == 3.0
    ok = check_flow_times(adapter.flow_times, shift=3.0, t_min=rd.time_shift(1e-3, 3.0),
                          dtype="float32", max_examples=FAST)
    assert ok.passed, ok.report()
    assert adapter.sigma_list(4)[-2] == pytest.approx(0.0089286, rel=1e-5)


@pytest.mark.parametrize("kind,mu", [("exponential", 0.8), ("linear", 1.15)])
def test_flow_match_dynamic_shifting_passes(kind, mu):
    result = one(F, "timesteps", use_dynamic_shifting=True, time_shift_type=kind, mu=mu)
    assert result.passed, result.report()
    assert "flow_times" not in DiffusersSolver(F, use_dynamic_shifting=True, mu=mu).checks()


def _dpm_run(adapter, steps, low):
    rng = np.random.default_rng(steps)
    x, mu, lam = rng.uniform(-3, 3, 6) * 81, rng.uniform(-3, 3, 6), rng.uniform(0.01, 4, 6)
    x, mu, lam = (np.float32(v).astype(np.float64) for v in (x, mu, lam))
    sig = [float(v) for v in rd.karras_sigmas(steps, 0.05, 80.0, final="sigma_min")[:-1]] + [0.04]
    put = adapter.target.put
    actual = adapter.dpmpp_2m(SC.GaussianDenoiser(put(mu), put(lam)), put(x), sig)
    compare(actual, SC.dpmpp_reference(mu, lam, x, sig, low), dtype="float32",
            bound=SC.dpmpp_bound(mu, lam, x, sig, "float32", low))


@pytest.mark.parametrize("steps", [14, 15])
def test_dpm_lower_order_final_below_15_steps_only(steps):
    """final_sigmas_type="sigma_min": the last step is first order for n < 15, second for n ≥ 15."""
    adapter = DiffusersSolver(D, final_sigmas_type="sigma_min")
    low = steps < 15
    assert diffusers_lower_order_final(adapter, steps) is low
    _dpm_run(adapter, steps, low)
    with pytest.raises(AssertionError):
        _dpm_run(adapter, steps, not low)
    assert diffusers_lower_order_final(DiffusersSolver(D), steps)  # "zero": always first order


@pytest.mark.parametrize("name,config,key", [
    (E, {"bogus": 1}, "bogus"), (E, {"use_karras_sigmas": "yes"}, "use_karras_sigmas"),
    (E, {"interpolation_type": "log_linear"}, "interpolation_type"),
    (E, {"sigma_min": -1.0}, "sigma_min"), (EA, {"prediction_type": "sample"}, "prediction_type"),
    (H, {"clip_sample": True}, "clip_sample"), (D, {"solver_order": 3}, "solver_order"),
    (D, {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    (F, {"stochastic_sampling": True}, "stochastic_sampling"), (F, {"shift": 0.0}, "shift"),
    (F, {"use_dynamic_shifting": True}, "mu"), (E, {"mu": 0.5}, "mu")])
def test_bad_configurations_name_the_key(name, config, key):
    with pytest.raises(ValueError, match=f"^{key}"):
        DiffusersSolver(name, **config)


class _Slipped(DiffusersSolver):
    def euler_step(self, *args):
        return 1.01 * super().euler_step(*args)


def test_a_math_slip_is_not_called_a_finding():
    (result,) = run_solver_checks(_Slipped(E), ["euler"], max_examples=FAST)
    assert not result.passed and result.classification == MATH


def test_configured_list_catches_a_slipped_list():
    class Shifted(DiffusersSolver):
        def sigma_list(self, n):
            return [v * (1 + 1e-3) for v in super().sigma_list(n)]
    result = check_configured_sigmas(Shifted(F), ns=range(1, 20))
    assert not result.passed and result.classification == MATH


@pytest.mark.parametrize("name", NAMES)
def test_cli_defaults(name, capsys):
    """`refdiff check diffusers:<name>` at the defaults (the command's own entry point, in this
    process; tests/test_kit_cli.py runs the command as a subprocess): exit 1 with findings
    only (the configured lists), FlowMatch exit 0."""
    from refdiff.testing.cli import main

    code = main([f"diffusers:{name}", "--max-examples", "3"])
    stdout = capsys.readouterr().out
    assert code == (0 if name == F else 1), stdout
    assert stdout.count("PASS  ") >= 1 and ("finding: " in stdout) is (name != F), stdout
    assert "disagreement in the math" not in stdout


def test_cli_command_runs_a_solver_target():
    """The installed command itself (a fresh process) on one σ-space target."""
    out = subprocess.run([sys.executable, "-m", "refdiff", "check",
                          "diffusers:FlowMatchEulerDiscreteScheduler", "--checks", "flow_euler",
                          "--max-examples", "3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 0 failed" in out.stdout
