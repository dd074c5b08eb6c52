"""Tests written to kill the survivors of the mutation run of refdiff/oracle.py
(docs/mutation.md; python -m benchmarks.mutation --modules oracle).

Each test names the mutants it kills (by function and mutated line; numbers shift when the
source changes). Expectations never come from the function under test: they are hand-derived
values (the demo mixture's means on the circle), exact dyadic weights, or the caller's own
draws from the same seed, replayed here with NumPy's (or torch's) generator: the documented
stream of ``sample`` is one float64 uniform per draw (the component, by the inverse CDF of
π), then one float64 standard normal (n, d) block, and ``sample_noisy`` then draws ε.

Note: every mixture here is built inside a test. mutmut runs a mutant in a process where the
test modules are already imported, so a mixture built at import time (``GM = demo_mixture()``
in tests/test_oracle.py) never sees a mutated constructor; nor does the ``@_doc`` decorator,
applied at import, so ``_doc`` is tested by calling it.
"""

from __future__ import annotations

import inspect
import math
import textwrap
import warnings
from fractions import Fraction

import numpy as np
import pytest

from refdiff import oracle
from refdiff.oracle import GaussianMixture, demo_mixture

SQRT3 = math.sqrt(3.0)


def _strict_device1():
    xs = pytest.importorskip("array_api_strict")
    return xs, xs.Device("device1")


def _to_host(xs, a):
    return np.asarray(xs.asarray(a, device=xs.Device("CPU_DEVICE")))


# ----- construction: _reals, _means, _checked, full, diagonal, isotropic -----------------

def test_parameters_are_host_float64_whatever_the_input_dtype():
    """Kills _reals__mutmut_7/9 (asarray without dtype=float64): integer and float32 inputs
    must be stored as float64 (the class docstring: "host float64 parameters")."""
    gm = GaussianMixture.isotropic([1, 3], [[0, 1], [2, -1]], 2)
    for a in (gm.weights, gm.means, gm.eigvals, gm.eigvecs):
        assert a.dtype == np.float64
    gm = GaussianMixture.diagonal(np.array([1, 3], dtype=np.float32),
                                  np.array([[0.1, 1], [2, -1]], dtype=np.float32),
                                  np.array([[0.1, 2], [3, 4]], dtype=np.float32))
    for a in (gm.weights, gm.means, gm.eigvals):
        assert a.dtype == np.float64
    np.testing.assert_array_equal(gm.weights, [0.25, 0.75])
    np.testing.assert_array_equal(gm.means, np.float32([[0.1, 1], [2, -1]]).astype(np.float64))


def test_bool_inputs_refused():
    """Kills _reals__mutmut_2 (dtype kind of asarray(None), 'O') and _reals__mutmut_5
    (`or True`): both would convert booleans to 0.0/1.0 instead of refusing them."""
    with pytest.raises(TypeError, match="weights must hold real numbers"):
        GaussianMixture.isotropic([True, True], [[0.0], [1.0]], 1.0)
    with pytest.raises(TypeError, match="means must hold real numbers"):
        GaussianMixture.isotropic([1.0], [[True]], 1.0)


def test_exact_fractions_accepted():
    """Kills _reals__mutmut_12 ("iufo": the object kind 'O' dropped): an object array of
    Fractions holds real numbers and is converted. 1/4 and 3/4 are exact in float64."""
    gm = GaussianMixture.isotropic([Fraction(1, 4), Fraction(3, 4)],
                                   [[Fraction(1, 2)], [Fraction(-3, 2)]], Fraction(1, 8))
    np.testing.assert_array_equal(gm.weights, [0.25, 0.75])
    np.testing.assert_array_equal(gm.means, [[0.5], [-1.5]])
    np.testing.assert_array_equal(gm.eigvals, [[0.125], [0.125]])


def test_ragged_input_refused_with_type_error():
    """Kills _reals__mutmut_14 (`out = ""` where asarray raised): a ragged list cannot
    become an array and must be reported as not holding real numbers."""
    with pytest.raises(TypeError, match="means must hold real numbers"):
        GaussianMixture.isotropic([1.0, 1.0], [[0.0, 1.0], [2.0]], 1.0)


@pytest.mark.parametrize("means", [[0.0, 1.0], np.zeros((0, 2))], ids=["1-D", "K=0"])
def test_means_must_be_k_by_d(means):
    """Kills _means__mutmut_10 (`or` -> `and`): a 1-D means or an empty (0, d) one must be
    refused by the means check itself."""
    with pytest.raises(ValueError, match=r"means must be \(K, d\) with K, d >= 1"):
        GaussianMixture.isotropic([1.0], means, 1.0)


def test_weights_normalised_exactly():
    """Kills _checked__mutmut_64 (π = w·Σw): [1, 3] normalise to the exact [1/4, 3/4]."""
    gm = GaussianMixture.isotropic([1.0, 3.0], [[0.0], [1.0]], 1.0)
    np.testing.assert_array_equal(gm.weights, [0.25, 0.75])


def test_zero_weight_refused():
    """Kills _checked__mutmut_19 (w >= 0): a weight of 0 is not positive."""
    with pytest.raises(ValueError, match="weights must be 2 finite positive numbers"):
        GaussianMixture.isotropic([1.0, 0.0], [[0.0], [1.0]], 1.0)


def test_weights_whose_sum_overflows():
    """Kills _checked__mutmut_48 (simplefilter("ignore", None): the overflow warning then
    raises TypeError in the filter match), _55 (the rescaling branch inverted), _58..62 (the
    rescaling w/max(w), Σ broken). Weights 1.5e308, 1.5e308, 0.75e308 sum past the float64
    maximum; divided by their largest first they are 1, 1, 1/2: π = (2/5, 2/5, 1/5), each a
    single correctly rounded division. No warning escapes."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gm = GaussianMixture.isotropic([1.5e308, 1.5e308, 0.75e308], [[0.0], [1.0], [2.0]], 1.0)
    np.testing.assert_array_equal(gm.weights, [0.4, 0.4, 0.2])


def test_weight_ratio_that_underflows_refused():
    """Kills _checked__mutmut_68 (π >= 0): 1e-300/1e300 underflows to 0 after normalisation."""
    with pytest.raises(ValueError, match="positive after normalisation"):
        GaussianMixture.isotropic([1e300, 1e-300], [[0.0], [1.0]], 1.0)


def test_labels_stored_as_int64():
    """Kills _checked__mutmut_74 (labels None) and _81 (astype(y, None): float64), and
    full__mutmut_40 (the caller's labels dropped for the default 0 … K − 1)."""
    gm = GaussianMixture.isotropic([1.0, 1.0], [[0.0], [1.0]], 1.0)
    assert gm.labels.dtype == np.int64
    np.testing.assert_array_equal(gm.labels, [0, 1])
    gm = GaussianMixture.isotropic([1.0, 1.0], [[0.0], [1.0]], 1.0, np.array([2, 0], np.int32))
    assert gm.labels.dtype == np.int64
    np.testing.assert_array_equal(gm.labels, [2, 0])
    gm = GaussianMixture.full([1.0, 1.0], [[0.0], [1.0]], [[[1.0]], [[2.0]]], [1, 1])
    np.testing.assert_array_equal(gm.labels, [1, 1])


@pytest.mark.parametrize("build", ["diagonal", "isotropic"])
def test_parameters_are_writable_copies_for_torch(build):
    """Kills diagonal__mutmut_48/50/51 and isotropic__mutmut_48/50/51 (asarray of a
    broadcast without copy=True): the stored eigvecs (diagonal) or eigvals (isotropic) would
    be read-only broadcast views, which torch.asarray warns about ("The given NumPy array is
    not writable") at every evaluation on torch input."""
    torch = pytest.importorskip("torch")
    if build == "diagonal":
        gm = GaussianMixture.diagonal([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 2.0], [3.0, 4.0]])
    else:
        gm = GaussianMixture.isotropic([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = gm.eps(torch.zeros((1, 2), dtype=torch.float64), 0.5)
    assert isinstance(out, torch.Tensor)


@pytest.mark.parametrize("var", [np.ones((2, 2)), np.ones((2, 1)), [1.0, 1.0, 1.0]],
                         ids=["(K,d)", "(K,1)", "(3,)"])
def test_isotropic_variance_shape_checked(var):
    """Kills isotropic__mutmut_16 (`or` -> `and`), _18 (ndim > 2) and _21 (ndim == 2 in the
    length check): a 2-D variance, or a 1-D one of the wrong length, must be refused by the
    variance check (not by a broadcast failure, nor accepted as (K, 1))."""
    with pytest.raises(ValueError, match=r"variances must be a float or of shape \(K,\) = \(2,\)"):
        GaussianMixture.isotropic([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], var)


def test_isotropic_with_more_dimensions_than_components():
    """Kills isotropic__mutmut_24 (length compared with d instead of K): K = 2, d = 3, one
    variance per component, Σ_k = σ_k² I."""
    gm = GaussianMixture.isotropic([1.0, 1.0], np.zeros((2, 3)), [0.5, 2.0])
    np.testing.assert_array_equal(gm.eigvals, [[0.5] * 3, [2.0] * 3])
    np.testing.assert_array_equal(gm.eigvecs, [np.eye(3)] * 2)


# ----- demo_mixture ----------------------------------------------------------------------

def test_demo_mixture_defaults_by_hand():
    """Kills demo_mixture__mutmut_1..3 (the defaults 3, 2.0, 0.25), the broken argument
    checks that fail on every call (_4, _6..10, _14, _16..19, _24, _26, _27, _29, _30, _35,
    _37, _41, _42), and the geometry (_38, _39: the variance, _45..61: K, the angles, the
    means, the labels, _62..70: the arguments of isotropic). By hand: 6 components at angles
    kπ/3 on the circle of radius 2, variance 0.25² = 1/16, weights 1/6, labels k mod 3."""
    gm = demo_mixture()
    want = [[2, 0], [1, SQRT3], [-1, SQRT3], [-2, 0], [-1, -SQRT3], [1, -SQRT3]]
    np.testing.assert_allclose(gm.means, want, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(gm.eigvals, np.full((6, 2), 0.0625))
    np.testing.assert_array_equal(gm.eigvecs, [np.eye(2)] * 6)
    np.testing.assert_array_equal(gm.weights, [1 / 6] * 6)
    np.testing.assert_array_equal(gm.labels, [0, 1, 2, 0, 1, 2])
    assert gm.labels.dtype == np.int64 and gm.num_classes == 3


def test_demo_mixture_arguments_by_hand():
    """Kills demo_mixture__mutmut_13 (num_classes >= 2), _23 (radius >= 1) and _20 (the
    radius range dropped, see the negative radius below). One class: 2 components at 0 and
    π on the circle, both labelled 0; radius 0: every mean at the origin; variance 0.5²."""
    gm = demo_mixture(1, radius=0.5, spread=0.5)
    np.testing.assert_allclose(gm.means, [[0.5, 0.0], [-0.5, 0.0]], rtol=0, atol=1e-16)
    np.testing.assert_array_equal(gm.labels, [0, 0])
    np.testing.assert_array_equal(gm.eigvals, np.full((2, 2), 0.25))
    gm = demo_mixture(np.int64(2), radius=0.0)
    np.testing.assert_array_equal(gm.means, np.zeros((4, 2)))
    np.testing.assert_array_equal(gm.labels, [0, 1, 0, 1])


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"num_classes": 2.0}, TypeError, "num_classes must be an int, got float 2.0"),
    ({"num_classes": True}, TypeError, "num_classes must be an int, got bool True"),
    ({"num_classes": 0}, ValueError, "num_classes must be an int >= 1, got 0"),
    ({"radius": -1.0}, ValueError, r"radius must lie in \[0, inf\]"),
    ({"spread": 0.0}, ValueError, r"spread must lie in \(0, inf\]"),
    ({"spread": -0.25}, ValueError, r"spread must lie in \(0, inf\]"),
    ({"spread": 1e-200}, ValueError, "spread must have a finite, non-zero square"),
    ({"spread": 1e200}, ValueError, "spread must have a finite, non-zero square"),
])
def test_demo_mixture_refusals(kwargs, exc, match):
    """Which check refuses. Kills _int_arg__mutmut_1 (`or` -> `and`: a float or bool count
    let through), demo_mixture__mutmut_20 (radius range dropped), _28, _32, _36 (spread's
    open bound lost: 0 caught later by the square check instead), _31 (spread's lower bound
    dropped: −0.25 would mean the same mixture as 0.25), _40 (None for the overflowed
    square: TypeError), _43 (0 <= variance: 1e-200² underflows to 0, then refused as not
    positive definite) and _44 (variance <= inf: 1e200² overflows, then refused by
    isotropic's finiteness check)."""
    with pytest.raises(exc, match=match):
        demo_mixture(**kwargs)


# ----- _got, _label_error: the messages that name what was received ------------------------

@pytest.mark.parametrize("n,got", [
    (2.5, "float 2.5"),
    (None, "NoneType None"),
    ("a" * 78, "str '" + "a" * 78 + "'"),                  # repr of 80 characters: kept
    ("a" * 79, "str '" + "a" * 76 + "..."),                # 81: cut to 77 + '...'
])
def test_got_describes_the_argument(n, got):
    """Kills _got__mutmut_1..10: the type name, then the repr, cut to 77 characters and
    '...' when it is longer than 80 (hand-built here)."""
    gm = GaussianMixture.isotropic([1.0], [[0.0]], 1.0)
    with pytest.raises(TypeError) as info:
        gm.sample(n)
    assert str(info.value) == f"n must be an int, got {got}"


def test_label_error_lists_the_labels_present():
    """Kills _label_error__mutmut_1..10: labels 0 and 2 are carried, 1 is in range but
    carried by no component (an int y, and an array y)."""
    gm = GaussianMixture.isotropic([1.0, 1.0], [[0.0], [1.0]], 1.0, [0, 2])
    head = "y must be a label carried by a component of the mixture (0, 2), got "
    with pytest.raises(ValueError) as info:
        gm.eps(np.zeros((2, 1)), 0.5, 1)
    assert str(info.value) == head + "1"
    with pytest.raises(ValueError) as info:
        gm.eps(np.zeros((2, 1)), 0.5, np.array([0, 1]))
    assert str(info.value) == head + "values outside them"
    with pytest.raises(ValueError) as info:
        gm.sample(3, y=1)
    assert str(info.value) == head + "1"


# ----- sample: the caller's stream, replayed ------------------------------------------------

# weights 1 : 2 : 1 (exact quarters), labels 0, 1, 0, per-axis variances, U = I
W, MU = [1.0, 2.0, 1.0], np.array([[0.0, 1.0], [3.0, -2.0], [-4.0, 0.5]])
VAR = np.array([[0.25, 4.0], [1.0, 0.5], [2.0, 0.125]])
LABELS = np.array([0, 1, 0])


def _mixture():
    return GaussianMixture.diagonal(W, MU, VAR, LABELS)


def _replay(u, z, thresholds):
    """Component by the inverse CDF (k = number of thresholds <= u, a right-sided search)
    and x_0 = μ_k + √λ_k·z (Σ_k diagonal)."""
    k = np.searchsorted(thresholds, u, side="right")
    return MU[k] + np.sqrt(VAR[k]) * z, LABELS[k]


def test_sample_replays_the_seed():
    """Kills sample__mutmut_31, 32, 34 (the caller's seed not used), 64, 68, 86, 90 (draws
    from a fresh unseeded generator) and 107 (x_0 = μ − U√λ z: the same law, other draws).
    π = (1/4, 1/2, 1/4): the inverse-CDF thresholds are 1/4 and 3/4."""
    rng = np.random.default_rng(11)
    u, z = rng.random(50), rng.standard_normal((50, 2))
    want_x, want_y = _replay(u, z, [0.25, 0.75])
    x, y = _mixture().sample(50, generator=11)
    np.testing.assert_allclose(x, want_x, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(y, want_y)
    assert x.dtype == np.float64 and y.dtype == np.int64
    assert set(want_y) == {0, 1}  # both labels drawn, every component hit:
    assert set(np.searchsorted([0.25, 0.75], u, side="right")) == {0, 1, 2}


def test_sample_of_one_class_replays_the_seed():
    """Kills sample__mutmut_15, 17 (y ignored), 19 (_label(None)), 42..57 (the class
    weights: where(labels == y, w, 0) / Σ broken: None, !=, a fill of 1, w·Σw). Class 0 is
    components 0 and 2 with weights 1/4, 1/4: conditional π = (1/2, 0, 1/2), thresholds
    1/2, 1/2 (component 1 is never drawn)."""
    rng = np.random.default_rng(12)
    u, z = rng.random(40), rng.standard_normal((40, 2))
    want_x, want_y = _replay(u, z, [0.5, 0.5])
    x, y = _mixture().sample(40, generator=12, y=0)
    np.testing.assert_allclose(x, want_x, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(y, np.zeros(40))
    assert set(np.searchsorted([0.5, 0.5], u, side="right")) == {0, 2}


def test_sample_component_boundary_is_half_open():
    """Kills sample__mutmut_78 (u > cdf for u >= cdf): component k is drawn for u in
    [cdf_{k−1}, cdf_k), so that P(k = 0) = P(u < π_0) = π_0 exactly for u on NumPy's grid
    of multiples of 2⁻⁵³. With π_0 equal to the seed's first uniform u_0 (1 − u_0 is exact,
    so the weights sum to exactly 1), u_0 = cdf_0 draws component 1."""
    u0 = float(np.random.default_rng(5).random())
    assert u0 + (1.0 - u0) == 1.0 and (u0 * 2**53).is_integer()
    gm = GaussianMixture.isotropic([u0, 1.0 - u0], [[0.0], [10.0]], 1.0)
    assert float(gm.weights[0]) == u0
    _, y = gm.sample(1, generator=5)
    np.testing.assert_array_equal(y, [1])


def test_sample_torch_draws_in_float64():
    """Kills sample__mutmut_62, 66 (the uniforms in the backend's default dtype, float32 for
    torch) and 84, 88 (the normals likewise): torch's float32 and float64 streams differ, so
    the replay of the seed in float64 pins both."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(13)
    u = torch.rand((30,), generator=gen, dtype=torch.float64).numpy()
    z = torch.randn((30, 2), generator=gen, dtype=torch.float64).numpy()
    want_x, want_y = _replay(u, z, [0.25, 0.75])
    x, y = _mixture().sample(30, generator=13, backend="torch")
    assert x.dtype == torch.float64 and y.dtype == torch.int64
    np.testing.assert_allclose(x.numpy(), want_x, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(y.numpy(), want_y)


def test_sample_dtype():
    """Kills sample__mutmut_21 (`is not None`: a requested dtype replaced by float64), 29, 30
    (dtype None after the check) and 141 (astype(x0, None)): x_0 is returned in the
    requested float32, the float64 draws rounded once."""
    rng = np.random.default_rng(14)
    u, z = rng.random(20), rng.standard_normal((20, 2))
    want_x, _ = _replay(u, z, [0.25, 0.75])
    x, _ = _mixture().sample(20, generator=14, dtype=np.float32)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, want_x.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.int32, "int64"])
def test_sample_integer_dtype_refused_by_the_backend(dtype):
    """Kills sample__mutmut_23, 27, 28 (the dtype check skipped: x_0 silently cast to
    integers) and 24..26 (hasattr called wrongly: a TypeError about hasattr, not the dtype)."""
    with pytest.raises(TypeError, match="dtype must be a real floating NumPy dtype"):
        _mixture().sample(3, dtype=dtype)


def test_sample_bad_device_refused_by_the_generator():
    """Kills sample__mutmut_33, 35 (the generator made without the device): the backend's
    own device message, before anything is converted or drawn."""
    with pytest.raises(ValueError) as info:
        _mixture().sample(3, generator=0, device="gpu0")
    assert str(info.value) == "device must be None or 'cpu' for NumPy, got 'gpu0'"


def test_sample_on_a_second_device():
    """Kills sample__mutmut_22 (dtype None: astype(x0, None) is refused by array-api-strict),
    38, 40, 50, 52, 63, 67, 85, 89, 93, 95, 136, 138 (an array made on the default device
    instead of the requested one: array-api-strict refuses to mix devices, or the result
    lands on the wrong device). Values: the NumPy replay of the seed (the strict backend
    draws with NumPy's generator)."""
    xs, dev = _strict_device1()
    rng = np.random.default_rng(15)
    u, z = rng.random(12), rng.standard_normal((12, 2))
    want_x, want_y = _replay(u, z, [0.25, 0.75])
    x, y = _mixture().sample(12, generator=15, backend="array_api_strict", device=dev)
    assert x.device == dev and y.device == dev and x.dtype == xs.float64
    np.testing.assert_allclose(_to_host(xs, x), want_x, rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(_to_host(xs, y), want_y)
    want_x, _ = _replay(u, z, [0.5, 0.5])
    x, y = _mixture().sample(12, generator=15, backend="array_api_strict", device=dev, y=0)
    assert x.device == dev and y.device == dev
    np.testing.assert_allclose(_to_host(xs, x), want_x, rtol=1e-15, atol=1e-15)


def test_sample_zero_draws():
    """Kills _int_arg__mutmut_3 (n <= lo refused: n = 0), sample__mutmut_12 and
    sample_noisy__mutmut_12 (n >= 1): n = 0 gives empty (0, d) and (0,) arrays."""
    gm = _mixture()
    for x, y in (gm.sample(0, generator=0), gm.sample_noisy(0, 0.5, generator=0)):
        assert x.shape == (0, 2) and y.shape == (0,) and y.dtype == np.int64


# ----- sample_noisy ---------------------------------------------------------------------------

def _replay_noisy(seed, n, ab):
    rng = np.random.default_rng(seed)
    u, z = rng.random(n), rng.standard_normal((n, 2))
    x0, y = _replay(u, z, [0.25, 0.75])
    eps = rng.standard_normal((n, 2))
    ab = np.asarray(ab, dtype=np.float64).reshape(-1, 1)
    return np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps, y                  # DDPM Eq. 4


def test_sample_noisy_replays_the_seed():
    """Kills sample_noisy__mutmut_33, 34, 36 (the caller's seed not used), 40, 45 (x_0 from
    an unseeded generator), 53, 57 (ε from an unseeded generator), and _14 (is_array(None):
    a (n,) array ᾱ refused as not a float). x_t = √ᾱ·x_0 + √(1−ᾱ)·ε, x_0 then ε from one
    stream."""
    want_x, want_y = _replay_noisy(21, 25, 0.36)
    x, y = _mixture().sample_noisy(25, 0.36, generator=21)
    np.testing.assert_allclose(x, want_x, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(y, want_y)
    ab = np.linspace(0.0, 1.0, 25)
    want_x, _ = _replay_noisy(22, 25, ab)
    x, _ = _mixture().sample_noisy(25, ab, generator=22)
    np.testing.assert_allclose(x, want_x, rtol=1e-14, atol=1e-14)


def test_sample_noisy_dtype():
    """Kills sample_noisy__mutmut_42, 47 (dtype not passed to sample: float64 x_0) and
    51, 55 (ε in the default dtype, float64, beside a float32 x_0): x_t in float32."""
    x, _ = _mixture().sample_noisy(6, 0.5, generator=23, dtype=np.float32)
    assert x.dtype == np.float32
    want, _ = _replay_noisy(23, 6, 0.5)
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-6)


def test_sample_noisy_on_a_second_device():
    """Kills sample_noisy__mutmut_43, 48 (x_0 on the default device), 46 (x_0 from the
    default backend) and 52, 56 (ε on the default device): array-api-strict refuses to mix
    devices in q_sample."""
    xs, dev = _strict_device1()
    x, y = _mixture().sample_noisy(8, 0.36, generator=24, backend="array_api_strict", device=dev)
    assert x.device == dev and y.device == dev
    want_x, want_y = _replay_noisy(24, 8, 0.36)
    np.testing.assert_allclose(_to_host(xs, x), want_x, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(_to_host(xs, y), want_y)


@pytest.mark.parametrize("ab", [-0.5, 1.5])
def test_sample_noisy_checks_a_float_level_before_drawing(ab):
    """Kills sample_noisy__mutmut_13 (the check skipped for floats), 22 (lo dropped), 23
    (hi dropped) and 28 (hi = 2): a level outside [0, 1] must be refused before anything
    is drawn, so the caller's generator has not advanced (the docstring's promise)."""
    gen = np.random.default_rng(25)
    with pytest.raises(ValueError, match=r"alpha_bar_t must lie in \[0, 1\]"):
        _mixture().sample_noisy(4, ab, generator=gen)
    assert gen.random() == np.random.default_rng(25).random()


def test_sample_noisy_level_type_message():
    """Kills sample_noisy__mutmut_19, 24, 29, 30 (the `kind` of the type message): a string
    level is refused as not "a float or an array"."""
    with pytest.raises(TypeError) as info:
        _mixture().sample_noisy(4, "0.5", generator=0)
    assert str(info.value) == "alpha_bar_t must be a float or an array, got str '0.5'"


# ----- _doc, _indent: the generated numpydoc sections ------------------------------------------

def _sections(y_text, returns):
    """The expected docstring tail, built here with textwrap (not with _indent): three
    numpydoc sections, each indented 8 spaces, then a closing line of 8 spaces."""
    out = ""
    for title, body in (("Parameters", oracle._EVAL_PARAMS + "\n" + y_text),
                        ("Returns", returns), ("Raises", oracle._EVAL_RAISES)):
        out += "\n\n" + textwrap.indent(f"{title}\n{'-' * len(title)}\n{body}", " " * 8)
    return out + "\n        "


def test_doc_fills_the_numpydoc_sections():
    """Kills _doc__mutmut_1..48 and _indent__mutmut_1..6. The ``y`` text for an optional
    ``y`` (", optional" and the ``None`` line) and a required one (neither), written out
    from _Y_PARAM by hand; the summary's trailing blank stripped (rstrip, not lstrip)."""
    returns = """
        eps : array, shape (B, d)
            The result."""

    def f():
        pass

    f.__doc__ = "Summary line.   \n        "  # trailing blanks, as a docstring ends

    def g():
        """Summary line."""

    optional = (oracle._Y_PARAM.replace("{optional}", ", optional")
                .replace("{none}", "\n    ``None`` (default) for the whole mixture."))
    required = oracle._Y_PARAM.replace("{optional}", "").replace("{none}", "")
    got = oracle._doc(returns)(f)
    assert got is f
    tidy = "eps : array, shape (B, d)\n    The result."
    assert f.__doc__ == "Summary line." + _sections(optional, tidy)
    oracle._doc(returns, y="required")(g)
    assert g.__doc__ == "Summary line." + _sections(required, tidy)
    assert ", optional" not in g.__doc__ and "``None``" not in g.__doc__
    assert inspect.cleandoc(returns) == tidy


# ----- evaluation: _inputs, _back, _params, _components, _label, _mask ------------------------
# One Gaussian N(μ, σ² I) noised: x_t ~ N(√ᾱ μ, c I), c = ᾱσ² + 1 − ᾱ, so (SDE App. B, Tweedie)
# ε̂ = √(1−ᾱ)(x_t − √ᾱ μ)/c and log p(x_t) = −½(‖x_t − √ᾱ μ‖²/c + d log c + d log 2π).

def _one_gaussian_eps(x, ab, mu, var):
    ab = np.asarray(ab, dtype=np.float64).reshape(-1, 1)
    return np.sqrt(1 - ab) * (x - np.sqrt(ab) * np.asarray(mu)) / (ab * var + 1 - ab)


def test_log_prob_normalising_constant_by_hand():
    """Kills _components__mutmut_40, 52, 54, 55 (the d·log 2π term: −, d/log 2π, log(2/π),
    log 3π), which cancels in every ratio and only log_prob sees. N(0, I) in d = 2 stays
    N(0, I) at every ᾱ (c = 1): log p(0) = −log 2π; at x = (1, 1): −1 − log 2π."""
    gm = GaussianMixture.isotropic([1.0], [[0.0, 0.0]], 1.0)
    np.testing.assert_allclose(gm.log_prob(np.array([[0.0, 0.0], [1.0, 1.0]]), 0.3),
                               [-math.log(2 * math.pi), -1 - math.log(2 * math.pi)], rtol=1e-15)


def test_per_sample_levels_on_torch():
    """Kills _components__mutmut_14 (reshape(ab, (-2, 1, 1)): NumPy reads −2 as the unknown
    size, torch refuses it). ᾱ of shape (B,) on torch, checked row by row against the
    closed form of one Gaussian."""
    torch = pytest.importorskip("torch")
    mu, var = [1.0, -1.0], 0.5
    gm = GaussianMixture.isotropic([1.0], [mu], var)
    x = np.array([[0.3, 0.2], [-1.0, 2.0], [0.5, -0.5]])
    ab = np.array([0.2, 0.5, 0.9])
    got = gm.eps(torch.asarray(x), torch.asarray(ab))
    np.testing.assert_allclose(got.numpy(), _one_gaussian_eps(x, ab, mu, var), rtol=1e-14)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_float16_is_evaluated_in_float32(lib):
    """Kills _inputs__mutmut_30 (no upcast), 32..35 (the upcast broken; torch's astype(x,
    None) is a no-op, so float16 is kept) and _back__mutmut_4..9 (the result not rounded
    back to float16, or the cast broken). ‖x‖² = 9·10⁴ overflows float16, but ε̂ = √½·300 of
    N(0, I) fits it: the documented contract is a finite float16 result."""
    gm = GaussianMixture.isotropic([1.0], [[0.0, 0.0]], 1.0)
    x = np.array([[300.0, 0.0], [0.0, -300.0]], dtype=np.float16)
    want = (math.sqrt(0.5) * x.astype(np.float64)).astype(np.float16)
    if lib == "torch":
        torch = pytest.importorskip("torch")
        x0, eps = gm.x0_eps(torch.asarray(x), 0.5)
        assert x0.dtype == torch.float16 and eps.dtype == torch.float16
        x0, eps = x0.numpy(), eps.numpy()
    else:
        x0, eps = gm.x0_eps(x, 0.5)
        assert x0.dtype == np.float16 and eps.dtype == np.float16
    np.testing.assert_allclose(eps, want, rtol=1e-3)
    np.testing.assert_allclose(x0, want, rtol=1e-3)   # x̂_0 = √ᾱ·x·σ²/c = √½·x as well


def test_float32_is_evaluated_in_float32():
    """Kills _params__mutmut_4, 7 (the parameters left in float64: a float32 x_t then computes
    in float64). The class Notes document the float32 limit: the squared distance must fit
    float32 (below ~3e38), beyond it the results are NaN. At ‖x‖ = 1e20 (1e40 squared) a
    float32 evaluation gives NaN where a float64 one would give a finite 0.707e20."""
    gm = GaussianMixture.isotropic([1.0], [[0.0, 0.0]], 1.0)
    x = np.array([[1e20, 0.0]], dtype=np.float32)
    with np.errstate(all="ignore"):
        eps = gm.eps(x, 0.5)
    assert eps.dtype == np.float32 and np.all(np.isnan(eps))
    ok = gm.eps(np.array([[1e3, 0.0]], dtype=np.float32), 0.5)
    np.testing.assert_allclose(ok, [[math.sqrt(0.5) * 1e3, 0.0]], rtol=1e-6)


def test_evaluation_on_a_second_device():
    """Kills the mutants that build the parameters (_params__mutmut_1, 5, 8) or the labels of
    the mask (_mask__mutmut_4, 6) on the default device: array-api-strict refuses to mix
    devices. Two equal components (labels 0, 1): every class and the whole mixture have the
    ε̂ of the one Gaussian."""
    xs, dev = _strict_device1()
    mu, var = [0.5, -1.0], 2.0
    gm = GaussianMixture.isotropic([1.0, 3.0], [mu, mu], var, [0, 1])
    x = np.array([[0.3, 0.2], [-1.0, 2.0]])
    want = _one_gaussian_eps(x, 0.4, mu, var)
    for y in (None, 1, xs.asarray([1, 0], device=dev)):
        got = gm.eps(xs.asarray(x, device=dev), 0.4, y)
        assert got.device == dev
        np.testing.assert_allclose(_to_host(xs, got), want, rtol=1e-14)


def test_class_label_forms():
    """Kills _mask__mutmut_8 (`or` -> `and`: a NumPy int y sent down the array path, refused
    as not (B,)) and _mask__mutmut_29 (astype(y, None): array-api-strict has no None dtype,
    and an unsigned y must still compare with the int64 labels). Equal components, so every
    class has the ε̂ of the one Gaussian."""
    mu, var = [0.5, -1.0], 2.0
    gm = GaussianMixture.isotropic([1.0, 3.0], [mu, mu], var, [0, 1])
    x = np.array([[0.3, 0.2], [-1.0, 2.0]])
    want = _one_gaussian_eps(x, 0.4, mu, var)
    np.testing.assert_allclose(gm.eps(x, 0.4, np.int64(1)), want, rtol=1e-14)
    np.testing.assert_allclose(gm.eps(x, 0.4, np.array([1, 0], dtype=np.uint8)), want, rtol=1e-14)
    xs = pytest.importorskip("array_api_strict")
    got = gm.eps(xs.asarray(x), 0.4, xs.asarray([1, 0], dtype=xs.uint64))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-14)


@pytest.mark.parametrize("y,exc,match", [
    (1.0, TypeError, "y must be None, an int label or an integer array"),
    (True, TypeError, "y must be None, an int label or an integer array"),
    (3, ValueError, r"y must be a label in 0\.\.2, got 3"),
])
def test_label_refusals(y, exc, match):
    """Kills _label__mutmut_1 (`or` -> `and`: a float or bool label let through) and
    _label__mutmut_8 (y <= num_classes: y = 3 for labels 0..2 then refused by the later
    "carried by a component" check instead of the range check)."""
    gm = GaussianMixture.isotropic([1.0, 1.0, 1.0], [[0.0], [1.0], [2.0]], 1.0)
    with pytest.raises(exc, match=match):
        gm.eps(np.zeros((2, 1)), 0.5, y)


def test_label_array_from_another_library_refused():
    """Kills _mask__mutmut_13..16 (an argument dropped from the namespace check): a torch y
    beside a NumPy x_t is refused with both named."""
    torch = pytest.importorskip("torch")
    gm = GaussianMixture.isotropic([1.0, 1.0], [[0.0], [1.0]], 1.0)
    with pytest.raises(TypeError) as info:
        gm.eps(np.zeros((2, 1)), 0.5, torch.zeros(2, dtype=torch.int64))
    assert str(info.value).startswith("x_t is a numpy.ndarray but y is a torch.Tensor")
