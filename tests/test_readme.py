"""The README's Python examples run as written (the GPU one on the CPU when no GPU is here)."""

import pathlib
import re

import numpy as np
import pytest

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i):
    code = BLOCKS[i]
    if "cuda" in code:
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            code = code.replace('device="cuda"', 'device="cpu"')
    ns: dict = {}
    exec(compile(code, f"README block {i}", "exec"), ns)
    CHECKS[_key(code)](ns)


def _key(code):
    for key in CHECKS:
        if key in code:
            return key
    raise AssertionError(f"no check for README block:\n{code[:200]}")


def _quickstart(ns):
    """A zero model gives ε̂ = 0: each DDIM step multiplies x by √(ᾱ_prev/ᾱ_t) (DDIM Eq. 12),
    so the loop returns x_T/√ᾱ_{t_1} and the single step x_T·√(ᾱ_979/ᾱ_999)."""
    ab = ns["schedule"].alpha_bar
    np.testing.assert_allclose(ns["x_0"], ns["x_T"] / np.sqrt(ab(int(ns["timesteps"][0]))),
                               rtol=1e-12)
    np.testing.assert_allclose(ns["x_prev"], ns["x_T"] * np.sqrt(ab(979) / ab(999)), rtol=1e-12)


def _gpu(ns):
    """float16 results against float64 forms of the same inputs. CFG: three roundings of terms
    up to |ε_u| + 7.5·|ε_c − ε_u| ≤ 17·max|ε| (≈ 2·|result|), so ≤ 6u·|result|·2 ≈ 6e-3·max;
    q_sample: three roundings of terms ≤ max|x|, ≤ 2e-3·max. A sign or scale slip is O(1)."""
    torch = ns["torch"]
    x_t, eps_u, eps_c, eps = ns["x_t"], ns["eps_u"], ns["eps_c"], ns["eps"]
    assert eps.dtype == x_t.dtype == ns["x_prev"].dtype and eps.device == x_t.device
    want = (eps_u.double() + 7.5 * (eps_c.double() - eps_u.double()))  # CFG, float64
    assert torch.allclose(eps.double(), want, rtol=0, atol=6e-3 * float(want.abs().max()))
    ab = ns["per_sample"].reshape(-1, 1, 1, 1)
    want = ab.sqrt() * x_t.double() + (1 - ab).sqrt() * eps_u.double()  # q(x_t | x_0), Eq. 4
    got = ns["x_noisy"]
    assert got.dtype == torch.float16
    assert torch.allclose(got.double(), want, rtol=0, atol=2e-3 * float(want.abs().max()))


def _oracle(ns):
    assert ns["x_t"].shape == (1000, 2) and ns["labels"].shape == (1000,)
    assert ns["grad"].shape == (1000, 2)
    # the exact class-conditional ε differs from the unconditional one (class 1 of 3)
    assert np.abs(np.asarray(ns["eps_c"]) - np.asarray(ns["eps_u"])).max() > 1e-3


def _jax(ns):
    """The fused step under jit against the spec composition: both are sums of terms up to
    |A·x_t| + |B|·(|ε_u| + 7.5·|ε_c − ε_u|) with a handful of float32 roundings each, so they
    agree within 16·eps32 times that size; a sign or scale slip is O(1). The gradient of a
    DDIM step in x_t is the constant A = √(ᾱ_prev/ᾱ_t) (DDIM Eq. 12 is affine in x_t)."""
    x_prev, spec = np.asarray(ns["x_prev"], np.float64), np.asarray(ns["spec"], np.float64)
    assert x_prev.shape == spec.shape == (4, 2)
    size = np.abs(spec).max() + 10 * np.abs(np.asarray(ns["eps_c"])).max() + 10
    np.testing.assert_allclose(x_prev, spec, rtol=0, atol=16 * np.finfo(np.float32).eps * size)
    np.testing.assert_allclose(np.asarray(ns["dx"]), np.sqrt(0.55 / 0.3), rtol=1e-6)


def _kit(ns):
    ns["test_my_ddim_step"]()  # the block's own test passes on the correct step


def _variants(ns):
    """Each guided run returns (256, 2) finite samples; the interval, APG and CFG++ runs move
    the samples towards class 1 (mean log p(y = 1 | x_0) above the conditional sampler's,
    which sits at the class's own level); autoguidance whose guiding model is the model
    itself is the conditional sampler (D_u = D_c makes the extrapolation vanish), to the
    rounding of the fused step (a few ulps of |x| per step over 50 steps)."""
    rd, gm, sched, x_T = ns["rd"], ns["gm"], ns["sched"], ns["x_T"]
    cond = rd.sample(ns["model"], x_T, sched, num_inference_steps=50,
                     guidance=rd.Guidance(cond=1))
    base = float(np.mean(gm.log_prob_class(cond, 1.0, 1)))
    for x0 in ns["samples"]:
        assert x0.shape == (256, 2) and np.isfinite(x0).all()
    for x0 in ns["samples"][:3]:
        assert float(np.mean(gm.log_prob_class(x0, 1.0, 1))) > base
    np.testing.assert_allclose(ns["samples"][3], cond, rtol=0, atol=1e-12)


def _samplers(ns):
    """Every solver and the flow sampler return finite (512, 2) samples of class 1 under CFG
    at s = 3 on the exact model (mean p(y = 1 | x_0) > 0.9, against 1/3 unguided); and the
    block's own Euler = DDIM identity held (its assert ran)."""
    gm = ns["gm"]
    for name, x0 in ns["runs"].items():
        assert x0.shape == (512, 2) and np.isfinite(x0).all(), name
        assert float(np.mean(np.exp(gm.log_prob_class(x0, 1.0, 1)))) > 0.9, name
    assert ns["euler"].shape == ns["ddim"].shape == (8, 2)


CHECKS = {"karras_sigmas": _samplers, "ScaleSchedule": _variants, "rd.sample(model, x_T": _quickstart, 'device="c': _gpu,
          "demo_mixture": _oracle, "check_ddim_step": _kit, "jax.jit": _jax}


def test_readme_has_blocks():
    assert len(BLOCKS) >= 2
