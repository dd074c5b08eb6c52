"""Imagen's dynamic thresholding (refdiff.thresholding) and the sort-based quantile under it.

Tiers: hand-derived values; the quantile against numpy.quantile (bit for bit) and
torch.quantile (a derived bound); dynamic_threshold against diffusers' _threshold_sample;
every backend row of tests/conftest.py against NumPy float64; invariants; errors.
"""

from __future__ import annotations

import ast
import dataclasses
import doctest
import inspect
import math
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdiff.thresholding as T
from refdiff._xp import namespace
from refdiff.testing import assert_close
from refdiff.testing.strategies import flush_tiny
from refdiff.testing.tolerance import from_numpy, to_numpy
from refdiff.thresholding import DynamicThreshold, _quantile_last_axis, dynamic_threshold

U32 = 2.0**-24  # unit roundoff of float32

# ----- strategies -------------------------------------------------------------------------

SIGNED = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False, allow_subnormal=False,
                   width=64)
TIES = st.sampled_from([0.0, 0.5, -0.5, 1.0, 2.0, -2.0])  # few distinct values: many ties
LEVELS = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.9, 0.995]), st.floats(0.0, 1.0))
RATIOS = st.one_of(st.sampled_from([0.995, 0.9, 0.5, 1.0]), st.floats(0.01, 1.0))
MAX_VALUES = st.sampled_from([1.0, 1.5, 2.0, 3.0, math.inf])


@st.composite
def rows(draw, max_n=40):
    """(B, N) float64 values, N ≥ 1 (N = 1 often), sometimes full of ties."""
    B = draw(st.integers(1, 3))
    N = draw(st.one_of(st.just(1), st.integers(1, max_n)))
    elements = draw(st.sampled_from([SIGNED, TIES]))
    return flush_tiny(draw(hnp.arrays(np.float64, (B, N), elements=elements)))


@st.composite
def samples(draw, min_dims=1, max_dims=4, spread=(0.25, 1.0, 4.0)):
    """(B, ...) float64 x̂_0 whose quantile is below 1, between 1 and s_max, or above it."""
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1,
                                  max_side=5))
    x = draw(hnp.arrays(np.float64, shape, elements=SIGNED))
    return flush_tiny(x * draw(st.sampled_from(spread)))


# ----- helpers ----------------------------------------------------------------------------

def _np_xp():
    return namespace(a=np.ones(1))


def _torch_rank_bound(values: np.ndarray, q: float) -> np.ndarray:
    """Per row, a bound on |torch.quantile − exact type-7 quantile| in float32.

    torch makes q a float32 tensor and forms the rank r = q·(N − 1) in float32:
    |r − h| ≤ (N − 1)·|fl(q) − q| + u·r ≤ 2u·q·(N − 1)·(1 + 2u), h the exact position. The
    interpolant is piecewise linear in the position, so the value moves by at most |r − h|
    times the largest gap between order statistics next to h (|r − h| < 1 reaches at most
    one interval further each way). Add the roundings of both lerps (ours: the weight, the
    product, the sum; torch's: one FMA), ≤ 3 ulp ≤ 6u·max|a| near h.
    """
    srt = np.sort(values, axis=-1)
    n = srt.shape[-1]
    if n == 1:
        return 6 * U32 * np.abs(srt[:, 0])
    lo = math.floor(q * (n - 1))
    idx = [i for i in (lo - 1, lo, lo + 1) if 0 <= i < n - 1]
    gap = np.diff(srt, axis=-1)[:, idx].max(axis=-1)
    near = np.abs(srt[:, max(lo - 1, 0): min(lo + 3, n)]).max(axis=-1)
    return 2 * U32 * q * (n - 1) * (1 + 4 * U32) * gap + 6 * U32 * near


# ----- hand-derived values ----------------------------------------------------------------

def test_hand_values():
    x = np.array([[-3.0, 0.5, 2.0, 1.0]])
    # |x| sorted = [0.5, 1, 2, 3]; ratio 0.5: h = 0.5·3 = 1.5, lo = 1, f = 0.5 (the f ≥ 1/2
    # branch): Q = 2 − 0.5·(2 − 1) = 1.5. s = clip(1.5, 1, 2) = 1.5;
    # clip(x, −1.5, 1.5)/1.5 = [−1, 1/3, 1, 2/3].
    out = dynamic_threshold(x, ratio=0.5, max_value=2.0)
    np.testing.assert_array_equal(out, [[-1.0, 0.5 / 1.5, 1.0, 1.0 / 1.5]])
    # ratio 0.995: h = 2.985, lo = 2, f = 0.985: Q = 3 − 0.015·(3 − 2) = 2.985 = s (max ∞)
    out = dynamic_threshold(x, ratio=0.995, max_value=math.inf)
    np.testing.assert_allclose(out, [[-1.0, 0.5 / 2.985, 2.0 / 2.985, 1.0 / 2.985]],
                               rtol=4e-16)
    # s < 1: |x| sorted = [0.1, 0.2, 0.3, 0.4], Q_0.995 = 0.3 + 0.985·0.1 = 0.3985, s is
    # clamped to 1 and every |x| ≤ 1: x comes back unchanged, bit for bit
    small = np.array([[0.1, -0.2, 0.3, -0.4]])
    np.testing.assert_array_equal(dynamic_threshold(small, 0.995, 2.0), small)
    # s > max_value: ratio 1 gives Q = max|x| = 10; s = clip(10, 1, 2) = 2:
    # clip(x, −2, 2)/2 = [−1, 1, 0, 1]; with max_value = ∞, s = 10: x/10
    big = np.array([[-10.0, 4.0, 0.0, 8.0]])
    np.testing.assert_array_equal(dynamic_threshold(big, 1.0, 2.0), [[-1.0, 1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(dynamic_threshold(big, 1.0, math.inf), [[-1.0, 0.4, 0.0, 0.8]])
    # two samples, two thresholds: row 0 as above (s = 1.5), row 1 has Q_0.5 = 0.25 → s = 1
    both = dynamic_threshold(np.concatenate([x, small]), 0.5, 2.0)
    np.testing.assert_array_equal(both, [[-1.0, 0.5 / 1.5, 1.0, 1.0 / 1.5], small[0]])


def test_quantile_hand_values():
    xp = _np_xp()
    a = np.array([[3.0, 1.0, 2.0, 0.0]])               # sorted [0, 1, 2, 3]
    for q, expected in ((0.0, 0.0), (1.0, 3.0), (0.5, 1.5), (0.25, 0.75), (1 / 3, 1.0)):
        assert _quantile_last_axis(xp, a, q)[0] == expected, q
    assert _quantile_last_axis(xp, np.array([[-7.0]]), 0.3)[0] == -7.0   # N = 1
    ties = np.array([[2.0, 2.0, 2.0], [1.0, 5.0, 5.0]])
    np.testing.assert_array_equal(_quantile_last_axis(xp, ties, 0.37), [2.0, 5.0 - 0.26 * 4.0])


def test_default_options_are_diffusers_and_static_clipping():
    diffusers = pytest.importorskip("diffusers")
    params = inspect.signature(diffusers.DDIMScheduler.__init__).parameters
    assert DynamicThreshold() == DynamicThreshold(params["dynamic_thresholding_ratio"].default,
                                                  params["sample_max_value"].default)
    # with max_value = 1, s is exactly 1: dynamic thresholding is clip to [−1, 1]
    x = np.random.default_rng(0).normal(size=(3, 2, 5)) * 3
    np.testing.assert_array_equal(dynamic_threshold(x), np.clip(x, -1.0, 1.0))


# ----- the quantile against numpy.quantile and torch.quantile -----------------------------

# NumPy ≥ 2 keeps a Python-float q weak (the result and the lerp stay in float32), as refdiff
# does; where NumPy promotes float32 to float64 instead, only 1 ulp is promised.
_NUMPY_WEAK_Q = np.quantile(np.array([0.0, 1.0], np.float32), 0.3).dtype == np.float32


@given(a=rows(), q=LEVELS, dtype=st.sampled_from(["float64", "float32"]))
def test_quantile_matches_numpy_bit_for_bit(a, q, dtype):
    a = a.astype(dtype)
    ours = _quantile_last_axis(_np_xp(), a, q)
    ref = np.quantile(a, q, axis=-1, method="linear")
    assert ours.dtype == a.dtype and ours.shape == (a.shape[0],)
    if dtype == "float64" or _NUMPY_WEAK_Q:
        np.testing.assert_array_equal(ours, ref)
    else:
        assert np.all(np.abs(ours - ref) <= np.spacing(np.abs(ref.astype(dtype))))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_quantile_bit_for_bit_on_many_random_rows(dtype):
    """The measurement behind the docstring, kept: thousands of rows, both lerp branches
    (f < 1/2 and f ≥ 1/2, f = 1/2 included), against numpy.quantile and torch.quantile."""
    rng = np.random.default_rng(5)
    torch = pytest.importorskip("torch")
    worst_torch = 0.0
    for n in (1, 2, 3, 8, 51, 256):
        for q in (0.0, 0.01, 0.37, 0.5, 0.9, 0.995, 1.0, *rng.uniform(0, 1, 4).tolist()):
            a = np.abs(rng.normal(size=(64, n)) * rng.choice([1.0, 3.0, 100.0])).astype(dtype)
            ours = _quantile_last_axis(_np_xp(), a, q)   # q a Python float, for NumPy too
            if dtype == "float64" or _NUMPY_WEAK_Q:
                np.testing.assert_array_equal(ours, np.quantile(a, q, axis=-1, method="linear"))
            t = torch.from_numpy(a)
            np.testing.assert_array_equal(to_numpy(_quantile_last_axis(namespace(a=t), t, q)),
                                          ours)   # the same bits on another library
            ref = torch.quantile(t, q, dim=-1).numpy()
            ulps = np.abs(ours.astype(np.float64) - ref) / np.spacing(np.abs(ref))
            worst_torch = max(worst_torch, float(ulps.max()))
            if dtype == "float32":
                assert np.all(np.abs(ours - ref) <= _torch_rank_bound(a.astype(np.float64), q))
    assert worst_torch <= 1.0 if dtype == "float64" else worst_torch > 1.0


@given(a=rows(max_n=60), q=LEVELS, dtype=st.sampled_from(["float64", "float32"]))
def test_quantile_against_torch_quantile(a, q, dtype):
    """float64: within 1 ulp (torch's CPU lerp is one FMA, ours two roundings); float32:
    within torch's float32-rank error (:func:`_torch_rank_bound`)."""
    torch = pytest.importorskip("torch")
    a = np.abs(a).astype(dtype)                        # what thresholding asks of it
    t = torch.from_numpy(a)
    ours = _quantile_last_axis(namespace(a=t), t, q)
    ref = torch.quantile(t, q, dim=-1)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    diff = np.abs(to_numpy(ours) - to_numpy(ref))
    if dtype == "float64":
        assert np.all(diff <= np.spacing(np.abs(to_numpy(ref))))
    else:
        assert np.all(diff <= _torch_rank_bound(a.astype(np.float64), q))


def test_quantile_of_a_row_with_nan_is_nan_on_every_backend(target):
    a = np.array([[1.0, np.nan, 3.0, 0.5], [1.0, 2.0, 3.0, 0.5]])
    for q in (0.0, 1 / 3, 0.5, 1.0):                   # exact results in every dtype
        got = to_numpy(_quantile_last_axis(namespace(a=target.put(a)), target.put(a), q))
        assert np.isnan(got[0]) and got[1] == np.quantile(a[1], q)


# ----- dynamic_threshold against diffusers ------------------------------------------------

_SCHEDULERS: dict = {}


def _diffusers_threshold(x, ratio, max_value):
    """diffusers' own ``_threshold_sample`` on a torch tensor."""
    diffusers = pytest.importorskip("diffusers")
    key = (ratio, max_value)
    if key not in _SCHEDULERS:
        _SCHEDULERS[key] = diffusers.DDIMScheduler(
            thresholding=True, dynamic_thresholding_ratio=ratio, sample_max_value=max_value)
    return _SCHEDULERS[key]._threshold_sample(x)


@settings(max_examples=40)
@given(x=samples(min_dims=3), ratio=RATIOS, max_value=MAX_VALUES,
       dtype=st.sampled_from(["float64", "float32", "float16", "bfloat16"]))
def test_matches_diffusers_threshold_sample(x, ratio, max_value, dtype):
    """float64: 1e-12 relative (the outputs lie in [−1, 1]). float32: out = clip(x, −s, s)/s
    moves by at most Δs/s with s (≥ 1) (∂out/∂s = −x/s² with |x| ≤ s, 0 where clipped),
    Δs = torch's float32-rank error, plus ≤ 2 roundings of |out| ≤ 1 (the division on each
    side): Δs/s + 4u. float16/bfloat16: both compute in float32 and cast back, so the
    float32 bound plus one ulp of the half format (a rounding that falls the other way)."""
    torch = pytest.importorskip("torch")
    t = from_numpy(x, "torch", dtype)
    ours, theirs = dynamic_threshold(t, ratio, max_value), _diffusers_threshold(t, ratio, max_value)
    if dtype == "float64":
        assert_close(ours, theirs, dtype=dtype, device="cpu", rtol=1e-12, scale=1.0)
        return
    flat = np.abs(to_numpy(t).reshape(x.shape[0], -1))
    s = np.clip(np.quantile(flat, ratio, axis=-1), 1.0, max_value)
    bound = _torch_rank_bound(flat, ratio) / s + 4 * U32
    bound = bound + {"float32": 0.0, "float16": 2.0**-10, "bfloat16": 2.0**-7}[dtype]
    assert_close(ours, theirs, dtype=dtype, device="cpu",
                 bound=bound.reshape((-1,) + (1,) * (x.ndim - 1)))
    assert theirs.dtype == getattr(torch, dtype)


def test_nan_makes_its_sample_nan_as_in_diffusers():
    torch = pytest.importorskip("torch")
    x = torch.tensor([[[0.5, float("nan"), 3.0]], [[0.5, -2.0, 3.0]]], dtype=torch.float64)
    ours, theirs = dynamic_threshold(x, 0.9, 2.0), _diffusers_threshold(x, 0.9, 2.0)
    assert bool(torch.isnan(ours[0]).all()) and bool(torch.isnan(theirs[0]).all())
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-12, atol=0)


# ----- backends ---------------------------------------------------------------------------

@settings(max_examples=15)
@given(x=samples(), ratio=RATIOS, max_value=MAX_VALUES)
def test_every_backend_matches_numpy_float64(target, x, ratio, max_value):
    """Each row of the conftest matrix (NumPy, torch CPU/CUDA, array-api-strict with its
    second device) against NumPy float64 on the same rounded inputs; outputs lie in [−1, 1],
    so the scale is 1. Shape, dtype and device are checked by assert_close."""
    expected = dynamic_threshold(target.rounded(x), ratio, max_value)
    actual = dynamic_threshold(target.put(x), ratio, max_value)
    assert_close(actual, expected, dtype=target.dtype, device=target.device, scale=1.0)


def test_half_precision_is_float32_cast_back_once():
    torch = pytest.importorskip("torch")
    x = torch.asarray(np.random.default_rng(3).normal(size=(2, 3, 4, 4)) * 2.5)
    for dtype in (torch.float16, torch.bfloat16):
        half = x.to(dtype)
        ref = dynamic_threshold(half.to(torch.float32), 0.9, 1.7).to(dtype)
        out = dynamic_threshold(half, 0.9, 1.7)
        assert out.dtype == dtype and torch.equal(out, ref)


def test_gradients_flow_through_torch():
    torch = pytest.importorskip("torch")
    x = torch.asarray(np.random.default_rng(2).normal(size=(2, 3, 4)) * 3, requires_grad=True)
    dynamic_threshold(x, 0.8, 2.0).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


# ----- invariants -------------------------------------------------------------------------

@settings(max_examples=30)
@given(x=samples(spread=(1.0, 10.0, 1e4)), ratio=RATIOS, max_value=MAX_VALUES)
def test_output_lies_in_unit_interval(x, ratio, max_value):
    assert np.all(np.abs(dynamic_threshold(x, ratio, max_value)) <= 1.0)


@settings(max_examples=30)
@given(x=samples(), ratio=RATIOS, max_value=MAX_VALUES)
def test_identity_when_every_value_is_within_one(x, ratio, max_value):
    """All |x| ≤ 1: the quantile is ≤ 1 (a lerp between values ≤ 1 rounds to ≤ 1), s = 1
    exactly, clip does nothing and x/1 = x: the identity, bit for bit."""
    x = np.clip(x, -1.0, 1.0)
    np.testing.assert_array_equal(dynamic_threshold(x, ratio, max_value), x)


@settings(max_examples=30)
@given(x=samples(), ratio=RATIOS)
def test_max_value_one_is_static_clipping(x, ratio):
    np.testing.assert_array_equal(dynamic_threshold(x, ratio, 1.0), np.clip(x, -1.0, 1.0))


@settings(max_examples=30)
@given(x=hnp.arrays(np.float64, st.integers(0, 6), elements=SIGNED).map(lambda a: 3 * a),
       ratio=RATIOS, max_value=MAX_VALUES)
def test_one_element_samples_are_clipped_to_one(x, ratio, max_value):
    """A (B,) input is B one-element samples: s = clip(|x|, 1, s_max), so the result is x
    where |x| ≤ 1 and ±s/s = ±1 elsewhere: clip(x, −1, 1), bit for bit."""
    np.testing.assert_array_equal(dynamic_threshold(x, ratio, max_value), np.clip(x, -1.0, 1.0))


@settings(max_examples=30)
@given(x=samples(min_dims=2), ratio=RATIOS, max_value=MAX_VALUES, data=st.data())
def test_invariant_to_permuting_a_sample(x, ratio, max_value, data):
    """Permuting the non-batch elements of one sample permutes its output the same way, and
    leaves the other samples alone (the sort makes the quantile order-free): bit for bit."""
    b = data.draw(st.integers(0, x.shape[0] - 1), label="sample")
    perm = np.asarray(data.draw(st.permutations(range(x[b].size)), label="perm"))
    y = x.copy()
    y[b] = x[b].reshape(-1)[perm].reshape(x[b].shape)
    out_x, out_y = dynamic_threshold(x, ratio, max_value), dynamic_threshold(y, ratio, max_value)
    np.testing.assert_array_equal(out_y[b].reshape(-1), out_x[b].reshape(-1)[perm])
    others = np.arange(x.shape[0]) != b
    np.testing.assert_array_equal(out_y[others], out_x[others])


@settings(max_examples=30)
@given(x=samples(), ratio=RATIOS, max_value=MAX_VALUES)
def test_samples_are_independent_and_sign_symmetric(x, ratio, max_value):
    out = dynamic_threshold(x, ratio, max_value)
    for i in range(x.shape[0]):
        np.testing.assert_array_equal(dynamic_threshold(x[i:i + 1], ratio, max_value)[0], out[i])
    np.testing.assert_array_equal(dynamic_threshold(-x, ratio, max_value), -out)


def test_private_body_is_the_public_function():
    x = np.random.default_rng(4).normal(size=(2, 3, 5)) * 3
    th = DynamicThreshold(0.8, 2.5)
    np.testing.assert_array_equal(T._dynamic_threshold(_np_xp(), x, th),
                                  dynamic_threshold(x, 0.8, 2.5))


def test_empty_batch_keeps_its_shape():
    out = dynamic_threshold(np.zeros((0, 3, 2)))
    assert out.shape == (0, 3, 2) and out.dtype == np.float64


# ----- options and errors -----------------------------------------------------------------

def test_options_are_frozen_floats():
    th = DynamicThreshold(1, 2)
    assert th == DynamicThreshold(1.0, 2.0) and type(th.ratio) is float
    assert type(th.max_value) is float and hash(th) == hash(DynamicThreshold(1.0, 2.0))
    assert DynamicThreshold(max_value=math.inf).max_value == math.inf
    with pytest.raises(dataclasses.FrozenInstanceError):
        th.ratio = 0.5


@pytest.mark.parametrize("kwargs, error, name", [
    ({"ratio": 0.0}, ValueError, "ratio"),
    ({"ratio": -0.1}, ValueError, "ratio"),
    ({"ratio": 1.5}, ValueError, "ratio"),
    ({"ratio": math.nan}, ValueError, "ratio"),
    ({"ratio": math.inf}, ValueError, "ratio"),
    ({"ratio": True}, TypeError, "ratio"),
    ({"ratio": "0.9"}, TypeError, "ratio"),
    ({"ratio": None}, TypeError, "ratio"),
    ({"max_value": 0.5}, ValueError, "max_value"),
    ({"max_value": -math.inf}, ValueError, "max_value"),
    ({"max_value": math.nan}, ValueError, "max_value"),
    ({"max_value": True}, TypeError, "max_value"),
    ({"max_value": "2"}, TypeError, "max_value"),
    ({"max_value": None}, TypeError, "max_value"),
])
def test_bad_options(kwargs, error, name):
    with pytest.raises(error, match=name):
        DynamicThreshold(**kwargs)
    with pytest.raises(error, match=name):
        dynamic_threshold(np.ones((1, 2)), **kwargs)


@pytest.mark.parametrize("x0_hat, error", [
    ([1.0, 2.0], TypeError),                           # not an array
    (1.5, TypeError),
    (np.array(1.0), ValueError),                       # 0-d: no batch axis
    (np.zeros((2, 0)), ValueError),                    # no element per sample
    (np.arange(4).reshape(2, 2), TypeError),           # not real floating
])
def test_bad_x0_hat(x0_hat, error):
    with pytest.raises(error, match="x0_hat"):
        dynamic_threshold(x0_hat)


# ----- module promises --------------------------------------------------------------------

def test_module_doctests_and_imports():
    assert doctest.testmod(T, optionflags=doctest.ELLIPSIS).failed == 0
    tree = ast.parse(pathlib.Path(T.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    assert not imported & {"numpy", "torch", "scipy", "jax", "cupy"}
    assert "arXiv:2205.11487v1" in T.__doc__
