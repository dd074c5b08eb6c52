"""refdiff.testing itself: assert_close, the strategies, the engine's reports, and refdiff's
own functions passing every check on every backend row the kit supports."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd
from refdiff.testing import (ConformanceError, Target, assert_close, check_cfg,
                             check_classifier_guidance, check_ddim_step, check_ddpm_step,
                             check_posterior, check_q_sample, check_sampling_loop,
                             check_schedule, check_timesteps, strategies as S)
from refdiff.testing import references as R


SCHED = rd.linear_schedule(1000)


def test_assert_close_checks_values_dtype_shape_device():
    a = np.array([1.0, 2.0])
    stats = assert_close(a + 1e-13, a)
    assert stats["max_abs"] == pytest.approx(1e-13, rel=0.1) and stats["tolerance"] == 2e-12
    for bad, what in [(a + 1e-9, "values"), (a.astype(np.float32), "dtype"),
                      (a[:1], "shape")]:
        with pytest.raises(ConformanceError, match=what):
            assert_close(bad, a)
    assert_close(a.astype(np.float32) * (1 + 1e-7), a, dtype="float32")
    with pytest.raises(ConformanceError, match="values"):
        assert_close(np.array([np.nan, 2.0]), a)


def test_assert_close_on_torch_and_strict_devices():
    torch = pytest.importorskip("torch")
    xs = pytest.importorskip("array_api_strict")
    a = np.array([0.5, -1.5])
    assert_close(torch.asarray(a, dtype=torch.float16), a, dtype="float16")
    with pytest.raises(ConformanceError, match="dtype"):
        assert_close(torch.asarray(a, dtype=torch.bfloat16), a, dtype="float16")
    on1 = xs.asarray(xs.asarray(a), device=xs.Device("device1"))
    assert_close(on1, a, device="device1")
    with pytest.raises(ConformanceError, match="device"):
        assert_close(on1, a)


@given(st.data())
def test_array_strategy_has_no_subnormals_nan_or_inf(data):
    shape = data.draw(S.shapes())
    a = data.draw(S.arrays(shape, bound=1e-3))
    assert a.shape == shape and np.all(np.isfinite(a))
    assert np.all((a == 0) | (np.abs(a) >= 2.0**-14))
    t = data.draw(S.arrays(shape, "float16", "torch")) if _has("torch") else None
    assert t is None or str(t.dtype) == "torch.float16"


@given(S.schedules(), st.data())
def test_schedule_and_timestep_strategies_are_valid(spec, data):
    sched = spec.build()
    assert sched.num_train_timesteps == spec.T and repr(spec).startswith("rd.")
    n, spacing, t, t_prev = data.draw(S.timestep_pairs(spec.T))
    ts = R.timesteps(spec.T, n, spacing)
    assert t in ts and (t_prev == -1) == (t == ts[-1]) and (t_prev < t)


def _has(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def own(check_name, sched=SCHED):
    """refdiff's own functions, written against each adapter signature."""
    ab = sched.alpha_bar
    return {
        "schedule": lambda kind, T, **p: R.schedule_table(S.ScheduleSpec(kind, T, p)),
        "timesteps": lambda T, n, spacing: rd.inference_timesteps(T, n, spacing).tolist(),
        "q_sample": lambda x0, z, t: rd.q_sample(x0, ab(t), z),
        "posterior": lambda x0, x_t, t, tp: R.posterior(x0, x_t, t, tp, schedule=sched),
        "cfg": rd.cfg,
        "cg": lambda e, g, t, s: rd.classifier_guided_eps(e, g, ab(t), s),
        "ddim": lambda x, e, t, tp, *, eta, noise, num_inference_steps: R.ddim_step(
            x, e, t, tp, schedule=sched, eta=eta, noise=noise),
        "ddpm": lambda x, e, t, tp, *, noise, num_inference_steps: R.ddpm_step(
            x, e, t, tp, noise, schedule=sched),
        "loop": lambda m, x, ts, zs: R.sample(m, x, ts, zs, schedule=sched, eta=0.3),
    }[check_name]


ROWS = [Target()] + [pytest.param(Target(*row), marks=pytest.mark.skipif(
    not _has(row[0]), reason=f"{row[0]} missing"), id="-".join(row))
    for row in [("torch", "float32"), ("torch", "float16"), ("array_api_strict", "float32")]]
ROWS.append(pytest.param(Target("torch", "float32", "cuda"), id="torch-float32-cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not (_has("torch") and __import__("torch").cuda.is_available()),
                                         reason="no CUDA device")]))


@pytest.mark.parametrize("target", ROWS)
def test_refdiff_passes_its_own_checks(target):
    kw = {"target": target, "max_examples": 25}
    results = [check_q_sample(own("q_sample"), **kw), check_cfg(own("cfg"), **kw),
               check_classifier_guidance(own("cg"), **kw), check_posterior(own("posterior"), **kw),
               check_ddim_step(own("ddim"), **kw), check_ddpm_step(own("ddpm"), **kw),
               check_sampling_loop(own("loop"), eta=0.3, **kw)]
    if target == Target():
        results += [check_schedule(own("schedule")), check_timesteps(own("timesteps"))]
    for result in results:
        assert result.passed, result.report()


def test_a_wrong_dtype_or_backend_output_fails():
    wrong = lambda eu, ec, s: (eu + s * (ec - eu)).astype(np.float32)  # noqa: E731
    result = check_cfg(wrong)
    assert not result.passed and "dtype" in result.message


def test_failure_report_is_shrunk_complete_and_reproducible():
    bad = lambda x0, z, t: rd.q_sample(x0, SCHED.alpha_bar(max(t - 1, 0)), z)  # noqa: E731
    result = check_q_sample(bad)
    assert not result.passed and not result
    ce = result.counterexample
    assert set(ce) == {"x0", "eps", "t"} and ce["t"] >= 1 and ce["x0"].size == 1
    assert result.max_abs > 1e-6 and result.examples_to_fail >= 1 and result.time_to_fail >= 0
    text = result.report()
    for part in ("FAIL  q_sample", "counterexample", "actual:", "expected:", "reproduce:"):
        assert part in text
    namespace = {"candidate": bad}
    with pytest.raises(ConformanceError):  # the snippet reproduces the disagreement
        exec(result.reproduction, namespace)
    with pytest.raises(ConformanceError, match="q_sample"):
        result.raise_for_failure()
    again = check_q_sample(bad)  # deterministic search: the same shrunk example
    assert again.counterexample["t"] == ce["t"] and again.examples_to_fail == result.examples_to_fail


def test_candidate_exceptions_are_findings():
    def raises(x_t, eps, t, t_prev, *, eta, noise, num_inference_steps):
        return math.sqrt(-1.0) if t_prev < 0 else R.ddim_step(x_t, eps, t, t_prev,
                                                                schedule=SCHED, eta=eta,
                                                                noise=noise)
    result = check_ddim_step(raises)
    assert not result.passed and result.message.startswith("ValueError")
    assert result.counterexample["t_prev"] == -1
