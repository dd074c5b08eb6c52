"""The JAX backend object: keys and streams, seeds, dtypes (64-bit mode), devices, grad,
to_numpy, synchronize, compile; and the loop and the oracle run on JAX arrays with a JAX
generator, agreeing with NumPy float64 on the same noise within their first-order bounds.

tests/conftest.py turns on JAX's 64-bit mode for the whole run (the float64 rows); the
mode-off behaviour is checked inside ``jax.enable_x64(False)`` and in a fresh process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import refdiff as rd  # noqa: E402
from refdiff.backends import available_backends, get_backend  # noqa: E402
from refdiff.backends.jax_backend import KeyStream, key_from_seed, x64_enabled  # noqa: E402
from refdiff.oracle import demo_mixture  # noqa: E402
from refdiff.testing import Target, assert_close  # noqa: E402
from refdiff.testing import bounds as B  # noqa: E402
from refdiff.testing import references as R  # noqa: E402
from refdiff.testing.step_checks import default_model  # noqa: E402

JB = get_backend("jax")
SCH = rd.linear_schedule(1000)


def _np(a):
    return np.asarray(a, dtype=np.float64)


# ----- lookup --------------------------------------------------------------------------------
def test_lookup_by_name_array_and_tracer():
    assert "jax" in available_backends() and JB.name == "jax"
    assert get_backend(jnp.ones(2)) is JB            # jax.Array's type lives in jaxlib
    assert get_backend(jax.random.key(0)) is JB      # a typed key array is a jax.Array
    seen = []
    jax.jit(lambda x: seen.append(get_backend(x)) or x)(jnp.ones(2))   # a tracer
    assert seen == [JB]
    assert not JB.owns(np.ones(2)) and not JB.owns(1.0)
    assert get_backend(np.ones(2)).name == "numpy"


# ----- seeds, keys, streams --------------------------------------------------------------------
@pytest.mark.parametrize("draw", ["normal", "uniform"])
def test_same_seed_same_draws_other_seed_other_draws(draw):
    f = getattr(JB, draw)
    a, b, c = (_np(f((3, 4), generator=s)) for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.any(a == c)


def test_int_seed_is_the_documented_key():
    """Seed s draws from key data (s >> 32, s mod 2**32): jax.random.key(s) where JAX takes s
    whole (64-bit mode, s < 2**63), never truncated (JAX's key(2**32) is key(0) without it)."""
    for s in (0, 7, 2**32 + 3, 2**63 - 1):
        assert np.array_equal(jax.random.key_data(key_from_seed(s)),
                              jax.random.key_data(jax.random.key(s)))
    top = key_from_seed(2**64 - 1)
    assert jax.random.key_data(top).tolist() == [2**32 - 1, 2**32 - 1]
    assert not np.array_equal(_np(JB.normal((4,), generator=2**32)),
                              _np(JB.normal((4,), generator=0)))
    # the first draw of a seed is the documented split of its key
    _, sub = jax.random.split(jax.random.key(11))
    assert np.array_equal(_np(JB.normal((5,), generator=11)),
                          _np(jax.random.normal(sub, (5,), dtype=jnp.float32)))


def test_a_stream_advances_and_two_streams_agree():
    g1, g2 = JB.generator(3), KeyStream(jax.random.key(3))
    assert JB.generator(g1) is g1                  # returned as is: the stream continues
    first, second = _np(JB.normal((6,), generator=g1)), _np(JB.normal((6,), generator=g1))
    assert not np.any(first == second)
    assert np.array_equal(_np(JB.normal((6,), generator=g2)), first)
    assert np.array_equal(_np(JB.normal((6,), generator=g2)), second)
    # draw n uses the subkey of the n-th split of the held key
    k = jax.random.key(3)
    for expected in (first, second):
        k, sub = jax.random.split(k)
        assert np.array_equal(_np(jax.random.normal(sub, (6,), dtype=jnp.float32)), expected)
    assert "KeyStream(key data" in repr(g1)


def test_a_key_gives_the_same_draws_every_call_typed_or_raw():
    typed, raw = jax.random.key(9), jax.random.PRNGKey(9)
    a = _np(JB.uniform((4,), generator=typed))
    assert np.array_equal(a, _np(JB.uniform((4,), generator=typed)))    # JAX's rule
    assert np.array_equal(a, _np(JB.uniform((4,), generator=raw)))
    assert np.array_equal(a, _np(JB.uniform((4,), generator=9)))        # seed 9 = key(9)


def test_none_gives_fresh_streams():
    a, b = (_np(JB.normal((8,), generator=None)) for _ in range(2))
    assert not np.array_equal(a, b)


def test_draw_inside_jit_from_a_passed_key_equals_eager():
    k = jax.random.key(4)
    traced = jax.jit(lambda key: JB.normal((3,), generator=key))(k)
    assert np.array_equal(_np(traced), _np(JB.normal((3,), generator=k)))


@pytest.mark.parametrize("bad,err,match", [
    (3.0, TypeError, "float 3.0"),
    (True, TypeError, "bool True"),
    ("0", TypeError, "str '0'"),
    ([1, 2], TypeError, "list"),
    (-1, ValueError, ">= 0"),
    (2**64, ValueError, "at most 18446744073709551615"),
    (np.random.default_rng(0), TypeError, "numpy.random"),
    (jnp.ones(2), TypeError, "not one key"),
    (jnp.array([1, 2], dtype=jnp.int32), TypeError, "not one key"),    # int32, not a raw key
])
def test_bad_generators_are_refused(bad, err, match):
    with pytest.raises(err, match=match):
        JB.normal((2,), generator=bad)


def test_a_torch_generator_and_a_batch_of_keys_are_refused():
    with pytest.raises(TypeError, match="not one key"):
        JB.normal((2,), generator=jax.random.split(jax.random.key(0)))   # shape (2,) of keys
    with pytest.raises(TypeError, match="one JAX PRNG key"):
        KeyStream(5)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="torch"):
        JB.normal((2,), generator=torch.Generator())


# ----- dtypes ----------------------------------------------------------------------------------
def test_default_dtype_is_float32_even_in_64_bit_mode():
    assert x64_enabled()  # conftest
    assert JB.normal((2,), generator=0).dtype == jnp.float32
    assert JB.uniform((2,), generator=0).dtype == jnp.float32


def test_narrow_normals_are_the_rounded_float32_draws_and_float64_is_float64():
    z32 = JB.normal((64,), generator=1)
    for dt in (jnp.float16, jnp.bfloat16):
        z = JB.normal((64,), dtype=dt, generator=1)
        assert z.dtype == dt and np.array_equal(_np(z), _np(z32.astype(dt)))
    z64 = JB.normal((64,), dtype=jnp.float64, generator=1)
    assert z64.dtype == jnp.float64
    # the float64 draw is a different one of the same key, not float32 widened
    assert not np.array_equal(_np(z64), _np(z32))


@pytest.mark.parametrize("dt", ["float16", "bfloat16", "float32", "float64"])
def test_uniforms_lie_in_the_unit_interval_and_normals_are_standard(dt):
    n = 20_000
    u = _np(JB.uniform((n,), dtype=getattr(jnp, dt), generator=2))
    assert u.min() >= 0.0 and u.max() < 1.0
    z = _np(JB.normal((n,), dtype=getattr(jnp, dt), generator=3))
    # 6 standard errors: mean SE 1/√n, variance SE √(2/n); the rounding of a narrow dtype
    # moves the variance by at most about 2u·E|z|² (u ≤ 2**-8), inside that slack
    assert abs(z.mean()) < 6 / np.sqrt(n)
    assert abs(z.var() - 1) < 6 * np.sqrt(2 / n) + 2 * 2.0**-8
    assert abs(u.mean() - 0.5) < 6 * np.sqrt(1 / 12 / n) + 2.0**-8


def test_float64_without_64_bit_mode_is_refused_with_the_fix():
    with jax.enable_x64(False):
        assert not x64_enabled()
        for call in (lambda: JB.normal((2,), dtype=jnp.float64),
                     lambda: JB.uniform((2,), dtype=np.float64),
                     lambda: Target("jax", "float64").put(np.ones(2)),
                     lambda: demo_mixture().sample(3, backend="jax", generator=0)):
            with pytest.raises(TypeError, match='jax.config.update\\("jax_enable_x64", True\\)'):
                call()
        assert JB.normal((2,), generator=0).dtype == jnp.float32


def test_refdiff_never_switches_64_bit_mode_on_itself():
    """In a fresh process (JAX's default, mode off) importing and using the backend leaves the
    mode off, and float64 is refused rather than given as float32."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp
        import refdiff as rd
        from refdiff.backends import get_backend
        jb = get_backend(jnp.ones(2))
        assert jb.normal((2,), generator=0).dtype == jnp.float32
        assert not jax.config.jax_enable_x64
        try:
            jb.normal((2,), dtype=jnp.float64, generator=0)
        except TypeError as exc:
            assert "jax_enable_x64" in str(exc)
        else:
            raise SystemExit("float64 accepted without 64-bit mode")
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAX_ENABLE_X64"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("bad", [jnp.int32, np.int64, "int8", jnp.bool_, jnp.complex64, object,
                                 "nonsense"])
def test_non_floating_dtypes_are_refused(bad):
    with pytest.raises(TypeError, match="dtype must be a real floating JAX dtype"):
        JB.normal((2,), dtype=bad)


def test_a_torch_dtype_is_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="dtype must be a real floating JAX dtype"):
        JB.normal((2,), dtype=torch.float32)


def test_bad_shapes_are_refused():
    with pytest.raises(TypeError, match="shape must be a tuple of ints"):
        JB.normal((2.0,))
    with pytest.raises(TypeError, match="shape must be a tuple of ints"):
        JB.normal(3)
    with pytest.raises(ValueError, match="non-negative"):
        JB.normal((2, -1))
    assert JB.normal([0, 3], generator=0).shape == (0, 3)


# ----- devices ---------------------------------------------------------------------------------
def test_devices_accepted_and_where_the_draws_land():
    cpu = jax.devices("cpu")[0]
    for dev in (None, "cpu", "cpu:0", cpu):
        z = JB.normal((2,), device=dev, generator=0)
        assert z.device == cpu
    assert np.array_equal(_np(JB.normal((2,), device="cpu", generator=0)),
                          _np(JB.normal((2,), generator=0)))


@pytest.mark.parametrize("bad,match", [
    (3, "device must be None, a jax.Device or a platform string"),
    ("cpu:x", "device must be None"),
    ("metal", "device must be None"),
    ("cpu:99", "JAX has no such device"),
])
def test_bad_devices_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        JB.normal((2,), device=bad)


def test_gpu_string_without_a_gpu_is_refused():
    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is present")
    for name in ("gpu", "cuda", "gpu:0"):
        with pytest.raises(ValueError, match="JAX has no such device; present: cpu"):
            JB.normal((2,), device=name)


# ----- grad, to_numpy, synchronize, compile ---------------------------------------------------
def test_grad_value_and_classifier_gradient():
    x = jnp.asarray([[0.5, -1.0, 2.0]], dtype=jnp.float64)
    g = JB.grad(lambda z: jnp.sum(jnp.sin(z) * z), x)
    np.testing.assert_allclose(_np(g), np.sin(_np(x)) + _np(x) * np.cos(_np(x)),
                               rtol=4 * 2.0**-53 * 8, atol=0)
    assert g.dtype == jnp.float64 and g.shape == x.shape
    # refdiff.classifier_gradient sums a (B,) log-probability and asks the backend for ∇
    W = jnp.asarray([[1.0, -2.0, 0.5]], dtype=jnp.float64)
    got = rd.classifier_gradient(lambda z: jnp.sum(z * W, axis=1) ** 2, x)
    assert np.array_equal(_np(got), 2 * float(jnp.sum(x * W)) * _np(W))


def test_grad_refuses_non_scalars_and_non_floating_points():
    with pytest.raises(ValueError, match=r"fn must return a scalar, got shape \(3,\)"):
        JB.grad(lambda z: z * 2, jnp.ones(3))
    with pytest.raises(TypeError, match="x must be a real floating JAX array"):
        JB.grad(lambda z: jnp.sum(z), jnp.ones(3, dtype=jnp.int32))
    with pytest.raises(TypeError, match="x must be a real floating JAX array"):
        JB.grad(lambda z: z.sum(), np.ones(3))


def test_to_numpy():
    a = JB.normal((2, 3), generator=0)
    out = JB.to_numpy(a)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 3)
    assert np.array_equal(out, np.asarray(a))
    bf = JB.to_numpy(a.astype(jnp.bfloat16))
    assert bf.dtype == np.float32 and np.array_equal(bf, np.asarray(a.astype(jnp.bfloat16),
                                                                     dtype=np.float32))
    with pytest.raises(TypeError, match="traced JAX array"):
        jax.jit(JB.to_numpy)(a)


def test_synchronize_waits_for_the_arrays_it_is_given():
    x = jnp.ones((256, 256))
    ys = {"a": x @ x, "b": [jnp.sin(x)]}
    JB.synchronize(wait_for=ys)
    assert ys["a"].is_ready() and ys["b"][0].is_ready()
    JB.synchronize()
    JB.synchronize("cpu")
    with pytest.raises(ValueError, match="device must be None"):
        JB.synchronize(device=5)


def test_compile_is_jit_and_agrees_with_eager():
    x, e = (Target("jax", "float32").put(np.random.default_rng(i).standard_normal((3, 4)))
            for i in (0, 1))
    step = JB.compile(lambda x, e: rd.ddim_step(x, e, 0.3, 0.7, eta=0.0))
    got, eager = step(x, e), rd.ddim_step(x, e, 0.3, 0.7)
    # XLA may fuse and reorder: both within the step's float32 bound of NumPy float64
    bound = B.ddim_step(_np(x), _np(e), None, 0.3, 0.7, "float32")
    ref = rd.ddim_step(_np(x), _np(e), 0.3, 0.7)
    for out in (got, eager):
        assert_close(out, ref, dtype="float32", device="cpu", bound=bound)
    assert JB.compile(jnp.sin, static_argnums=())(jnp.zeros(1)).shape == (1,)


# ----- the loop and the oracle on JAX ---------------------------------------------------------
def _jax_model(x, t, c):
    return default_model(x, t)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.6)])
def test_sample_on_jax_agrees_with_numpy_float64_on_the_same_noise(dtype, sampler, eta):
    """rd.sample on JAX with a JAX generator, against the kit's NumPy float64 loop given the
    noise that generator drew (replayed from a second stream of the same key: the loop draws
    one normal of x's shape and dtype per step but the last, in order), within the loop's
    first-order bound (bounds.sampling_loop; the model's own error from its error_terms).
    Measured max error/bound (2026-12, this test): float64 0 (bitwise equal to NumPy),
    float32 1.5e-4 (DDPM) and 2.4e-3 (DDIM η = 0.6); replaying another key's noise misses
    by 1e3–1e13×, so a loop that drew its noise differently cannot pass."""
    target, n = Target("jax", dtype), 12
    x_T = target.rounded(np.random.default_rng(0).standard_normal((3, 4)))
    ts = rd.inference_timesteps(1000, n, "leading")
    out = rd.sample(_jax_model, target.put(x_T), SCH, sampler=sampler, eta=eta,
                    num_inference_steps=n, spacing="leading", generator=KeyStream(jax.random.key(8)))
    replay = KeyStream(jax.random.key(8))
    dt = getattr(jnp, dtype)
    noises = [_np(JB.normal(x_T.shape, dtype=dt, generator=replay)) for _ in range(n - 1)]
    noises.append(np.zeros_like(x_T))
    kw = {"eta": eta} if sampler == "ddim" else {}
    expected = R.sample(default_model, x_T, ts, noises, schedule=SCH, sampler=sampler, **kw)
    _, bound = B.sampling_loop(default_model, x_T, ts, noises, SCH.alpha_bar, lambda: 1.0,
                               dtype, sampler=sampler, **kw)
    assert_close(out, expected, dtype=dtype, device="cpu", bound=bound)
    # the same generator seed on JAX reproduces; another key changes the result
    again = rd.sample(_jax_model, target.put(x_T), SCH, sampler=sampler, eta=eta,
                      num_inference_steps=n, spacing="leading", generator=jax.random.key(8))
    other = rd.sample(_jax_model, target.put(x_T), SCH, sampler=sampler, eta=eta,
                      num_inference_steps=n, spacing="leading", generator=9)
    assert np.array_equal(_np(again), _np(out)) and not np.array_equal(_np(other), _np(out))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_deterministic_ddim_on_jax_equals_numpy_rd_sample(dtype):
    """η = 0 draws nothing: rd.sample itself on NumPy float64 is the reference."""
    target, n = Target("jax", dtype), 10
    x_T = target.rounded(np.random.default_rng(1).standard_normal((2, 5)))
    ref = rd.sample(lambda x, t, c: default_model(x, t), x_T, SCH, num_inference_steps=n)
    out = rd.sample(_jax_model, target.put(x_T), SCH, num_inference_steps=n)
    ts = rd.inference_timesteps(1000, n, "leading")
    zeros = [np.zeros_like(x_T)] * n
    _, bound = B.sampling_loop(default_model, x_T, ts, zeros, SCH.alpha_bar, lambda: 1.0, dtype)
    assert_close(out, ref, dtype=dtype, device="cpu", bound=bound)


def test_sample_traces_under_jit_with_a_key_argument():
    x = Target("jax", "float32").put(np.random.default_rng(2).standard_normal((2, 3)))
    run = lambda x, key: rd.sample(_jax_model, x, SCH, sampler="ddpm", num_inference_steps=4,
                                   generator=key)
    k = jax.random.key(5)
    traced, eager = jax.jit(run)(x, k), run(x, k)
    noises = [_np(jax.random.normal(s, (2, 3), dtype=jnp.float32)) for s in _replay(k, 4)]
    bound = B.sampling_loop(default_model, _np(x), rd.inference_timesteps(1000, 4, "leading"),
                            noises, SCH.alpha_bar, lambda: 1.0, "float32", sampler="ddpm")[1]
    # both runs are float32 evaluations of one float64 loop: within twice its bound
    assert_close(traced, eager, dtype="float32", device="cpu", bound=2 * bound)
    assert traced.dtype == jnp.float32


def _replay(key, n):
    """The first n keys a stream started from ``key`` hands out: the loop's step i draws
    with key i (the last step draws nothing; the bound ignores its noise)."""
    stream, keys = KeyStream(key), []
    for _ in range(n):
        keys.append(stream.next_key())
    return keys


def test_oracle_sample_on_jax_is_its_formula_on_the_replayed_draws():
    """x_0 = μ_k + U_k·(√λ_k ⊙ z), k the first component with u < cdf_k: the oracle's draws
    on JAX (float64, 64-bit mode) against that formula in NumPy on the same u and z (replayed
    from a stream of the same seed: one uniform (n,), then one normal (n, d)). Error: the
    matvec's γ_{d+2} of |μ| + |U|·|√λ z| per element, times the kit's safety factor."""
    gm, n, seed = demo_mixture(), 500, 21
    x0, labels = gm.sample(n, backend="jax", generator=seed)
    assert x0.dtype == jnp.float64 and x0.shape == (n, 2) and labels.shape == (n,)
    replay = JB.generator(seed)
    u = _np(JB.uniform((n,), dtype=jnp.float64, generator=replay))
    z = _np(JB.normal((n, 2), dtype=jnp.float64, generator=replay))
    w = np.asarray(gm.weights, dtype=np.float64)
    k = np.sum(u[:, None] >= np.cumsum(w)[None, :-1], axis=1)
    mu, lam, U = (np.asarray(p, dtype=np.float64) for p in (gm.means, gm.eigvals, gm.eigvecs))
    scaled = z * np.sqrt(lam[k])
    ref = mu[k] + np.einsum("bij,bj->bi", U[k], scaled)
    gamma = lambda m: m * 2.0**-53 / (1 - m * 2.0**-53)
    # √λ, the product, the d-term dot, + μ: γ_{d+2} on each side (JAX's and the reference's)
    bound = B.SAFETY * 2 * gamma(2 + 2) * (np.abs(mu[k]) + np.einsum("bij,bj->bi", np.abs(U[k]),
                                                                   np.abs(scaled)))
    assert_close(x0, ref, dtype="float64", device="cpu", bound=bound)
    assert np.array_equal(np.asarray(labels), np.asarray(gm.labels)[k])
    # a seed reproduces; a stream continues
    again, _ = gm.sample(n, backend="jax", generator=seed)
    assert np.array_equal(_np(again), _np(x0))
    g = JB.generator(seed)
    first, _ = gm.sample(4, backend="jax", generator=g)
    second, _ = gm.sample(4, backend="jax", generator=g)
    assert not np.array_equal(_np(first), _np(second))
    xt, _ = gm.sample_noisy(4, 0.5, backend="jax", generator=1, dtype=jnp.float32)
    assert xt.dtype == jnp.float32 and xt.shape == (4, 2)
