"""The opt-in compiled path (refdiff.compiled) equals the eager functions it compiles.

Each compile costs 1–3 s on a CPU, so the file compiles four small functions once each
(about 10–20 s in all) and checks one shape per function; the slow ones are marked.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from refdiff import compiled  # noqa: E402
import refdiff as rd  # noqa: E402

pytestmark = pytest.mark.skipif(not compiled.is_available(), reason="torch.compile unavailable")

# Inductor may fuse a·x + b·y into fused multiply-adds or reorder a sum: a few float32 eps of
# the magnitude of the terms (|x_t|, |ε| ≤ ~5 here; the 1/√ᾱ of x̂_0 adds a factor ~2).
F32_ATOL = 64 * float(np.finfo(np.float32).eps)


def _arrays(shape=(2, 3, 4, 4), dtype=torch.float32, n=4):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(n)]


def _agree(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
    if not torch.equal(a, b):  # bitwise where Inductor keeps the operation order
        torch.testing.assert_close(a, b, rtol=0, atol=F32_ATOL)


@pytest.mark.slow
def test_guided_ddim_step_equals_eager():
    x, u, c, z = _arrays()
    got = compiled.guided_ddim_step(x, u, c, 7.5, 0.3, 0.55)
    _agree(got, rd.ddim_step(x, rd.cfg(u, c, 7.5), 0.3, 0.55))
    got = compiled.guided_ddim_step(x, u, c, 7.5, 0.3, 0.55, eta=0.5, noise=z)  # recompiles
    _agree(got, rd.ddim_step(x, rd.cfg(u, c, 7.5), 0.3, 0.55, eta=0.5, noise=z))


@pytest.mark.slow
def test_ddpm_step_and_q_sample_equal_eager():
    x, e, z, _ = _arrays()
    _agree(compiled.ddpm_step(x, e, 0.3, 0.55, z), rd.ddpm_step(x, e, 0.3, 0.55, z))
    _agree(compiled.q_sample(x, 0.3, e), rd.q_sample(x, 0.3, e))


@pytest.mark.slow
def test_cfg_exact_at_scale_0_and_1_when_compiled():
    _, u, c = _arrays(n=3)
    assert torch.equal(compiled.cfg(u, c, 0.0), u) and torch.equal(compiled.cfg(u, c, 1.0), c)


def test_rejects_what_eager_rejects_and_non_torch_inputs():
    x, u, c, _ = _arrays(shape=(2, 3))
    with pytest.raises(TypeError, match="takes torch tensors"):
        compiled.guided_ddim_step(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3)), 2.0, 0.3, 0.5)
    assert "not yet compiled" in repr(compiled.compile_fn(rd.cfg))
    assert compiled.guided_ddim_step.eager(x, u, c, 2.0, 0.3, 0.5).shape == (2, 3)
    with pytest.raises(ValueError, match="alpha_bar_prev must be >= alpha_bar_t"):
        compiled.guided_ddim_step.eager(x, u, c, 2.0, 0.5, 0.3)


# ----- the compiled sampling loop (refdiff.compiled.DDIMLoop / sample_ddim) ---------------
#
# Tolerance, derived: the test model is ε = 0.1·x + b_c·(1 + t/1000), so each step is affine
# in x: x' = L_i·x + (terms without x), L_i = A_i + 0.1·B_i with A = √(ᾱ_prev/ᾱ_t) and
# B = d − A·√(1−ᾱ_t) (refdiff.fused). Each implementation rounds at most ~7 times per step,
# each rounding at most eps/2 of a quantity bounded by M_i = |A|·|x| + (|A|·√(1−ᾱ_t) + |d|)
# ·(1 + 2|s|)·max(|ε_u|, |ε_c|) + σ·|z| (the fused form does not form ε_c − ε_u), so the two
# differ by at most 8·eps·M_i at step i, and that difference is carried to x_0 multiplied by
# Π_{j>i} |L_j|. Bound: 8·eps·Σ_i M_i·Π_{j>i} |L_j|, from the float64 trajectory.
# The JAX loop takes ᾱ in float32: each coefficient then also carries a relative error
# ρ_i ≤ eps·(1 + ᾱ_t/(1 − ᾱ_t)) (1 − ᾱ_t formed from a rounded ᾱ_t), added to the 8·eps.

S_LOOP, STEPS = 7.5, 10
_SCHEDULE = rd.linear_schedule(1000)


def _loop_inputs(shape=(2, 3, 4, 4), seed=0):
    r = np.random.default_rng(seed)
    return [r.standard_normal(shape) for _ in range(3)]  # x_T, b_u, b_c (float64)


def _model_of(b_u, b_c):
    def model(x, t, c):
        return 0.1 * x + (b_c if c == 1 else b_u) * (1 + t / 1000)
    return model


def _bound(x_T, b_u, b_c, s, eta, steps=STEPS, jax_levels=False, z_max=5.0):
    eps32 = float(np.finfo(np.float32).eps)
    ts = [int(t) for t in rd.inference_timesteps(1000, steps, "leading")]
    abar = [_SCHEDULE.alpha_bar(t) for t in ts] + [1.0]
    _, traj = rd.sample(_model_of(b_u, b_c), x_T, _SCHEDULE, num_inference_steps=steps,
                        guidance=rd.Guidance(cond=1, uncond=0, scale=s), return_trajectory=True)
    terms = []
    for i, t in enumerate(ts):
        a_t, a_p = abar[i], abar[i + 1]
        r = eta ** 2 * (1 - a_t / a_p) / (1 - a_t)
        sigma, d = np.sqrt(r * (1 - a_p)), np.sqrt((1 - a_p) * max(1 - r, 0.0))
        A = np.sqrt(a_p / a_t)
        B = d - A * np.sqrt(1 - a_t)
        x = np.abs(traj[i]).max()
        e = 0.1 * x + max(np.abs(b_u).max(), np.abs(b_c).max()) * (1 + t / 1000)
        M = A * x + (A * np.sqrt(1 - a_t) + d) * (1 + 2 * abs(s)) * e + sigma * z_max
        rho = eps32 * (1 + a_t / (1 - a_t)) if jax_levels else 0.0
        terms.append(((8 * eps32 + rho) * M, abs(A + 0.1 * B)))
    total = 0.0
    for k, (err, _) in enumerate(terms):
        total += err * np.prod([L for _, L in terms[k + 1:]])
    return total


def _torch_loop_case(eta, s=S_LOOP, steps=STEPS, loop=None, seed=0):
    x_T, b_u, b_c = (torch.from_numpy(a).float() for a in _loop_inputs(seed=seed))
    g = rd.Guidance(cond=1, uncond=0, scale=s)
    kw = dict(num_inference_steps=steps, guidance=g, eta=eta, generator=7)
    loop = loop or compiled.DDIMLoop(backend="aot_eager")
    got = loop.sample(_model_of(b_u, b_c), x_T, _SCHEDULE, **kw)
    want = rd.sample(_model_of(b_u, b_c), x_T, _SCHEDULE, **kw)
    return loop, got, want


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_compiled_loop_equals_eager_sample(eta):
    loop, got, want = _torch_loop_case(eta)
    assert got.shape == want.shape and got.dtype == want.dtype == torch.float32
    tol = _bound(*_loop_inputs(), S_LOOP, eta)
    assert (got - want).abs().max().item() <= tol, tol
    # the same seed draws the same noise: a different one moves x_0 far beyond the bound
    if eta > 0:
        other = loop.sample(_model_of(*(torch.from_numpy(a).float() for a in _loop_inputs()[1:])),
                            torch.from_numpy(_loop_inputs()[0]).float(), _SCHEDULE,
                            num_inference_steps=STEPS, eta=eta, generator=8,
                            guidance=rd.Guidance(cond=1, uncond=0, scale=S_LOOP))
        assert (other - want).abs().max().item() > 100 * tol


def test_compiled_loop_compiles_once():
    loop, _, _ = _torch_loop_case(0.0)
    assert loop.last_run.steps == STEPS and loop.compilations == 1
    assert loop.last_run.compilations == 1 and loop.last_run.after_first_step == 0
    # another schedule length, spacing and scale: the same compiled step
    _torch_loop_case(0.0, s=3.0, steps=7, loop=loop, seed=1)
    assert loop.last_run.compilations == 0 and loop.compilations == 1
    # s = 1 evaluates one branch and passes its ε twice: aliased inputs, one graph more, once
    _torch_loop_case(0.0, s=1.0, steps=4, loop=loop)
    assert loop.last_run.compilations == 1 and loop.last_run.after_first_step == 0
    _torch_loop_case(0.0, s=0.0, steps=5, loop=loop)
    assert loop.last_run.compilations == 0 and loop.compilations == 2
    _torch_loop_case(0.3, loop=loop)  # a new η is a new graph, exactly one
    assert loop.last_run.compilations == 1 and loop.compilations == 3
    assert loop.last_run.cuda_graphs is False  # never on a CPU tensor
    assert "3 compilation(s)" in repr(loop)


@pytest.mark.slow
def test_compiled_loop_with_inductor_compiles_once_and_agrees():
    loop = compiled.DDIMLoop()  # inductor
    _, got, want = _torch_loop_case(0.5, loop=loop)
    assert (got - want).abs().max().item() <= _bound(*_loop_inputs(), S_LOOP, 0.5)
    _torch_loop_case(0.5, s=2.0, steps=6, loop=loop)
    assert loop.compilations == 1 and loop.last_run.compilations == 0


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(sampler="ddpm"), ValueError, "sampler='ddpm' is not supported"),
    (dict(prediction_type="v_prediction"), ValueError, "prediction_type='v_prediction' is not"),
    (dict(clip_x0=1.0), ValueError, "clip_x0=1.0 is not supported: the compiled loop"),
    (dict(return_trajectory=True), ValueError, "return_trajectory=True is not supported"),
    (dict(callback=print), ValueError, "callback=<built-in function print> is not supported"),
    (dict(guidance=rd.Guidance(rescale=0.7)), ValueError, "Guidance.rescale=0.7 is not"),
    (dict(guidance=rd.Guidance(classifier_scale=1.0, grad_log_prob=lambda x, t: x)),
     ValueError, "Guidance.classifier_scale=1.0 is not supported"),
    (dict(guidance=rd.Guidance(scale=torch.ones(2))), TypeError, "Guidance.scale must be a real"),
    (dict(frobnicate=1), TypeError, "unexpected keyword argument 'frobnicate'"),
    (dict(eta=-1.0), ValueError, "eta must be a finite float >= 0"),
    (dict(eta=2.0), ValueError, "eta=2.0 makes the DDIM variance"),
])
def test_compiled_loop_refuses_what_it_does_not_do(kwargs, error, match):
    x = torch.zeros(2, 3)
    with pytest.raises(error, match=match):
        compiled.sample_ddim(lambda x, t, c: x, x, _SCHEDULE, num_inference_steps=5, **kwargs)


def test_compiled_loop_refuses_other_libraries_and_options():
    with pytest.raises(TypeError, match="takes a torch tensor or a JAX array as x_T, got numpy"):
        compiled.sample_ddim(lambda x, t, c: x, np.zeros((2, 3)), _SCHEDULE)
    with pytest.raises(ValueError, match="cuda_graphs must be 'auto', True or False"):
        compiled.DDIMLoop(cuda_graphs="yes")
    with pytest.raises(ValueError, match="mode applies to backend='inductor' only"):
        compiled.DDIMLoop(backend="aot_eager", mode="reduce-overhead")
    with pytest.raises(ValueError, match="cuda_graphs=True needs x_T on a CUDA device"):
        compiled.DDIMLoop(cuda_graphs=True).sample(lambda x, t, c: x, torch.zeros(2, 3),
                                                   _SCHEDULE, num_inference_steps=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (not tested on CPU CI)")
def test_compiled_loop_cuda_graphs_equal_eager():
    x_T, b_u, b_c = (torch.from_numpy(a).float().cuda() for a in _loop_inputs())
    g = rd.Guidance(cond=1, uncond=0, scale=S_LOOP)
    loop = compiled.DDIMLoop(mode="reduce-overhead")
    got = loop.sample(_model_of(b_u, b_c), x_T, _SCHEDULE, num_inference_steps=STEPS, guidance=g)
    want = rd.sample(_model_of(b_u, b_c), x_T, _SCHEDULE, num_inference_steps=STEPS, guidance=g)
    assert loop.last_run.cuda_graphs and loop.compilations == 1
    assert (got - want).abs().max().item() <= _bound(*_loop_inputs(), S_LOOP, 0.0)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_jax_loop_equals_eager_loop(eta):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x_T, b_u, b_c = (jnp.asarray(a, dtype=jnp.float32) for a in _loop_inputs())

    def model(x, t, c):  # traceable: the condition is the array itself
        return 0.1 * x + c * (1 + t / 1000)

    g = rd.Guidance(cond=b_c, uncond=b_u, scale=S_LOOP)
    kw = dict(num_inference_steps=STEPS, guidance=g, eta=eta, generator=11)
    loop = compiled.DDIMLoop()
    got = loop.sample(model, x_T, _SCHEDULE, **kw)
    want = rd.sample(model, x_T, _SCHEDULE, **kw)  # eager, through the JAX backend
    assert got.shape == want.shape and got.dtype == want.dtype == jnp.float32
    tol = _bound(*_loop_inputs(), S_LOOP, eta, jax_levels=True)
    assert float(jnp.abs(got - want).max()) <= tol, tol
    # another scale and schedule of the same length: the same program
    loop.sample(model, x_T, _SCHEDULE, num_inference_steps=STEPS, spacing="trailing",
                guidance=rd.Guidance(cond=b_c, uncond=b_u, scale=2.0), eta=eta, generator=12)
    assert loop.compilations == 1 and loop.last_run.compilations == 0
