"""Adversarial inputs to the oracle (refdiff.oracle) and to the backends' draws.

The promise under test: bad input raises ValueError or TypeError with a message that names
the argument; valid edge inputs give finite outputs (and seeds the same draws as before).
Organised by class of input; every case is a (call, exception, regex) row.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdiff.backends import get_backend
from refdiff.oracle import GaussianMixture, demo_mixture

torch = pytest.importorskip("torch")
xs = pytest.importorskip("array_api_strict")

GM = demo_mixture()                       # 6 components, labels 0, 1, 2
GAP = GaussianMixture.isotropic([1, 1], [[0.0, 0.0], [1.0, 1.0]], 0.5, [0, 2])  # no class 1
X = np.array([[0.3, -0.2], [1.0, 0.8], [-0.6, 0.4]])
XT = torch.asarray(X)
F16_MAX = float(np.finfo(np.float16).max)
METHODS = ("score", "x0_eps", "eps", "log_prob", "log_prob_class", "grad_log_prob_class")
BACKENDS = ("numpy", "torch", "array_api_strict")


def _raises(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def _finite(*outs):
    """Every output (an array, or a tuple of arrays) is finite."""
    for out in outs:
        for a in out if isinstance(out, tuple) else (out,):
            a = np.asarray(get_backend(a).to_numpy(a), dtype=np.float64)
            assert np.all(np.isfinite(a)), a


def _rows(cases):
    return [pytest.param(call, exc, pattern, id=name) for name, call, exc, pattern in cases]


# ----- 1a. labels y of the evaluations --------------------------------------------------------
BAD_Y = [
    ("array-out-of-range", np.array([7, 7, 7]), ValueError),
    ("array-negative", np.array([-1, 0, 1]), ValueError),
    ("array-float", np.array([0.0, 1.0, 2.0]), TypeError),
    ("array-bool", np.array([True, False, True]), TypeError),
    ("array-shape-(B,1)", np.array([[0], [1], [2]]), ValueError),
    ("array-0d", np.array(1), ValueError),
    ("torch-with-numpy-x", torch.tensor([0, 1, 2]), TypeError),
    ("int-out-of-range", 7, ValueError),
    ("int-negative", -1, ValueError),
    ("float", 1.0, TypeError),
    ("bool", True, TypeError),
    ("list", [0, 1, 2], TypeError),
    ("str", "1", TypeError),
]


class TestOracleLabels:
    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.parametrize("name,y,exc", BAD_Y, ids=[c[0] for c in BAD_Y])
    def test_bad_y_every_method(self, method, name, y, exc):
        _raises(lambda: getattr(GM, method)(X, 0.5, y), exc, r"\by\b")

    @pytest.mark.parametrize("y", [1, np.array([1, 1, 1]), np.array([0, 1, 2])], ids=str)
    def test_label_without_component(self, y):
        _raises(lambda: GAP.eps(X, 0.5, y), ValueError, r"y must be a label carried by a component")

    @pytest.mark.parametrize("y,exc", [(99, ValueError), (-1, ValueError), (1.5, TypeError),
                                       ("a", TypeError), (True, TypeError),
                                       (np.array([1]), TypeError)], ids=str)
    def test_bad_y_of_sample(self, y, exc):
        _raises(lambda: GM.sample(10, generator=0, y=y), exc, r"\by\b")

    def test_sample_of_label_without_component(self):
        _raises(lambda: GAP.sample(10, generator=0, y=1), ValueError, r"\by\b")

    @pytest.mark.parametrize("y", [np.int64(1), np.array([0, 2, 1], dtype=np.uint8),
                                   np.array([2, 2, 2], dtype=np.int32)], ids=repr)
    def test_valid_labels_are_finite(self, y):
        for method in METHODS:
            _finite(getattr(GM, method)(X, 0.5, y))

    def test_torch_labels_and_numpy_int_label(self):
        _finite(GM.eps(XT, 0.5, torch.tensor([0, 1, 2], dtype=torch.int32)))
        out = GM.sample(5, generator=0, y=np.int64(2))
        assert np.all(out[1] == 2)


# ----- 1b. construction of a mixture ----------------------------------------------------------
M2 = [[0.0, 0.0], [1.0, 1.0]]
CONSTRUCTION = [
    ("weights-negative", lambda: GaussianMixture.isotropic([1, -1], M2, 1.0), ValueError, "weights"),
    ("weights-nan", lambda: GaussianMixture.isotropic([1, np.nan], M2, 1.0), ValueError, "weights"),
    ("weights-inf", lambda: GaussianMixture.isotropic([1, np.inf], M2, 1.0), ValueError, "weights"),
    ("weights-zero", lambda: GaussianMixture.isotropic([0, 1], M2, 1.0), ValueError, "weights"),
    ("weights-shape", lambda: GaussianMixture.isotropic([1, 1, 1], M2, 1.0), ValueError, "weights"),
    ("weights-ratio-underflow", lambda: GaussianMixture.isotropic([1e-300, 1e300], M2, 1.0),
     ValueError, "weights"),
    ("weights-str", lambda: GaussianMixture.isotropic(["a", 1], M2, 1.0), TypeError, "weights"),
    ("weights-bool", lambda: GaussianMixture.isotropic([True, True], M2, 1.0), TypeError, "weights"),
    ("weights-complex", lambda: GaussianMixture.isotropic([1j, 1], M2, 1.0), TypeError, "weights"),
    ("cov-nan", lambda: GaussianMixture.full([1], [[0, 0]], [[[np.nan, 0], [0, 1]]]),
     ValueError, "covariances must be finite"),
    ("cov-inf", lambda: GaussianMixture.full([1], [[0, 0]], [[[np.inf, 0], [0, 1]]]),
     ValueError, "covariances must be finite"),
    ("cov-asymmetric", lambda: GaussianMixture.full([1], [[0, 0]], [[[1, 2], [0, 1]]]),
     ValueError, "covariances must be symmetric"),
    ("cov-indefinite", lambda: GaussianMixture.full([1], [[0, 0]], [[[1, 2], [2, 1]]]),
     ValueError, "covariances"),
    ("cov-shape", lambda: GaussianMixture.full([1], [[0, 0]], [[1, 0], [0, 1]]),
     ValueError, "covariances"),
    ("cov-str", lambda: GaussianMixture.full([1], [[0, 0]], "eye"), TypeError, "covariances"),
    ("means-nan", lambda: GaussianMixture.isotropic([1, 1], [[0, np.nan], [1, 1]], 1.0),
     ValueError, "means"),
    ("means-1d", lambda: GaussianMixture.isotropic([1], [0.0, 0.0], 1.0), ValueError, "means"),
    ("means-empty", lambda: GaussianMixture.isotropic([], np.zeros((0, 2)), 1.0), ValueError,
     "means"),
    ("variances-nan", lambda: GaussianMixture.diagonal([1, 1], M2, [[1, np.nan], [1, 1]]),
     ValueError, "variances must be finite"),
    ("variances-zero", lambda: GaussianMixture.isotropic([1, 1], M2, 0.0), ValueError,
     "positive definite"),
    ("variances-shape", lambda: GaussianMixture.isotropic([1, 1], M2, [1.0, 1.0, 1.0]),
     ValueError, "variances"),
    ("labels-float", lambda: GaussianMixture.isotropic([1, 1], M2, 1.0, [0.0, 1.0]), TypeError,
     "labels"),
    ("labels-str", lambda: GaussianMixture.isotropic([1, 1], M2, 1.0, ["a", "b"]), TypeError,
     "labels"),
    ("labels-negative", lambda: GaussianMixture.isotropic([1, 1], M2, 1.0, [0, -1]), ValueError,
     "labels"),
    ("labels-shape", lambda: GaussianMixture.isotropic([1, 1], M2, 1.0, [0, 1, 2]), ValueError,
     "labels"),
]


class TestOracleConstruction:
    @pytest.mark.parametrize("call,exc,pattern", _rows(CONSTRUCTION))
    def test_refused(self, call, exc, pattern):
        _raises(call, exc, pattern)

    @pytest.mark.parametrize("weights", [[1e308, 1e308], [1e308, 1e308, 1.0], [5e-324, 1e-320]],
                             ids=str)
    def test_extreme_weights_normalise_stably(self, weights):
        K = len(weights)
        gm = GaussianMixture.isotropic(weights, np.arange(2.0 * K).reshape(K, 2), 0.5)
        assert np.all(gm.weights > 0) and abs(float(np.sum(gm.weights)) - 1.0) < 1e-12
        for method in METHODS:
            _finite(getattr(gm, method)(X, 0.5, 0))


# ----- 1c. counts and options of the samplers -------------------------------------------------
SAMPLER = [
    ("n-negative", lambda: GM.sample(-1), ValueError, r"\bn\b"),
    ("n-float", lambda: GM.sample(2.5), TypeError, r"\bn\b"),
    ("n-float-integral", lambda: GM.sample(3.0), TypeError, r"\bn\b"),
    ("n-bool", lambda: GM.sample(True), TypeError, r"\bn\b"),
    ("n-str", lambda: GM.sample("3"), TypeError, r"\bn\b"),
    ("n-None", lambda: GM.sample(None), TypeError, r"\bn\b"),
    ("n-array", lambda: GM.sample(np.array([3])), TypeError, r"\bn\b"),
    ("noisy-n-negative", lambda: GM.sample_noisy(-2, 0.5), ValueError, r"\bn\b"),
    ("noisy-n-float", lambda: GM.sample_noisy(1.5, 0.5), TypeError, r"\bn\b"),
    ("noisy-alpha-bar-out", lambda: GM.sample_noisy(3, 1.5), ValueError, "alpha_bar_t"),
    ("noisy-alpha-bar-nan", lambda: GM.sample_noisy(3, float("nan")), ValueError, "alpha_bar_t"),
    ("noisy-alpha-bar-str", lambda: GM.sample_noisy(3, "0.5"), TypeError, "alpha_bar_t"),
    ("backend-int", lambda: GM.sample(3, backend=3), TypeError, "backend"),
    ("backend-unknown", lambda: GM.sample(3, backend="nonesuch"), ValueError, "backend"),
    ("dtype-int-numpy", lambda: GM.sample(3, dtype=np.int64), TypeError, "dtype"),
    ("dtype-int-torch", lambda: GM.sample(3, backend="torch", dtype=torch.int64), TypeError,
     "dtype"),
    ("dtype-str-torch", lambda: GM.sample(3, backend="torch", dtype="float32"), TypeError,
     "dtype"),
    ("device-cuda-numpy", lambda: GM.sample(3, device="cuda"), ValueError, "device"),
]


class TestOracleSamplers:
    @pytest.mark.parametrize("call,exc,pattern", _rows(SAMPLER))
    def test_refused(self, call, exc, pattern):
        _raises(call, exc, pattern)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_zero_draws_give_empty_arrays(self, backend):
        x0, labels = GM.sample(0, generator=0, backend=backend)
        assert tuple(x0.shape) == (0, 2) and tuple(labels.shape) == (0,)
        x_t, _ = GM.sample_noisy(0, 0.5, generator=0, backend=backend)
        assert tuple(x_t.shape) == (0, 2)

    def test_numpy_int_count_and_string_dtype(self):
        a, _ = GM.sample(np.int64(4), generator=1)
        b, _ = GM.sample(4, generator=1, dtype="float32")
        assert a.shape == (4, 2) and b.dtype == np.float32
        np.testing.assert_array_equal(a.astype(np.float32), b)
        _finite(a, b)


# ----- 1d. x_t and alpha_bar_t of the evaluations ---------------------------------------------
XT_CASES = [
    ("list", [[1.0, 2.0]], TypeError, r"\bx_t\b"),
    ("tuple", ((1.0, 2.0),), TypeError, r"\bx_t\b"),
    ("None", None, TypeError, r"\bx_t\b"),
    ("float", 1.0, TypeError, r"\bx_t\b"),
    ("str", "x", TypeError, r"\bx_t\b"),
    ("int-array", np.ones((2, 2), dtype=np.int64), TypeError, r"\bx_t\b"),
    ("shape-(2,3)", np.ones((2, 3)), ValueError, r"\bx_t\b"),
    ("shape-(2,)", np.ones(2), ValueError, r"\bx_t\b"),
]


class TestOracleInputs:
    @pytest.mark.parametrize("method", ("x0_eps", "log_prob_class"))
    @pytest.mark.parametrize("name,x,exc,pattern", XT_CASES, ids=[c[0] for c in XT_CASES])
    def test_bad_x_t(self, method, name, x, exc, pattern):
        _raises(lambda: getattr(GM, method)(x, 0.5, 1), exc, pattern)

    @pytest.mark.parametrize("ab,exc", [(1.5, ValueError), (-0.1, ValueError),
                                        (float("nan"), ValueError), ("0.5", TypeError),
                                        (np.array([0.5, 0.5]), ValueError),
                                        (np.array([0.5, 2.0, 0.5]), ValueError)], ids=repr)
    def test_bad_alpha_bar(self, ab, exc):
        _raises(lambda: GM.eps(X, ab), exc, "alpha_bar_t")


# ----- 1e. low precision: intermediates in float32 --------------------------------------------
class TestOracleFloat16:
    @pytest.mark.parametrize("lib,dtype", [("numpy", "float16"), ("torch", "float16"),
                                           ("torch", "bfloat16")])
    @pytest.mark.parametrize("ab", [0.99, 0.999, 0.01])
    def test_far_points_stay_finite(self, lib, dtype, ab):
        x = np.array([[200.0, 200.0], [-300.0, 10.0], [0.0, -250.0]])
        xl = x.astype(dtype) if lib == "numpy" else torch.asarray(x).to(getattr(torch, dtype))
        for y in (None, 1):
            x0, eps = GM.x0_eps(xl, ab, y)
            assert x0.dtype == xl.dtype and eps.dtype == xl.dtype
            _finite(x0, eps, GM.score(xl, ab, y), GM.grad_log_prob_class(xl, ab, 2))

    @settings(max_examples=40, deadline=None)
    @given(x=st.lists(st.tuples(st.floats(-300, 300), st.floats(-300, 300)), min_size=1,
                      max_size=4),
           ab=st.floats(0.01, 0.999), y=st.sampled_from([None, 0, 1, 2]),
           lib=st.sampled_from(["numpy", "torch"]))
    def test_float16_finite_where_float64_fits(self, x, ab, y, lib):
        x16 = np.array(x, dtype=np.float16)
        ref = GM.x0_eps(x16.astype(np.float64), ab, y)
        if max(float(np.abs(r).max()) for r in ref) > F16_MAX / 4:
            return  # the exact result itself is too close to the float16 range
        got = GM.x0_eps(x16 if lib == "numpy" else torch.asarray(x16), ab, y)
        got = [np.asarray(get_backend(g).to_numpy(g), dtype=np.float64) for g in got]
        for g, r in zip(got, ref):
            assert np.all(np.isfinite(g)), (g, r)
            scale = max(1.0, float(np.abs(r).max()))
            assert np.abs(g - r).max() <= 0.05 * scale, (g, r)


# ----- 1f. demo_mixture ---------------------------------------------------------------------
DEMO = [
    ("num_classes-0", dict(num_classes=0), ValueError, "num_classes"),
    ("num_classes-negative", dict(num_classes=-2), ValueError, "num_classes"),
    ("num_classes-float", dict(num_classes=2.5), TypeError, "num_classes"),
    ("num_classes-bool", dict(num_classes=True), TypeError, "num_classes"),
    ("num_classes-str", dict(num_classes="3"), TypeError, "num_classes"),
    ("radius-nan", dict(radius=float("nan")), ValueError, "radius"),
    ("radius-inf", dict(radius=float("inf")), ValueError, "radius"),
    ("radius-negative", dict(radius=-1.0), ValueError, "radius"),
    ("radius-str", dict(radius="2"), TypeError, "radius"),
    ("spread-zero", dict(spread=0.0), ValueError, "spread"),
    ("spread-negative", dict(spread=-0.25), ValueError, "spread"),
    ("spread-nan", dict(spread=float("nan")), ValueError, "spread"),
    ("spread-huge", dict(spread=1e200), ValueError, "spread"),
    ("spread-tiny", dict(spread=1e-200), ValueError, "spread"),
    ("spread-None", dict(spread=None), TypeError, "spread"),
]


class TestDemoMixture:
    @pytest.mark.parametrize("call,exc,pattern", _rows(
        [(n, lambda kw=kw: demo_mixture(**kw), e, p) for n, kw, e, p in DEMO]))
    def test_refused(self, call, exc, pattern):
        _raises(call, exc, pattern)

    @pytest.mark.parametrize("kw", [dict(num_classes=np.int64(2)), dict(num_classes=1),
                                    dict(radius=0.0), dict(spread=1e-3), dict(radius=1e3)],
                             ids=str)
    def test_valid_edges_are_finite(self, kw):
        gm = demo_mixture(**kw)
        _finite(gm.x0_eps(X, 0.5), gm.log_prob_class(X, 0.5, 0))


# ----- 2. seeds and generators ----------------------------------------------------------------
BAD_GENERATORS = [
    ("str", lambda b: "abc", TypeError),
    ("negative", lambda b: -1, ValueError),
    ("float", lambda b: 1.5, TypeError),
    ("float-integral", lambda b: 3.0, TypeError),
    ("bool", lambda b: True, TypeError),
    ("list", lambda b: [1, 2], TypeError),
    ("0d-array", lambda b: np.array(3), TypeError),
    ("other-library", lambda b: (np.random.default_rng(0) if b == "torch"
                                 else torch.Generator().manual_seed(0)), TypeError),
]


class TestGenerators:
    @pytest.mark.parametrize("what", ("generator", "normal", "uniform", "sample"))
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("name,make,exc", BAD_GENERATORS, ids=[c[0] for c in BAD_GENERATORS])
    def test_refused(self, what, backend, name, make, exc):
        b, g = get_backend(backend), make(backend)
        call = {"generator": lambda: b.generator(g),
                "normal": lambda: b.normal((2,), dtype=b.xp.float64, generator=g),
                "uniform": lambda: b.uniform((2,), dtype=b.xp.float64, generator=g),
                "sample": lambda: GM.sample(2, generator=g, backend=backend)}[what]
        _raises(call, exc, r"\bgenerator\b.*(None|>= 0)")

    def test_torch_seed_above_its_range(self):
        b = get_backend("torch")
        _raises(lambda: b.generator(2**64), ValueError, r"\bgenerator\b")
        _finite(b.normal((3,), generator=2**64 - 1))

    def test_torch_generator_of_another_device(self):
        _raises(lambda: get_backend("torch").generator(torch.Generator(), "meta"), ValueError,
                r"\bgenerator\b.*device")

    @pytest.mark.parametrize("seed", [0, 7, np.int64(7), np.uint32(123), 2**63 + 5], ids=repr)
    def test_seeds_draw_what_the_library_draws(self, seed):
        """Bit for bit the draws of the library's own generator seeded the same way."""
        for backend in ("numpy", "array_api_strict"):
            b = get_backend(backend)
            z = b.to_numpy(b.normal((3, 2), dtype=b.xp.float64, generator=seed))
            u = b.to_numpy(b.uniform((4,), dtype=b.xp.float32, generator=seed))
            np.testing.assert_array_equal(z, np.random.default_rng(int(seed)).standard_normal((3, 2)))
            np.testing.assert_array_equal(u, np.random.default_rng(int(seed)).random(4).astype(np.float32))
        b = get_backend("torch")
        ref = torch.Generator().manual_seed(int(seed))
        np.testing.assert_array_equal(b.normal((3, 2), dtype=torch.float16, generator=seed).numpy(),
                                      torch.randn((3, 2), generator=ref).to(torch.float16).numpy())

    @pytest.mark.parametrize("backend", ("numpy", "array_api_strict"))
    def test_numpy_seed_objects_are_taken(self, backend):
        b = get_backend(backend)
        ref = np.random.default_rng(np.random.SeedSequence(5)).standard_normal(3)
        for seed in (np.random.SeedSequence(5), np.random.PCG64(np.random.SeedSequence(5))):
            np.testing.assert_array_equal(b.to_numpy(b.normal((3,), generator=seed)), ref)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_own_generator_continues_its_stream(self, backend):
        b = get_backend(backend)
        g = b.generator(3)
        assert b.generator(g) is g
        first, second = (b.to_numpy(b.normal((4,), generator=g)) for _ in range(2))
        assert not np.array_equal(first, second)
        _finite(b.normal((4,), generator=None))


# ----- draw arguments: shape, dtype, device ---------------------------------------------------
DRAW_ARGS = [
    ("shape-int", dict(shape=3), TypeError, "shape"),
    ("shape-negative", dict(shape=(-1,)), ValueError, "shape"),
    ("shape-float", dict(shape=(2.0,)), TypeError, "shape"),
    ("shape-bool", dict(shape=(True,)), TypeError, "shape"),
    ("dtype-int", dict(dtype="int64"), TypeError, "dtype"),
    ("dtype-junk", dict(dtype="nope"), TypeError, "dtype"),
    ("device-junk", dict(device="no-such-device"), ValueError, "device"),
]


class TestDrawArguments:
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("name,kw,exc,pattern", DRAW_ARGS, ids=[c[0] for c in DRAW_ARGS])
    def test_refused(self, backend, name, kw, exc, pattern):
        b = get_backend(backend)
        kw = dict(kw)
        if kw.get("dtype") == "int64":
            kw["dtype"] = b.xp.int64
        args = dict(dtype=b.xp.float32, generator=0) | kw
        shape = args.pop("shape", (2,))
        for draw in (b.normal, b.uniform):
            _raises(lambda: draw(shape, **args), exc, pattern)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_valid_edges(self, backend):
        b = get_backend(backend)
        assert tuple(b.normal((0, 3), generator=0).shape) == (0, 3)
        assert tuple(b.uniform([np.int64(2)], generator=0).shape) == (2,)
        _finite(b.normal((2,), dtype=None, generator=0))
