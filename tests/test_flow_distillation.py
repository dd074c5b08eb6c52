"""Guidance distillation for a flow model (FLUX-style embedded guidance): the target is the
teacher's CFG velocity, the same prediction as CFG in x̂_0 converted to u, and a student that
returns it, sampled unguided, is the CFG sampler evaluated once per step."""

import numpy as np
from hypothesis import given, settings, strategies as st

import refdiff as rd
from refdiff.oracle import demo_mixture
from refdiff.oracle_paths import exact_model

U = 2.0**-53
ELEM = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@settings(max_examples=50)
@given(st.lists(ELEM, min_size=6, max_size=6), st.floats(0.05, 0.95),
       st.floats(-2.0, 8.0))
def test_flow_distillation_target_is_cfg_in_any_space(vals, t, s):
    """u_u + s·(u_c − u_u) equals CFG on x̂_0 converted to u at the same x (CFG is affine and
    its weights sum to 1). Bound: both sides are affine in x, x̂_0's with coefficients ≤
    (1 + |s|)·(a + b)/b ≤ (1 + |s|)/t; 12 roundings of terms of that size (the conversions
    and the two CFG lines)."""
    x, x0_u, x0_c = (np.array([vals[2 * i:2 * i + 2]]) for i in range(3))
    a, b = rd.path_coefficients("flow", t)
    u_u, u_c = (rd.path_prediction(x0, (x - a * x0) / b, a, b, "velocity") for x0 in (x0_u, x0_c))
    target = rd.guidance_distillation_target(u_u, u_c, s)
    x0_g = rd.cfg(x0_u, x0_c, s)
    want = rd.path_prediction(x0_g, (x - a * x0_g) / b, a, b, "velocity")
    size = (1 + abs(s)) * (np.abs(x) + np.abs(x0_u) + np.abs(x0_c)) / t
    assert np.all(np.abs(target - want) <= 12 * U * size)


def test_a_student_on_the_target_is_the_cfg_sampler_bit_for_bit():
    gm, teacher = demo_mixture(), exact_model(demo_mixture(), "flow", "velocity")
    z = np.random.default_rng(0).standard_normal((64, 2))
    times = rd.flow_times(12, shift=3.0)

    def student(x, t, c):  # a perfect distilled student at s = 3: one evaluation per call
        return rd.guidance_distillation_target(teacher(x, t, None), teacher(x, t, 1), 3.0)

    calls = []

    def counted(x, t, c):
        calls.append(c)
        return student(x, t, c)

    distilled = rd.sample_flow(counted, z, times)
    guided = rd.sample_flow(teacher, z, times, guidance=rd.Guidance(cond=1, scale=3.0))
    assert np.array_equal(distilled, guided)
    assert len(calls) == 12 and gm.num_classes == 3
