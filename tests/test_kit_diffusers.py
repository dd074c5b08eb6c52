"""The kit on diffusers' DDPMScheduler and DDIMScheduler: what it finds, with configurations.

Each finding is asserted as a failure of a public check on a stated configuration (and,
where the claim is a specific number, checked directly). The default configurations pass the
step and loop checks: the adapters are not what fails."""

import re

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

import refdiff as rd  # noqa: E402
from refdiff.testing import check_schedule, mutants as M, references as R  # noqa: E402
from refdiff.testing.diffusers_adapters import (MATH, DiffusersScheduler,  # noqa: E402
                                                check_configured_timesteps, run_checks)
from refdiff.testing.tolerance import to_numpy  # noqa: E402


def results(name, checks, **config):
    return {r.name: r for r in run_checks(DiffusersScheduler(name, **config), checks)}


@pytest.mark.parametrize("table", ["float64", "native"])
@pytest.mark.parametrize("name", ["DDIMScheduler", "DDPMScheduler"])
def test_default_configurations_pass_step_and_loop(name, table):
    """On refdiff's float64 table at 1e-12, and on diffusers' own float32 table at 2e-6."""
    check = "ddim" if name == "DDIMScheduler" else "ddpm"
    adapter = DiffusersScheduler(name, table=table)
    for result in run_checks(adapter, [check, "loop"], max_examples=60 if table == "native" else None):
        assert result.passed, result.report()


def test_tables_are_float32():
    result = check_schedule(DiffusersScheduler().schedule_table, kinds=("linear", "cosine"))
    assert not result.passed and "got float32, expected float64" in result.message
    assert 1e-9 < result.max_abs < 1e-6  # float32 rounding, not a formula difference
    ok = check_schedule(DiffusersScheduler().schedule_table, kinds=("linear", "scaled_linear", "cosine"),
                        dtype="float32", max_examples=20)
    assert ok.passed, ok.report()  # the values agree at the float32 tolerance


def test_trailing_timesteps_differ():
    result = results("DDIMScheduler", ["timesteps"], timestep_spacing="trailing")["inference timesteps"]
    assert not result.passed and result.counterexample == {"T": 1000, "n": 48, "spacing": "trailing",
                                                           "offset": 0}
    assert "111 of 1000 values of n differ; first n = 48" in result.message
    assert result.classification.startswith("finding: diffusers builds trailing timesteps as "
                                            "round(arange(T, 0, -T/n)) - 1")
    longer, ties = [], []
    for n in range(1, 1001):
        ts = DiffusersScheduler().timesteps(1000, n, "trailing")
        (longer if len(ts) != n else ties if ts != R.timesteps(1000, n, "trailing") else []).append(n)
    assert len(longer) == 62 and longer[0] == 61 and len(ties) == 49
    assert DiffusersScheduler().timesteps(1000, 61, "trailing")[-1] == -1


@pytest.mark.parametrize("config", [{"timestep_spacing": "trailing"},
                                    {"timestep_spacing": "linspace"}, {"steps_offset": 1}])
def test_ddim_previous_timestep_by_stride(config):
    result = results("DDIMScheduler", ["ddim"], **config)["DDIM step"]
    assert not result.passed, config
    ce = result.counterexample  # shrunk to a step where t - T//n misses the listed level
    stride = max(ce["t"] - 1000 // ce["n"], -1)
    assert stride != ce["t_prev"]
    assert result.classification == (
        f"finding: diffusers' DDIM step goes to t - T//n = {stride}, not to the next listed "
        f"timestep {ce['t_prev']} (a convention, not a math error)")


def _prev_level(T, n, t, **config):
    """The ᾱ_prev diffusers' DDIM step uses at t: found from x_prev with x̂_0 = 0, ε = 1."""
    a = DiffusersScheduler("DDIMScheduler", num_train_timesteps=T, clip_sample=False, **config)
    one = torch.ones(1, dtype=torch.float64)
    ab_t = a.schedule_spec().build().alpha_bar(t)
    x_prev = a.ddim_step(np.sqrt(1 - ab_t) * one, one, t, -1, eta=0.0, noise=0 * one,
                         num_inference_steps=n)
    return 1 - float(x_prev[0]) ** 2  # x_prev = √(1 − ᾱ_prev)·ε


@pytest.mark.parametrize("T,n,t,diffusers_prev", [(5, 2, 4, 2), (1000, 3, 666, 333),
                                                  (1000, 7, 142, 0)])
def test_ddim_trailing_examples(T, n, t, diffusers_prev):
    """refdiff goes to the next listed timestep (1, 332, and alpha_bar = 1 after the last);
    diffusers' DDIM goes to t - T//n."""
    ts = R.timesteps(T, n, "trailing")
    i = ts.index(t)
    refdiff_prev = ts[i + 1] if i + 1 < n else -1
    assert refdiff_prev != diffusers_prev and refdiff_prev in (1, 332, -1)
    got = _prev_level(T, n, t, timestep_spacing="trailing")
    assert got == pytest.approx(rd.linear_schedule(T).alpha_bar(diffusers_prev), abs=1e-12)


def test_ddpm_adds_noise_on_a_last_step_with_t_above_zero():
    for result in results("DDPMScheduler", ["ddpm", "loop"], timestep_spacing="trailing",
                          variance_type="fixed_large").values():
        assert not result.passed
        ce = result.counterexample
        assert ce.get("t_prev", -1) == -1
        assert "diffusers' DDPM step adds noise whenever t > 0" in result.classification


def test_ddpm_fixed_large_log_gives_nan():
    result = results("DDPMScheduler", ["ddpm"], variance_type="fixed_large_log")["DDPM step"]
    assert not result.passed and np.isnan(to_numpy(result.actual)).any()
    assert result.classification == MATH  # a NaN is no convention


def test_ddpm_fixed_small_adds_the_clamped_noise_on_a_last_step_above_zero():
    """variance β̃ to ᾱ = 1 is 0, clamped to 1e-20 by diffusers: it adds 1e-10·z at t = 999."""
    a = DiffusersScheduler("DDPMScheduler", timestep_spacing="trailing", clip_sample=False)
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    with_noise = a.ddpm_step(zero, one, 999, -1, noise=one, num_inference_steps=1)
    without = a.ddpm_step(zero, one, 999, -1, noise=zero, num_inference_steps=1)
    assert float(with_noise - without) == pytest.approx(1e-10, rel=1e-9)


class _SlippedDDIM(DiffusersScheduler):
    """diffusers' DDIM step, 1 % too large: a math slip, not a convention."""

    def ddim_step(self, *args, **kwargs):
        return 1.01 * super().ddim_step(*args, **kwargs)


@pytest.mark.parametrize("config", [{}, {"timestep_spacing": "trailing"}])
def test_a_math_slip_is_not_called_a_finding(config):
    """Also where a convention differs too (trailing): the replay must meet diffusers' output."""
    for result in run_checks(_SlippedDDIM("DDIMScheduler", **config), ["ddim", "loop"],
                             max_examples=30):
        assert not result.passed and result.classification == MATH, result.report()


def test_configured_timesteps_use_the_offset():
    """Leading with steps_offset=1: every n whose list stays in [0, T-1] matches refdiff's."""
    result = check_configured_timesteps(DiffusersScheduler(steps_offset=1))
    assert result.passed and result.examples == 999  # n = 1000 would reach t = 1000


@pytest.mark.parametrize("config,message", [
    ({"timestep_spacing": "bogus"}, "timestep_spacing='bogus': not mapped"),
    ({"num_train_timesteps": -5}, "num_train_timesteps=-5: must be >= 2"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule='sigmoid': not mapped"),
    ({"clip_sample": "yes"}, "clip_sample='yes': expected True or False"),
    ({"thresholding": True, "sample_max_value": 0.5},
     "sample_max_value=0.5: not mapped onto refdiff with thresholding=True"),
    ({"thresholding": True, "dynamic_thresholding_ratio": 0.0},
     "dynamic_thresholding_ratio=0.0: not mapped onto refdiff with thresholding=True"),
])
def test_unmappable_configurations_are_refused(config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DiffusersScheduler("DDIMScheduler", **config)


# -- learned variances and dynamic thresholding ------------------------------------------------

@pytest.mark.parametrize("variance_type", ["learned_range", "learned"])
def test_learned_variances_map_onto_the_learned_check(variance_type):
    """learned_range is IDDPM Eq. 15 as refdiff computes it; diffusers' "learned" reads its
    channel as σ², so the adapter passes exp(v) for refdiff's log σ² (and both pass)."""
    adapter = DiffusersScheduler("DDPMScheduler", variance_type=variance_type)
    assert adapter.checks() == ("schedule", "timesteps", "ddpm_learned")  # no loop: ε only
    assert adapter.conventions("ddpm_learned")["variance_type"] == variance_type
    (result,) = run_checks(adapter, ["ddpm_learned"], max_examples=60)
    assert result.passed and result.name == "DDPM step, learned variance", result.report()


@pytest.mark.parametrize("name,check", [("DDIMScheduler", "ddim"), ("DDPMScheduler", "ddpm")])
def test_thresholding_maps_onto_a_dynamic_threshold(name, check):
    """thresholding=True with DeepFloyd IF's ratio 0.95 and sample_max_value 1.5: diffusers'
    _threshold_sample (torch.quantile) passes refdiff's step check at the float64 bound."""
    adapter = DiffusersScheduler(name, thresholding=True, dynamic_thresholding_ratio=0.95,
                                 sample_max_value=1.5)
    assert adapter.conventions(check)["clip_x0"] == M.DynamicThreshold(0.95, 1.5)
    (result,) = run_checks(adapter, [check], max_examples=60)
    assert result.passed, result.report()


class _ChannelFirst(DiffusersScheduler):
    """A learned-variance adapter that stacks the variance channel before ε: a layout slip."""

    def ddpm_learned_step(self, x_t, eps, t, t_prev, *, var_values, noise, num_inference_steps):
        return super().ddpm_learned_step(x_t, var_values, t, t_prev, var_values=eps,
                                         noise=noise, num_inference_steps=num_inference_steps)


class _Unthresholded(DiffusersScheduler):
    """Claims thresholding=True but runs diffusers without it (static clip to [-1, 1])."""

    def _scheduler(self, **overrides):
        return super()._scheduler(**{"thresholding": False, **overrides})


@pytest.mark.parametrize("adapter", [
    _ChannelFirst("DDPMScheduler", variance_type="learned_range"),
    _Unthresholded("DDIMScheduler", thresholding=True, sample_max_value=1.5)],
    ids=["learned channel first", "threshold claimed, not applied"])
def test_a_wrong_candidate_is_caught_as_math(adapter):
    (result,) = run_checks(adapter, [adapter._step_check()], max_examples=60)
    assert not result.passed and result.classification == MATH, result.report()
    assert "DiffusersScheduler(" in result.reproduction


def test_learned_range_adds_noise_on_a_last_step_above_zero():
    """Trailing spacing: the last step from t = 999 to alpha_bar = 1 gets noise with
    σ² = exp(frac·log β' + (1 − frac)·log 1e-20), replayed and named."""
    result = results("DDPMScheduler", ["ddpm_learned"], variance_type="learned_range",
                     timestep_spacing="trailing")["DDPM step, learned variance"]
    assert not result.passed and result.counterexample["t_prev"] == -1
    assert "diffusers' DDPM step adds noise whenever t > 0" in result.classification


def test_thresholding_needs_three_axes_in_diffusers():
    """diffusers' _threshold_sample reshapes to channels * np.prod(remaining_dims), a NumPy
    float when there is no remaining axis: torch refuses it for (B, C) samples. The adapter
    passes (B, C, 1) (the same per-sample threshold)."""
    sched = diffusers.DDIMScheduler(thresholding=True, sample_max_value=1.5)
    with pytest.raises(TypeError, match="tuple of ints"):
        sched._threshold_sample(torch.ones(2, 3, dtype=torch.float64))
    three = sched._threshold_sample(3 * torch.ones(2, 3, 1, dtype=torch.float64))
    assert torch.equal(three, torch.ones(2, 3, 1, dtype=torch.float64))  # 3 → s = 1.5 → 1
