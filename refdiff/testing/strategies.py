"""Hypothesis strategies for diffusion sampling math: schedules, timesteps, arrays, scales.

Every strategy draws plain values (NumPy float64 arrays, ints, floats) unless it is told a
backend: the checks round the drawn values to the candidate's dtype, move them to its
backend, and compute refdiff's reference on the same rounded values.

Arrays never hold NaN, infinity or subnormal numbers unless asked: by default, magnitudes
below 2**-14 (the smallest normal float16) are mapped to 0, so that an input means the same
in every dtype (a float16 subnormal would otherwise flush or lose bits differently per
backend).

References
----------
D. R. MacIver et al., "Hypothesis: A new approach to property-based testing", JOSS 4(43), 2019.
Schedules: DDPM arXiv:2006.11239v2 §4; IDDPM arXiv:2102.09672v1 Eq. 17 (and Eq. 15: the
variance channel);
ZSNR arXiv:2305.08891v4 Algorithm 1 and Table 2 (spacings).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume, strategies as st
from hypothesis.extra import numpy as hnp

import refdiff as rd
from refdiff.testing.tolerance import from_numpy

SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine", "guided_diffusion_linear", "zero_snr_linear")
TINY = 2.0**-14  # smallest normal float16: smaller magnitudes become 0


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule by name: ``kind``, ``T`` and keyword ``params``; ``build()`` makes it.

    ``repr`` is the refdiff expression that builds it, for reproduction snippets.
    """

    kind: str
    T: int
    params: dict = field(default_factory=dict)

    def build(self) -> rd.Schedule:
        """The refdiff :class:`~refdiff.Schedule` (host float64 tables)."""
        if self.kind == "zero_snr_linear":
            return rd.rescale_zero_terminal_snr(rd.linear_schedule(self.T, **self.params))
        return getattr(rd, f"{self.kind}_schedule")(self.T, **self.params)

    def __repr__(self) -> str:
        args = ", ".join([str(self.T)] + [f"{k}={v!r}" for k, v in self.params.items()])
        if self.kind == "zero_snr_linear":
            return f"rd.rescale_zero_terminal_snr(rd.linear_schedule({args}))"
        return f"rd.{self.kind}_schedule({args})"


@st.composite
def schedules(draw, kinds=SCHEDULE_KINDS, min_T: int = 2, max_T: int = 1000):
    """:class:`ScheduleSpec` of any kind, with random T and β range (where the kind has one)."""
    kind = draw(st.sampled_from(kinds))
    # the rescaled linear schedule needs T >= 20 (β_end = 0.02·1000/T ≤ 1)
    lo_T = max(min_T, 20) if kind == "guided_diffusion_linear" else min_T
    T = draw(st.one_of(st.just(max_T), st.integers(lo_T, max(lo_T, max_T))))
    params = {}
    if kind in ("linear", "scaled_linear", "zero_snr_linear"):
        lo = draw(st.floats(1e-5, 2e-3))
        params = {"beta_start": lo, "beta_end": draw(st.floats(max(lo, 5e-3), 0.03))}
    return ScheduleSpec(kind, T, params)


@functools.lru_cache(maxsize=1024)
def _step_counts(hi: int):
    """n in [1, hi]: any, the small ones and hi, or above hi/2 (where strides break). Built
    once per hi: a composite would otherwise build and validate it for every example."""
    return st.one_of(st.integers(1, hi), st.sampled_from(sorted({1, min(2, hi), min(3, hi), hi})),
                     st.integers(max(1, hi // 2), hi))


@functools.lru_cache(maxsize=1024)
def _step_indices(n: int):
    """The index of a step in a list of n: the last (twice as likely), any, or the first."""
    return st.one_of(st.just(n - 1), st.integers(0, n - 1), st.just(n - 1), st.just(0))


@functools.lru_cache(maxsize=4096)
def _listed(T: int, n: int, spacing: str, offset: int) -> list[int]:
    return [int(t) for t in rd.inference_timesteps(T, n, spacing, offset)]


@st.composite
def timestep_lists(draw, T: int, spacings=rd.SPACINGS, max_steps: int | None = None,
                   offset: int = 0):
    """(n, spacing, timesteps) with refdiff's list for n inference steps out of T."""
    spacing = draw(st.sampled_from(spacings))
    hi = min(T - offset if spacing == "leading" else T, max_steps or T)
    n = draw(_step_counts(max(1, hi)))
    off = offset if spacing == "leading" else 0
    assume(spacing != "leading" or (n - 1) * (T // n) + off <= T - 1)
    return n, spacing, list(_listed(T, n, spacing, off))


@st.composite
def timestep_pairs(draw, T: int, spacings=rd.SPACINGS, max_steps: int | None = None,
                   offset: int = 0):
    """(n, spacing, t, t_prev): consecutive listed timesteps; t_prev = −1 after the last one."""
    n, spacing, ts = draw(timestep_lists(T, spacings, max_steps, offset))
    i = draw(_step_indices(n))
    return n, spacing, ts[i], (ts[i + 1] if i + 1 < n else -1)


def shapes(max_dims: int = 4, max_side: int = 3):
    """Small array shapes (B, ...) with at least one axis."""
    return hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=max_side)


def flush_tiny(a: np.ndarray) -> np.ndarray:
    """``a`` with magnitudes below 2**-14 (float16 subnormals) set to 0."""
    return np.where(np.abs(a) < TINY, 0.0, a)


def arrays(shape, dtype: str = "float64", backend: str = "numpy", device: str = "cpu", *,
           bound: float = 3.0, allow_nan: bool = False, allow_infinity: bool = False,
           allow_subnormal: bool = False):
    """Arrays of ``shape`` on ``backend`` in ``dtype``, elements in [−bound, bound].

    Drawn in float64; unless ``allow_subnormal``, magnitudes below 2**-14 become 0.
    """
    key = (tuple(shape) if isinstance(shape, (tuple, list)) else shape, dtype, backend, device,
           bound, allow_nan, allow_infinity, allow_subnormal)
    return _arrays(*key)


@functools.lru_cache(maxsize=1024)
def _arrays(shape, dtype, backend, device, bound, allow_nan, allow_infinity, allow_subnormal):
    """:func:`arrays`, built once per argument tuple (checks draw them inside a flatmap,
    which would otherwise build and validate a new strategy for every example)."""
    elements = st.floats(-bound, bound, allow_nan=allow_nan, allow_infinity=allow_infinity,
                         allow_subnormal=allow_subnormal, width=64)
    raw = hnp.arrays(np.float64, shape, elements=elements)
    if not allow_subnormal:
        raw = raw.map(flush_tiny)
    if backend == "numpy" and dtype == "float64":
        return raw
    return raw.map(lambda a: from_numpy(a, backend, dtype, device))


def model_outputs(shape, **kwargs):
    """A model's prediction (ε, x_0 or v) of ``shape``: :func:`arrays` with |values| ≤ 4."""
    return arrays(shape, bound=kwargs.pop("bound", 4.0), **kwargs)


def variance_channels(shape, variance_type: str = "learned_range"):
    """A model's variance channel v of ``shape``: for "learned_range" (IDDPM Eq. 15's
    interpolation coefficient) elements in [−1.25, 1.25], the ends ±1 and the middle 0
    favoured (a network's v may leave [−1, 1] slightly); for "learned" (v = log σ²) elements
    in [−20, 1] (σ² from 2e-9 to e)."""
    return _variance_channels(tuple(shape) if isinstance(shape, (tuple, list)) else shape,
                              variance_type)


@functools.lru_cache(maxsize=1024)
def _variance_channels(shape, variance_type: str):
    lo, hi, special = ((-1.25, 1.25, [-1.0, 0.0, 1.0]) if variance_type == "learned_range"
                       else (-20.0, 1.0, [0.0, -5.0]))
    elements = st.one_of(st.sampled_from(special),
                         st.floats(lo, hi, allow_nan=False, allow_infinity=False,
                                   allow_subnormal=False, width=64))
    return hnp.arrays(np.float64, shape, elements=elements).map(flush_tiny)


def guidance_scales(lo: float = -10.0, hi: float = 10.0):
    """CFG scales s: the special values 0, 1 (exact ends), 0.5, −1, 7.5, and any in [lo, hi]."""
    return st.one_of(st.sampled_from([0.0, 1.0, 0.5, -1.0, 7.5]), st.floats(lo, hi))


def etas():
    """DDIM η in [0, 1], with 0, 1 and 0.5 favoured."""
    return st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0))
