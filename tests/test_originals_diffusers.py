"""refdiff against diffusers' schedulers themselves, run in float64, on their default conventions.

diffusers builds its tables in float32; each scheduler here gets refdiff's float64 β and ᾱ
tables (and its float64 ᾱ = 1 constants: ``one``, ``final_alpha_cumprod``,
``initial_alpha_cumprod``), so that both sides step from the same ᾱ values and the comparison
isolates the step algebra. Conventions compared (diffusers 0.42.1):

- ``DDPMScheduler``: clip_sample=True (``clip_x0=1.0``), the last step to ᾱ = 1 with no
  noise; ``variance_type="learned_range"`` (IDDPM Eq. 15, β̃ floored at 1e-20 in the log:
  refdiff's default ``last_step_variance="floor"``), ``"learned"`` (diffusers reads the channel
  as σ²: refdiff's ``"learned"`` with ``log`` of it), ``"fixed_small"``, ``"fixed_large"``;
  ``thresholding=True``. Noise is injected by replacing the module's ``randn_tensor``.
- ``DDIMScheduler``: ``thresholding=True`` (it takes precedence over the default
  clip_sample=True), the model's ε kept (``rederive_eps=False``) or re-derived
  (``use_clipped_model_output=True``); the noise through ``variance_noise=``.
- ``DDIMInverseScheduler``: clip_sample=True, set_alpha_to_one=True, the model evaluated with
  the destination timestep: ``ddim_inversion_step(..., clip_x0=1.0, rederive_eps=False)`` and
  ``ddim_invert(..., model_timestep="destination")``.

Tolerance: |refdiff − diffusers| ≤ 1e-12·max(1, max|diffusers|). Both sides evaluate the same
formulas on the same float64 ᾱ, in a slightly different order: a step x_prev = A·x_t + B·ε̂
(+ σ·z) has |A|, |B| ≤ √(ᾱ_prev/ᾱ_t) ≤ 2.4 here (ᾱ_800/ᾱ_900), and goes through x̂_0 at a few
dozen roundings of terms ≤ ~10 scaled by them: ≲ 40·2.4·10·u ≈ 1e-13 a step. Every loop here
clips or thresholds x̂_0 (DDPM's and the inverse scheduler's clip_sample=True, DDIM's
thresholding), and such a loop carries a step's error forward with a gain ≲ 1 (clipped
elements of x̂_0 carry none; measured by finite differences in test_originals.py). So 10
steps stay ≲ 1e-12 with every rounding of one sign. Measured worst:
8e-16 (loops), 3e-16 (single steps).
"""

from __future__ import annotations

import numpy as np
import pytest

import refdiff as rd

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")
ddpm_module = pytest.importorskip("diffusers.schedulers.scheduling_ddpm")

RTOL = 1e-12
T, N = 1000, 10
SCHED = rd.linear_schedule(T)                   # diffusers' "linear": 1e-4 … 0.02, float64
SHAPE = (2, 3, 4, 4)                            # (B, C, H, W): diffusers' thresholding needs C
RATIO, MAX_VALUE = 0.8, 2.5
SEED = 2024


def f64(sched):
    """Put refdiff's float64 tables (and float64 ᾱ = 1 constants) into a diffusers scheduler."""
    sched.betas = torch.from_numpy(np.array(SCHED.betas, dtype=np.float64))
    sched.alphas = torch.from_numpy(np.array(SCHED.alphas, dtype=np.float64))
    sched.alphas_cumprod = torch.from_numpy(np.array(SCHED.alphas_cumprod, dtype=np.float64))
    for name in ("one", "final_alpha_cumprod", "initial_alpha_cumprod"):
        if hasattr(sched, name):
            setattr(sched, name, getattr(sched, name).double())
    sched.set_timesteps(N)
    return sched


def tt(a):
    return torch.from_numpy(np.array(a, dtype=np.float64))


def close(actual, expected, rtol=RTOL):
    """|actual − expected| ≤ rtol·max(1, max|expected|); returns the error / scale."""
    actual = np.asarray(actual)
    expected = expected.numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == np.float64
    scale = max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual - expected))) / scale
    assert err <= rtol, f"relative error {err:.3g} > {rtol:.1g}"
    return err


def levels(ts, i):
    """(t, ᾱ_t, ᾱ_prev) of step i of the descending list ts (ᾱ_prev = 1 after the last)."""
    t = int(ts[i])
    return t, SCHED.alpha_bar(t), SCHED.alpha_bar(int(ts[i + 1])) if i + 1 < len(ts) else 1.0


def eps_of(x, t):
    return 0.8 * np.tanh(0.9 * x + 1e-3 * t) + 0.1 * np.cos(2.0 * x)


def range_of(x, t):                             # learned_range's v in (−1, 1)
    return np.tanh(0.6 * x - 0.2 + 1e-3 * t)


def logvar_of(x, t):                            # log σ² of a learned-variance model
    return -7.0 + 5e-3 * t + 0.3 * np.tanh(x)


def model_pair(variance_type):
    """(refdiff's model, diffusers' model output as a function of (x, t)): the same network,
    whose variance channel diffusers' "learned" reads as σ² and refdiff's as log σ²."""
    if variance_type == "learned_range":
        out = lambda x, t: np.concatenate([eps_of(x, t), range_of(x, t)], axis=1)  # noqa: E731
        return (lambda x, t, c: out(x, t)), out
    if variance_type == "learned":
        return ((lambda x, t, c: np.concatenate([eps_of(x, t), logvar_of(x, t)], axis=1)),
                (lambda x, t: np.concatenate([eps_of(x, t), np.exp(logvar_of(x, t))], axis=1)))
    return (lambda x, t, c: eps_of(x, t)), eps_of


def x_T():
    return np.random.default_rng(0).standard_normal(SHAPE) * 1.3


@pytest.fixture
def ddpm_noise(monkeypatch):
    """Replace diffusers' DDPM draw: returns a setter for the noise its next draws give."""
    queue = []

    def fake_randn(shape, generator=None, device=None, dtype=None, **kw):
        z = queue.pop(0)
        assert tuple(shape) == z.shape and dtype == torch.float64
        return tt(z)

    monkeypatch.setattr(ddpm_module, "randn_tensor", fake_randn)
    return queue


# ----- DDPMScheduler ----------------------------------------------------------------------

DDPM_CONFIGS = {
    "learned_range": dict(variance_type="learned_range"),
    "learned": dict(variance_type="learned"),
    "fixed_small": dict(variance_type="fixed_small"),
    "fixed_large": dict(variance_type="fixed_large"),
    "learned_range-threshold": dict(variance_type="learned_range", thresholding=True,
                                    dynamic_thresholding_ratio=RATIO, sample_max_value=MAX_VALUE),
}


def _refdiff_clip(config):
    return rd.DynamicThreshold(RATIO, MAX_VALUE) if config.get("thresholding") else 1.0


@pytest.mark.parametrize("name", list(DDPM_CONFIGS))
def test_ddpm_scheduler_steps(name, ddpm_noise):
    """Every step of the list, the last (t = 0) included: the mean with zero noise, and the
    full step with a given noise."""
    config = DDPM_CONFIGS[name]
    vt = config["variance_type"]
    sched = f64(diffusers.DDPMScheduler(**config))
    ts = [int(t) for t in sched.timesteps]
    assert ts == list(range(900, -1, -100))
    _, out_of = model_pair(vt)
    rng = np.random.default_rng(1)
    C = SHAPE[1]
    for i in range(len(ts)):
        t, ab_t, ab_prev = levels(ts, i)
        x, z = rng.standard_normal(SHAPE) * 1.3, rng.standard_normal(SHAPE)
        out = out_of(x, t)
        eps = out[:, :C]
        var = None if vt not in ("learned", "learned_range") else out[:, C:]
        var = np.log(var) if vt == "learned" else var
        kw = dict(variance_type=vt, var_values=var, clip_x0=_refdiff_clip(config))
        last = t == 0
        if not last:
            ddpm_noise.append(np.zeros(SHAPE))
        mean = sched.step(tt(out), t, tt(x)).prev_sample
        close(rd.ddpm_mean_variance(x, eps, ab_t, ab_prev, **kw)[0], mean)
        if not last:
            ddpm_noise.append(z)
        full = sched.step(tt(out), t, tt(x)).prev_sample
        close(rd.ddpm_step(x, eps, ab_t, ab_prev, np.zeros(SHAPE) if last else z, **kw), full)
    assert not ddpm_noise


@pytest.mark.parametrize("name", list(DDPM_CONFIGS))
def test_ddpm_scheduler_loop(name, ddpm_noise):
    """The whole loop: refdiff's draws (default_rng(seed), one per non-last step) fed to
    diffusers' randn_tensor in the same order."""
    config = DDPM_CONFIGS[name]
    vt = config["variance_type"]
    sched = f64(diffusers.DDPMScheduler(**config))
    model, out_of = model_pair(vt)
    rng = np.random.default_rng(SEED)
    ddpm_noise.extend(rng.standard_normal(SHAPE) for _ in range(N - 1))
    x = tt(x_T())
    for t in sched.timesteps:
        x = sched.step(tt(out_of(x.numpy(), int(t))), int(t), x).prev_sample
    got = rd.sample(model, x_T(), SCHED, sampler="ddpm", num_inference_steps=N,
                    spacing="leading", variance_type=vt, clip_x0=_refdiff_clip(config),
                    generator=SEED)
    close(got, x)


def test_learned_variance_semantics(ddpm_noise):
    """diffusers' "learned" takes the channel as σ²; refdiff's "learned" takes log σ²."""
    sched = f64(diffusers.DDPMScheduler(variance_type="learned", clip_sample=False))
    rng = np.random.default_rng(3)
    x, z = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    t, ab_t, ab_prev = levels([int(t) for t in sched.timesteps], 4)
    eps, v = eps_of(x, t), np.exp(logvar_of(x, t))           # v = σ², positive
    ddpm_noise.append(z)
    ref = sched.step(tt(np.concatenate([eps, v], axis=1)), t, tt(x)).prev_sample
    close(rd.ddpm_step(x, eps, ab_t, ab_prev, z, variance_type="learned",
                       var_values=np.log(v)), ref)
    wrong = rd.ddpm_step(x, eps, ab_t, ab_prev, z, variance_type="learned", var_values=v)
    assert np.max(np.abs(wrong - ref.numpy())) > 1e-3      # v itself is not log σ²


# ----- DDIMScheduler with dynamic thresholding --------------------------------------------

@pytest.mark.parametrize("use_clipped", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("thresholding", [True, False])
def test_ddim_scheduler_steps(use_clipped, eta, thresholding):
    config = dict(thresholding=True, dynamic_thresholding_ratio=RATIO,
                  sample_max_value=MAX_VALUE) if thresholding else {}
    sched = f64(diffusers.DDIMScheduler(**config))
    ts = [int(t) for t in sched.timesteps]
    clip = rd.DynamicThreshold(RATIO, MAX_VALUE) if thresholding else 1.0
    rng = np.random.default_rng(4)
    for i in range(len(ts)):
        t, ab_t, ab_prev = levels(ts, i)
        x, z = rng.standard_normal(SHAPE) * 1.3, rng.standard_normal(SHAPE)
        eps = eps_of(x, t)
        ref = sched.step(tt(eps), t, tt(x), eta=eta, use_clipped_model_output=use_clipped,
                         variance_noise=tt(z)).prev_sample
        got = rd.ddim_step(x, eps, ab_t, ab_prev, eta=eta, noise=z if eta > 0 else None,
                           clip_x0=clip, rederive_eps=use_clipped)
        close(got, ref)


@pytest.mark.parametrize("use_clipped", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_scheduler_loop_thresholding(use_clipped, eta):
    sched = f64(diffusers.DDIMScheduler(thresholding=True, dynamic_thresholding_ratio=RATIO,
                                        sample_max_value=MAX_VALUE))
    rng = np.random.default_rng(SEED)
    x = tt(x_T())
    for k, t in enumerate(sched.timesteps):
        last = k == N - 1
        z = np.zeros(SHAPE) if (last or eta == 0) else rng.standard_normal(SHAPE)
        x = sched.step(tt(eps_of(x.numpy(), int(t))), int(t), x, eta=eta,
                       use_clipped_model_output=use_clipped, variance_noise=tt(z)).prev_sample
    got = rd.sample(lambda x, t, c: eps_of(x, t), x_T(), SCHED, sampler="ddim", eta=eta,
                    num_inference_steps=N, spacing="leading",
                    clip_x0=rd.DynamicThreshold(RATIO, MAX_VALUE), rederive_eps=use_clipped,
                    generator=SEED)
    close(got, x)


# ----- DDIMInverseScheduler ---------------------------------------------------------------

def x0_data():
    return np.clip(np.random.default_rng(5).standard_normal(SHAPE) * 0.9, -1.4, 1.4)


def test_ddim_inverse_scheduler_steps():
    sched = f64(diffusers.DDIMInverseScheduler())
    ts = [int(t) for t in sched.timesteps]
    assert ts == list(range(0, 1000, 100))
    rng = np.random.default_rng(6)
    for t in ts:
        x = rng.standard_normal(SHAPE) * (0.9 if t == 0 else 1.3)
        eps = eps_of(x, t)                                   # the destination timestep
        ab_src = 1.0 if t - T // N < 0 else SCHED.alpha_bar(t - T // N)
        ref = sched.step(tt(eps), t, tt(x)).prev_sample
        close(rd.ddim_inversion_step(x, eps, ab_src, SCHED.alpha_bar(t), clip_x0=1.0,
                                     rederive_eps=False), ref)


def test_ddim_inverse_scheduler_loop():
    sched = f64(diffusers.DDIMInverseScheduler())
    x = tt(x0_data())
    for t in sched.timesteps:                                # diffusers' inversion loop
        x = sched.step(tt(eps_of(x.numpy(), int(t))), int(t), x).prev_sample
    got = rd.ddim_invert(lambda x, t, c: eps_of(x, t), x0_data(), SCHED, num_inference_steps=N,
                         spacing="leading", clip_x0=1.0, rederive_eps=False,
                         model_timestep="destination")
    close(got, x)
    other = rd.ddim_invert(lambda x, t, c: eps_of(x, t), x0_data(), SCHED, num_inference_steps=N,
                           spacing="leading", clip_x0=1.0, rederive_eps=False,
                           model_timestep="source")
    assert np.max(np.abs(other - x.numpy())) > 1e-3         # the convention is visible
