"""The presets: plain data, valid options, printed by ``refdiff conventions``, and each one
reproducing its original's default loop (diffusers run in float64 on refdiff's table; CompVis
derived in the test).

Tolerance: float64 loops of ≤ 20 steps over O(1) values; each step is a few roundings with
coefficients ≤ 1/√ᾱ ≈ 160 (linear schedule, t = 999), and the two sides form the same terms
in a different order, so the difference is ≲ 20·160·few·u ≈ 1e-12 relative; 1e-11 leaves
headroom for the 1/√ᾱ amplification carried over the steps.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import refdiff as rd
from refdiff import cli
from refdiff.presets import INVERSION_PRESETS, PRESETS

RTOL = 1e-11
T = 1000


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= RTOL * max(1.0, np.max(np.abs(b))), np.max(np.abs(a - b))


def test_every_preset_key_is_an_option_of_its_function():
    for table, fn in ((PRESETS, rd.sample), (INVERSION_PRESETS, rd.ddim_invert)):
        params = inspect.signature(fn).parameters
        for name, preset in table.items():
            assert set(preset) <= set(params), (name, set(preset) - set(params))


def test_presets_are_read_only():
    with pytest.raises(TypeError):
        PRESETS["diffusers_ddim"]["clip_x0"] = 2.0  # type: ignore[index]
    with pytest.raises(TypeError):
        PRESETS["mine"] = {}  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_runs(name):
    x = np.random.default_rng(0).standard_normal((2, 3))
    n = 50 if name != "guided_diffusion" else 50  # ddim50 exists at T = 1000
    out = rd.sample(lambda z, t, c: 0.2 * z, x, rd.linear_schedule(T), num_inference_steps=n,
                    generator=0, **PRESETS[name])
    assert out.shape == x.shape and np.isfinite(out).all()


def test_conventions_command_prints_every_preset_and_option(capsys):
    assert cli.main(["conventions"]) == 0
    out = capsys.readouterr().out
    header = next(ln for ln in out.splitlines() if ln.startswith("| option"))
    for name in PRESETS:
        assert f" {name} |" in header
    for key in {k for p in PRESETS.values() for k in p}:
        assert f"| `{key}` |" in out
    assert "diffusers_ddim" in out.split("ddim_invert")[1]


def test_conventions_command_refuses_arguments(capsys):
    assert cli.main(["conventions", "--bogus"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


# ----- reproduction of the originals ------------------------------------------------------

def _toy_eps(xp_scale=0.3):
    """A deterministic ε-model: a fixed linear map of x plus a timestep-dependent shift."""
    return lambda x, t: xp_scale * x + 0.001 * (t % 7)


def test_compvis_ddim_preset_is_compvis_ddim_sampler():
    """CompVis DDIMSampler, η = 0: timesteps range(0, T, T//n) + 1, ᾱ_prev of the next one and
    ᾱ of the table's first entry after the last; ε̂ used as predicted, no clipping."""
    sch = rd.linear_schedule(T)
    ab = np.array([sch.alpha_bar(t) for t in range(T)])
    n, x_T = 20, np.random.default_rng(1).standard_normal((2, 4))
    eps_model = _toy_eps()
    steps = np.arange(0, T, T // n) + 1                             # make_ddim_timesteps
    x = x_T.copy()
    for i in range(len(steps) - 1, -1, -1):
        a_t = ab[steps[i]]
        a_prev = ab[steps[i - 1]] if i > 0 else ab[0]               # ddim_alphas_prev
        e = eps_model(x, int(steps[i]))
        pred_x0 = (x - np.sqrt(1 - a_t) * e) / np.sqrt(a_t)
        x = np.sqrt(a_prev) * pred_x0 + np.sqrt(1 - a_prev) * e
    got = rd.sample(lambda z, t, c: eps_model(z, t), x_T, sch, num_inference_steps=n,
                    **PRESETS["compvis_ddim"])
    _close(got, x)


torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


def _float64_table(sched, schedule):
    """Give a diffusers scheduler refdiff's float64 ᾱ table (diffusers builds float32)."""
    ab = torch.tensor([schedule.alpha_bar(t) for t in range(T)], dtype=torch.float64)
    sched.alphas_cumprod = ab
    sched.betas = 1 - ab / torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    sched.alphas = 1 - sched.betas
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return sched


def _diffusers_loop(sched, model, x_T, n, generator=None):
    sched.set_timesteps(n)
    x = x_T.clone()
    for t in sched.timesteps:
        out = model(x, int(t))
        kw = {"generator": generator} if generator is not None else {}
        x = sched.step(out, t, x, **kw).prev_sample
    return x


@pytest.mark.parametrize("n", [10, 50])
def test_diffusers_ddim_preset_is_the_default_ddim_scheduler(n):
    sch = rd.linear_schedule(T)
    x_T = 2.5 * torch.randn((2, 3, 4), generator=torch.Generator().manual_seed(2),
                            dtype=torch.float64)
    eps_model = _toy_eps(1.2)                                       # large ε̂: clipping acts
    want = _diffusers_loop(_float64_table(diffusers.DDIMScheduler(), sch), eps_model, x_T, n)
    got = rd.sample(lambda z, t, c: eps_model(z, t), x_T, sch, num_inference_steps=n,
                    **PRESETS["diffusers_ddim"])
    _close(got, want)


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_diffusers_ddpm_preset_is_the_default_ddpm_scheduler(variance_type):
    """Same generator, same draws: refdiff's torch backend and diffusers both draw
    torch.randn of x's shape once per step but the last (t = 0 under leading spacing)."""
    sch, n = rd.linear_schedule(T), 20
    x_T = torch.randn((2, 3, 4), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps_model = _toy_eps(1.2)
    learned = variance_type == "learned_range"

    def model(x, t):
        e = eps_model(x, t)
        return torch.cat([e, torch.tanh(x)], dim=1) if learned else e

    sched = _float64_table(diffusers.DDPMScheduler(variance_type=variance_type), sch)
    want = _diffusers_loop(sched, model, x_T, n, torch.Generator().manual_seed(4))
    got = rd.sample(lambda z, t, c: model(z, t), x_T, sch, num_inference_steps=n,
                    generator=torch.Generator().manual_seed(4),
                    **{**PRESETS["diffusers_ddpm"], "variance_type": variance_type})
    _close(got, want)


@pytest.mark.parametrize("n", [10, 25])
def test_diffusers_inversion_preset_is_the_ddim_inverse_scheduler(n):
    sch = rd.linear_schedule(T)
    x0 = 1.5 * torch.randn((2, 3, 4), generator=torch.Generator().manual_seed(5),
                           dtype=torch.float64)
    eps_model = _toy_eps(1.2)
    sched = _float64_table(diffusers.DDIMInverseScheduler(), sch)
    sched.initial_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    want = _diffusers_loop(sched, eps_model, x0, n)
    got = rd.ddim_invert(lambda z, t, c: eps_model(z, t), x0, sch, num_inference_steps=n,
                         **INVERSION_PRESETS["diffusers_ddim"])
    _close(got, want)
