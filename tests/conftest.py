"""Shared test machinery: the backend matrix, Hypothesis profiles, and dtype tolerances.

The matrix (namespace × device × dtype) is generated here, in one place, with readable ids.
Every differential test draws its inputs in NumPy float64, rounds them to the dtype under
test, moves them to the backend, and compares with NumPy float64 run on the rounded inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from refdiff.testing.tolerance import RTOL, from_numpy

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile(
    "dev", deadline=None, print_blob=True, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile(
    "thorough", deadline=None, print_blob=True, max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

try:
    import torch
except ImportError:  # torch is a test dependency; without it the torch rows skip
    torch = None
try:
    import array_api_strict as xs
except ImportError:
    xs = None

HAS_CUDA = torch is not None and torch.cuda.is_available()

# Relative tolerance per dtype for one public function against NumPy float64 on the same
# (rounded) inputs, applied to a scale that bounds the magnitude of the terms summed
# (``close``; the backend tests use 10·max(1, |inputs|, |expected|), the 10 covering the
# division by √ᾱ ≥ 0.2). float64: the ~1e-12 promise (4500 eps). The others are 4–17 eps of
# their dtype: a handful of roundings of intermediates. Measured worst err/scale over 200
# Hypothesis examples per function and row (2026-11-22): float64 4.1e-17, float32 3.5e-8,
# float16 2.5e-4, bfloat16 1.6e-3, i.e. 0.2–0.3 eps, so each bound has a 16–60x margin for
# other hardware (CUDA's fused multiply-adds) while an O(eps^0) formula slip still fails.
# One table for the project (imported above): the conformance kit states this policy to its users.


@dataclass(frozen=True)
class Target:
    """One cell of the backend matrix: how to make arrays there and read them back."""

    id: str
    library: str  # "numpy", "torch", "array_api_strict"
    dtype: str
    device: str = "cpu"

    def make(self, a: Any):
        """A NumPy float64 array (or float) as an array of this target."""
        return from_numpy(a, self.library, self.dtype, self.device)

    def make64(self, a: Any):
        """Like make, in float64 (for per-sample alpha_bar arrays: "cast late")."""
        return Target(self.id, self.library, "float64", self.device).make(a)

    def rounded(self, a: Any) -> np.ndarray:
        """The float64 values of ``a`` after rounding to this target's dtype."""
        return to_numpy(self.make(a))

    def check_meta(self, out: Any, shape: tuple[int, ...]) -> None:
        """dtype, shape and device of an output."""
        assert tuple(out.shape) == tuple(shape)
        assert str(out.dtype).split(".")[-1] == self.dtype
        if self.library == "torch":
            assert out.device.type == self.device.split(":")[0]
        if self.library == "array_api_strict":
            assert out.device == (xs.Device(self.device) if self.device != "cpu"
                                  else xs.Device("CPU_DEVICE"))


def to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, (float, int)):
        return np.asarray(a, dtype=np.float64)
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    if xs is not None and type(a).__module__.startswith("array_api_strict"):
        return np.from_dlpack(xs.astype(a.to_device(xs.Device("CPU_DEVICE")), xs.float64)).copy()
    return np.asarray(a, dtype=np.float64)


def close(actual: Any, expected: np.ndarray, dtype: str, scale: float | None = None) -> None:
    """|actual − expected| ≤ RTOL[dtype]·scale, elementwise; scale defaults to max(1, |expected|)."""
    a = to_numpy(actual)
    e = np.asarray(expected, dtype=np.float64)
    s = max(1.0, float(np.max(np.abs(e), initial=0.0))) if scale is None else scale
    err = float(np.max(np.abs(a - e), initial=0.0))
    assert err <= RTOL[dtype] * s, (
        f"max |actual - expected| = {err:.3e} > {RTOL[dtype]:.0e} * {s:.3g} ({dtype})")


def _targets() -> list[Any]:
    rows = [Target("numpy-float64", "numpy", "float64"), Target("numpy-float32", "numpy", "float32")]
    rows += [Target("strict-float64", "array_api_strict", "float64"),
             Target("strict-device1-float32", "array_api_strict", "float32", "device1")]
    for dt in ("float64", "float32", "float16", "bfloat16"):
        rows.append(Target(f"torch-cpu-{dt}", "torch", dt))
    for dt in ("float64", "float32", "float16", "bfloat16"):
        rows.append(Target(f"torch-cuda-{dt}", "torch", dt, "cuda"))
    params = []
    for t in rows:
        marks = []
        if t.library == "torch" and torch is None:
            marks.append(pytest.mark.skip(reason="torch not installed"))
        if t.library == "array_api_strict" and xs is None:
            marks.append(pytest.mark.skip(reason="array-api-strict not installed"))
        if t.device == "cuda":
            marks += [pytest.mark.cuda,
                      pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]
        params.append(pytest.param(t, id=t.id, marks=marks))
    return params


TARGETS = _targets()
# The exactness and metadata checks run on every row; the float64 rows are the ~1e-12 ones.
TARGETS_F64 = [p for p in TARGETS if p.values[0].dtype == "float64"]


@pytest.fixture(params=TARGETS)
def target(request) -> Target:
    return request.param


@pytest.fixture(params=TARGETS_F64)
def target64(request) -> Target:
    return request.param


