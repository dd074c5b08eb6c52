"""Hypothesis strategies the tests share (the public ones are in refdiff.testing.strategies)."""

import os

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refdiff.testing.strategies import flush_tiny

ELEMENTS = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False, allow_subnormal=False,
                     width=64)
SHAPES = st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=4),
                   hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=3))


def arrays(shape):
    """float64 arrays; magnitudes below 2**-14 (float16 subnormals) are mapped to 0, so an
    input means the same in every dtype (as in refdiff.testing.strategies.arrays)."""
    return hnp.arrays(np.float64, shape, elements=ELEMENTS).map(flush_tiny)


@st.composite
def batch(draw, n=2, shape=None):
    """``n`` float64 arrays of one shape (B, ...)."""
    shape = shape or draw(SHAPES)
    return [draw(arrays(shape)) for _ in range(n)]


# ᾱ kept away from 0 and 1 where a test divides by √ᾱ or √(1−ᾱ): conditioning ≤ ~5.
alpha_bars = st.floats(0.04, 0.96)


@st.composite
def alpha_pair(draw, lo=0.04, hi=0.96):
    """(ᾱ_t, ᾱ_prev) with ᾱ_t ≤ ᾱ_prev, both in [lo, hi]; sometimes ᾱ_prev = 1."""
    a = draw(st.floats(lo, hi))
    b = draw(st.one_of(st.just(1.0), st.floats(a, 1.0)))
    return a, b


@st.composite
def per_sample_alpha_pair(draw, B):
    """(B,) arrays ᾱ_t ≤ ᾱ_prev."""
    pairs = [draw(alpha_pair()) for _ in range(B)]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


scales = st.one_of(st.sampled_from([0.0, 1.0, 0.5, -1.0, 7.5]), st.floats(-10, 10))


def worst_ratio_report(worst: dict):
    """An autouse module fixture: with REFDIFF_REPORT_RATIOS=1 (and pytest -s) it prints, after
    the module's tests, each row's max error/bound collected in ``worst`` ({key: [ratios]})."""
    @pytest.fixture(scope="module", autouse=True)
    def _report_worst():
        yield
        if os.environ.get("REFDIFF_REPORT_RATIOS"):
            for key in sorted(worst):
                print(key, f"{max(worst[key]):.3g}")
    return _report_worst

