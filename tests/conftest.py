"""Shared test machinery: the backend matrix, Hypothesis profiles, and dtype tolerances.

The matrix (namespace × device × dtype) is generated here, in one place, with readable ids.
Every differential test draws its inputs in NumPy float64, rounds them to the dtype under
test, moves them to the backend, and compares with NumPy float64 run on the rounded inputs.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from refdiff.testing import Target

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile(
    "dev", deadline=None, print_blob=True, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile(
    "thorough", deadline=None, print_blob=True, max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
settings.load_profile(PROFILE)

try:
    import torch
except ImportError:  # torch is a test dependency; without it the torch rows skip
    torch = None
try:
    import array_api_strict as xs
except ImportError:
    xs = None
try:
    import jax
except ImportError:  # jax is a test dependency; without it the JAX rows skip
    jax = None
else:
    # JAX makes float64 arrays only in its 64-bit mode, a process-wide switch that JAX wants
    # set before any array exists: turned on here, once, at collection, for the float64 rows.
    # It does not widen the float32 rows: Target.put gives float32 arrays explicitly, Python
    # numbers stay weakly typed, and every test checks the dtype of each output (a float64
    # leak fails there). tests/test_jax_backend.py checks the mode-off behaviour inside
    # jax.enable_x64(False) and in a fresh process.
    jax.config.update("jax_enable_x64", True)

HAS_CUDA = torch is not None and torch.cuda.is_available()

# The tests speak the conformance kit's vocabulary: ``Target`` (backend, dtype, device; put,
# rounded, with_dtype), ``to_numpy`` and ``assert_close`` (values within RTOL[dtype]·scale,
# and dtype, shape and device) from refdiff.testing. RTOL is one table for the project: the
# kit states this policy to its users. Relative tolerance per dtype for one public function
# against NumPy float64 on the same (rounded) inputs, applied to a scale that bounds the
# magnitude of the terms summed (the backend tests use 10·max(1, |inputs|, |expected|), the
# 10 covering the division by √ᾱ ≥ 0.2). float64: the ~1e-12 promise (4500 eps). The others
# are 4–17 eps of their dtype: a handful of roundings of intermediates. Measured worst
# err/scale over 200 Hypothesis examples per function and row (2026-11-22): float64 4.1e-17,
# float32 3.5e-8, float16 2.5e-4, bfloat16 1.6e-3, i.e. 0.2–0.3 eps. So the tolerance is
# RTOL/(err/scale) times the worst error seen: float64 ≈ 24 000× (1e-12/4.1e-17), float32
# ≈ 57×, float16 ≈ 16×, bfloat16 ≈ 19×. That is a margin and not an error bound: in float64
# it lets through any slip below ~1e-12·scale, and a fixed scale can be wider than the
# values (a scale 100·max let a sign-flipped ε pass in bfloat16). Rows that must catch
# slips use the per-example first-order bounds instead (assert_close(bound=...), from
# refdiff.testing.bounds or a helper next to the test that derives it). Their measured
# max error/bound, the inverse of the margin (CI profile, 2026-12-01; each test's
# docstring says how): test_oracle's backend row float64 torch 78×, float32 29×, float16
# 1.14×, bfloat16 1.05× (the output's own rounding, u·|ref|, is the whole bound there);
# test_training_backends' losses 4.8–9× and cross-entropy 4.2–9.7× on every row;
# test_slips (float64 loops, steps, schedules) 3.7–300×. Bitwise-equal rows (NumPy and
# array-api-strict float64 against NumPy float64) measure 0.


def _targets() -> list[Any]:
    rows = [Target("numpy", "float64"), Target("numpy", "float32")]
    rows += [Target("array_api_strict", "float64"),
             Target("array_api_strict", "float32", "device1")]
    for dt in ("float64", "float32", "float16", "bfloat16"):
        rows.append(Target("torch", dt))
    for dt in ("float64", "float32", "float16", "bfloat16"):
        rows.append(Target("torch", dt, "cuda"))
    rows += [Target("jax", "float64"), Target("jax", "float32")]
    params = []
    for t in rows:
        marks = []
        if t.backend == "torch" and torch is None:
            marks.append(pytest.mark.skip(reason="torch not installed"))
        if t.backend == "array_api_strict" and xs is None:
            marks.append(pytest.mark.skip(reason="array-api-strict not installed"))
        if t.backend == "jax" and jax is None:
            marks.append(pytest.mark.skip(reason="jax not installed"))
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


# JAX rows in the CI profile: at most 10 examples per test (the tests ask for 15–60). Eager
# JAX compiles every operation anew for each new shape and dtype, so a Hypothesis example
# there costs 10–100× a NumPy one: the JAX rows took 325 s of a 1058 s suite (2026-12-01). The NumPy, torch and
# array-api-strict rows of the same tests keep the full count; what a JAX row adds over them
# (dtype and device propagation, x64 coefficients, the namespace) does not depend on the
# values drawn. Other profiles ("dev", "thorough") run the full count on every row.
JAX_CI_EXAMPLES = 10


@pytest.fixture(autouse=True)
def _fewer_examples_on_jax_rows(request):
    fn = getattr(request, "function", None)
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    on_jax = any(isinstance(v, Target) and v.backend == "jax" for v in params.values())
    current = getattr(fn, "_hypothesis_internal_use_settings", None)
    if (not on_jax or current is None or PROFILE != "ci"
            or current.max_examples <= JAX_CI_EXAMPLES):
        yield
        return
    fn._hypothesis_internal_use_settings = settings(current, max_examples=JAX_CI_EXAMPLES)
    try:
        yield
    finally:
        fn._hypothesis_internal_use_settings = current


@pytest.fixture(params=TARGETS_F64)
def target64(request) -> Target:
    return request.param


