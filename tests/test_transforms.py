"""Every public per-call math function under the transformations of JAX and torch.

One table (:data:`CASES`) lists each function once (a few twice, for an option that changes
the path through the body): a builder of example arrays, the per-step scalars ("levels":
ᾱ, s, Σ) that are traced, and k, the roundings on the longest path of the formula. Each
case is run

- on JAX: ``jax.jit`` with the levels traced as 0-d arrays (one trace for three sets of
  level values), ``jax.vmap`` over a new leading axis of the arrays and over a stack of
  levels (the arrays unmapped), ``jax.grad`` of Σ w·f with respect to the first floating
  array (or the first level where there is none);
- on torch: ``torch.compile(fullgraph=True)`` with the levels as 0-d tensors (one graph
  captured for three sets of level values, counted by a wrapping backend that runs the
  captured graph as is: the capture without graph breaks is what is tested here; Inductor's
  code generation is tested on the guided step), ``torch.func.vmap`` (both ways) and
  ``torch.func.grad``.

Values are compared with the eager function on the same library and dtype (jit, compile,
vmap) or with fourth-order central differences of the NumPy float64 function (grad), with
tolerances derived below (:func:`_tolerance`, :func:`_fd_gradient`). The Inductor backend
compiles ddim_step∘cfg (and the fused step of :mod:`refdiff.fused`, where present).

The JAX rows run inside ``jax.enable_x64(True)`` so that refdiff's float64 coefficients
(the host arithmetic of the levels, the float64 arguments of the sinusoidal embedding, the
float64 ᾱ table) mean on JAX what they mean on NumPy; the arrays themselves are float32
(jit, vmap) or float64 (grad).

Excluded from the table, and why:

- the schedule builders (``linear_schedule``, ``scaled_linear_schedule``,
  ``cosine_schedule``, ``guided_diffusion_linear_schedule``, ``rescale_zero_terminal_snr``,
  ``inference_timesteps``, ``compvis_timesteps``, ``guided_diffusion_timesteps``) and
  ``Schedule``: host float64 tables built once per sampler from Python ints, not per call;
- the sampling loop and its options (``sample``, ``ddim_invert``, ``Guidance``): a Python
  loop that calls the bodies tested here, with host control flow by design; the CLI;
- the random draws (``sample_timesteps``, ``sample_guidance_scales``, ``drop_condition``):
  they go through a backend's generator, not per-call math on given values (the JAX
  backend's draws are tested in tests/test_jax_backend.py);
- ``cfg_scale_from_w`` and ``w_from_cfg_scale``: Python float conversions by contract;
- ``classifier_gradient`` by autograd (no ``grad_log_prob=``): it calls a backend's
  ``grad`` (torch autograd, jax.grad: tests/test_backends.py); the analytic path is in the
  table;
- ``DynamicThreshold``, ``PRESETS``, ``INVERSION_PRESETS``, the tuples of names: options
  and constants, not functions of arrays.
- the guidance-scale schedules and APG's settings (``sigma_from_alpha_bar``,
  ``scheduled_scale``, ``interval_from_steps``, ``ScaleSchedule``, ``APG``,
  ``GUIDANCE_METHODS``, ``SCHEDULE_KINDS``): host floats per step, not per-call array math
  (:func:`refdiff.apg` and :func:`refdiff.cfgpp_ddim_step` are in the table).
- the lists of noise levels (``karras_sigmas``, ``vp_sigmas``, ``flow_times``,
  ``dynamic_shift``, ``FINAL_LEVELS``), built on the host once per run like the schedules;
  the loops ``sample_ode`` and ``sample_flow`` (``SOLVERS``) like ``sample``; the names
  ``PATHS``, ``PATH_PREDICTIONS`` and the state type ``MultistepState`` (constants and a
  container, not functions of arrays: ``dpmpp_2m_step`` with a state is in the table).

Run time: see the pytest durations of CI (``--durations``); the torch captures and the
Inductor compilations dominate.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest

import refdiff as rd
from refdiff._xp import _FACTS
from refdiff.thresholding import DynamicThreshold
from refdiff.testing.bounds import UNIT_ROUNDOFF

try:
    import jax
    import jax.numpy as jnp
except ImportError:  # pragma: no cover - jax is a test dependency
    jax = None
try:
    import torch
    import torch._dynamo
except ImportError:  # pragma: no cover
    torch = None

needs_jax = pytest.mark.skipif(jax is None, reason="jax not installed")
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")

B = 2                # batch
SAMPLE = (3, 2)      # one sample: N = 6 elements
N = math.prod(SAMPLE)
K = 3                # the mapped axis of vmap; the number of level sets per case
PAIRS = [(0.3, 0.6), (0.05, 0.2), (0.8, 0.95)]   # (ᾱ_t, ᾱ_prev), ᾱ_prev ≥ ᾱ_t
W = np.random.default_rng(7).standard_normal((4, N))  # a fixed linear classifier, K = 4 classes
SCHEDULE = rd.linear_schedule(1000)


def _ns(a: Any) -> Any:
    import array_api_compat
    return array_api_compat.array_namespace(a)


def _classifier(x: Any, t: Any) -> Any:
    """A linear classifier p(y | x_t) ∝ exp(W·x_t), the same on every library (t unused)."""
    xp = _ns(x)
    w = xp.asarray(W, dtype=x.dtype, device=x.device) if xp.__name__.endswith("torch") else \
        xp.asarray(W, dtype=x.dtype)
    return xp.reshape(x, (x.shape[0], -1)) @ xp.permute_dims(w, (1, 0))   # (B, 4)


@dataclass(frozen=True)
class Case:
    """One public function: ``fn(*arrays, *levels)`` returns an array or a tuple of arrays."""

    name: str
    fn: Callable[..., Any]
    arrays: Callable[[np.random.Generator], list]   # NumPy float64 (or int64) arrays
    levels: list = field(default_factory=list)      # K tuples of level values (floats)
    k: int = 8                                      # roundings on the longest path
    wrt: int | None = None                          # the input of grad (default: _wrt)


def _arr(*shape: int) -> Callable:
    def build(rng: np.random.Generator) -> list:
        return [rng.standard_normal(s) for s in shape]
    return build


def _xs(n: int) -> Callable:
    return lambda rng: [rng.standard_normal((B, *SAMPLE)) for _ in range(n)]


def _logits(rng: np.random.Generator) -> list:
    return [2 * rng.standard_normal((B, 5)), np.array([1, 4])]


def _classifier_data(rng: np.random.Generator) -> list:
    return [rng.standard_normal((B, *SAMPLE)), rng.standard_normal((B, *SAMPLE)),
            np.array([0, 3]), np.array([10, 500])]


INV = [(0.6, 0.3), (0.2, 0.05), (0.95, 0.8)]       # (ᾱ_t, ᾱ_next), ᾱ_next ≤ ᾱ_t
SIG_PAIRS = [(2.0, 1.0), (10.0, 0.5), (0.3, 0.1)]   # (σ, σ'), 0 < σ' < σ
SIGMAS1 = [(2.0,), (10.0,), (0.3,)]
AB2 = [(0.6, 0.8), (1.0, 2.0), (0.3, 0.7)]           # (a, b) of x = a·x_0 + b·ε
AB = [(0.3,), (0.05,), (0.8,)]
SCALES = [(7.5,), (0.4,), (-1.5,)]

# k: 2 roundings per coefficient applied to an array (its cast, the product), 1 per sum,
# plus the host (or traced) arithmetic of the coefficients; reductions over N elements add
# N (pairwise sums add log2 N; N is the safe count).
CASES = [
    Case("ddim_step", lambda x, e, a, p: rd.ddim_step(x, e, a, p), _xs(2), PAIRS, 10),
    Case("ddim_step/eta", lambda x, e, z, a, p: rd.ddim_step(x, e, a, p, eta=0.5, noise=z),
         _xs(3), PAIRS, 12),
    Case("ddim_step/clip", lambda x, e, a, p: rd.ddim_step(x, e, a, p, clip_x0=1.0),
         _xs(2), PAIRS, 16),
    Case("ddim_step/threshold", lambda x, e, a, p: rd.ddim_step(
        x, e, a, p, clip_x0=DynamicThreshold(0.8, 3.0), rederive_eps=False),
        lambda rng: [2 * rng.standard_normal((B, *SAMPLE)), rng.standard_normal((B, *SAMPLE))],
        PAIRS, 16),
    Case("ddim_step/x0_hat", lambda x, e, x0, a, p: rd.ddim_step(x, e, a, p, x0_hat=x0),
         _xs(3), PAIRS, 10, wrt=2),                 # x_t enters only through x̂_0: grad 0
    Case("ddpm_step", lambda x, e, z, a, p: rd.ddpm_step(x, e, a, p, z), _xs(3), PAIRS, 12),
    Case("ddpm_mean_variance/fixed_large", lambda x, e, a, p: rd.ddpm_mean_variance(
        x, e, a, p, variance_type="fixed_large", zero_beta_tilde=1e-4), _xs(2), PAIRS, 10),
    Case("ddpm_mean_variance/learned_range", lambda x, e, v, a, p: rd.ddpm_mean_variance(
        x, e, a, p, variance_type="learned_range", var_values=v), _xs(3), PAIRS, 14),
    Case("ddim_inversion_step", lambda x, e, a, n: rd.ddim_inversion_step(x, e, a, n),
         _xs(2), INV, 10),
    Case("ddim_inversion_step/clip", lambda x, e, a, n: rd.ddim_inversion_step(
        x, e, a, n, clip_x0=1.0), _xs(2), INV, 16),
    Case("ddim_sigma", lambda a, p: rd.ddim_sigma(a, p, 0.7), lambda rng: [], PAIRS, 10),
    Case("q_sample", lambda x0, e, a: rd.q_sample(x0, a, e), _xs(2), AB, 6),
    Case("predict_x0_eps/epsilon", lambda x, m, a: rd.predict_x0_eps(x, m, a),
         _xs(2), AB, 8),
    Case("predict_x0_eps/sample", lambda x, m, a: rd.predict_x0_eps(x, m, a, "sample"),
         _xs(2), AB, 8),
    Case("predict_x0_eps/v_prediction", lambda x, m, a: rd.predict_x0_eps(
        x, m, a, "v_prediction"), _xs(2), AB, 8),
    Case("prediction_from_x0_eps", lambda x0, e, a: rd.prediction_from_x0_eps(
        x0, e, a, "v_prediction"), _xs(2), AB, 6),
    Case("v_target", lambda x0, e, a: rd.v_target(x0, e, a), _xs(2), AB, 6),
    Case("posterior_coefficients", lambda like, a, p: rd.posterior_coefficients(
        a, p, like=like), _xs(1), PAIRS, 8, wrt=1),  # like= only shapes: grad w.r.t. ᾱ_t
    Case("q_posterior", lambda x0, x, a, p: rd.q_posterior(x0, x, a, p), _xs(2), PAIRS, 10),
    Case("cfg", lambda u, c, s: rd.cfg(u, c, s), _xs(2), SCALES, 6),
    Case("cfg_multi", lambda u, c1, c2, s1, s2: rd.cfg_multi(u, [c1, c2], [s1, s2]),
         _xs(3), [(7.5, -2.0), (0.4, 1.0), (3.0, 0.0)], 10),
    Case("guidance_rescale", lambda g, c: rd.guidance_rescale(g, c, 0.7), _xs(2), [], N + 16),
    # apg: the norm (N squares and sums), the threshold quotient, the two scaled sums of the
    # projection (2N), its quotient and products, the update and the guided sum: 3N + 24
    Case("apg", lambda u, c, r, s: rd.apg(u, c, s, eta=0.3, norm_threshold=2.0,
                                          momentum=-0.5, running=r), _xs(3), SCALES, 3 * N + 24),
    # λ ≤ 0.9: _magnitude steps each level by a relative 1e-6, and λ > 1 is refused
    Case("cfgpp_ddim_step", lambda x, u, c, lam, a, p: rd.cfgpp_ddim_step(x, u, c, lam, a, p),
         _xs(3), [(0.6, *PAIRS[0]), (0.2, *PAIRS[1]), (0.9, *PAIRS[2])], 14),
    Case("classifier_guided_eps", lambda e, g, a, s: rd.classifier_guided_eps(e, g, a, s),
         _xs(2), [(0.3, 2.0), (0.05, 10.0), (0.8, -1.0)], 8),
    Case("classifier_guided_mean", lambda m, g, v, s: rd.classifier_guided_mean(m, v, g, s),
         _xs(2), [(0.1, 2.0), (0.02, 10.0), (0.5, -1.0)], 8),
    Case("classifier_gradient/analytic", lambda x: rd.classifier_gradient(
        None, x, grad_log_prob=lambda v: -2.0 * v), _xs(1), [], 4),
    Case("label_log_prob", lambda lg, y: rd.label_log_prob(lg, y), _logits, [], 16),
    Case("cross_entropy", lambda lg, y: rd.cross_entropy(lg, y), _logits, [], 20),
    Case("noisy_classifier_loss", lambda x0, e, y, t, a: rd.noisy_classifier_loss(
        _classifier, x0, y, t, a, e, reduction="none"), _classifier_data, AB, 2 * N + 24),
    Case("dynamic_threshold", lambda x0: rd.dynamic_threshold(x0, 0.8, 3.0),
         lambda rng: [2 * rng.standard_normal((B, *SAMPLE))], [], 12),
    Case("guidance_distillation_target", lambda u, c, s: rd.guidance_distillation_target(
        u, c, s), _xs(2), SCALES, 6),
    Case("guidance_scale_embedding", lambda s: rd.guidance_scale_embedding(s, 8),
         lambda rng: [1.0 + 0.01 * rng.standard_normal(B)], [], 12),
    Case("sinusoidal_embedding", lambda v: rd.sinusoidal_embedding(v, 8),
         lambda rng: [5.0 * rng.standard_normal(B)], [], 12),
    Case("snr", lambda a: rd.snr(a), lambda rng: [], AB, 4),
    Case("min_snr_weight", lambda a: rd.min_snr_weight(a, 5.0, "v_prediction"),
         lambda rng: [], AB, 4),
    Case("diffusion_loss", lambda m, x0, e, a: rd.diffusion_loss(
        m, x0, e, a, "v_prediction", weighting="min_snr", reduction="none"),
        _xs(3), AB, N + 16),
    Case("alpha_bar_at", lambda t: rd.alpha_bar_at(SCHEDULE, t),
         lambda rng: [np.array([0, 777])], [], 1),
    # Gaussian paths: levels (a, b) or a path's level; σ-space steps: (σ, σ'), σ' ≤ σ
    Case("path_coefficients", lambda a: rd.path_coefficients("vp", a), lambda rng: [], AB, 4),
    Case("path_sigma", lambda a: rd.path_sigma("vp", a), lambda rng: [], AB, 6),
    Case("path_level", lambda s: rd.path_level("flow", s), lambda rng: [], SIGMAS1, 4),
    Case("change_path", lambda x, a: rd.change_path(x, "vp", a, "flow"), _xs(1), AB, 12),
    Case("path_x0_eps/velocity", lambda x, m, a, b: rd.path_x0_eps(x, m, a, b, "velocity"),
         _xs(2), AB2, 8),
    Case("path_x0_eps/v_prediction", lambda x, m, a, b: rd.path_x0_eps(
        x, m, a, b, "v_prediction"), _xs(2), AB2, 12),
    Case("path_prediction", lambda x0, e, a, b: rd.path_prediction(x0, e, a, b, "v_prediction"),
         _xs(2), AB2, 10),
    Case("convert_prediction", lambda x, m, a, b: rd.convert_prediction(
        x, m, a, b, "epsilon", "velocity"), _xs(2), AB2, 10),
    Case("time_shift", lambda t: rd.time_shift(t, 3.0), lambda rng: [], AB, 6),
    Case("exponential_time_shift", lambda t: rd.exponential_time_shift(t, 1.15),
         lambda rng: [], AB, 8),
    Case("euler_step", lambda x, d, s, n: rd.euler_step(x, d, s, n), _xs(2), SIG_PAIRS, 8),
    Case("heun_step", lambda x, d, dn, s, n: rd.heun_step(x, d, s, n, dn), _xs(3), SIG_PAIRS, 14),
    Case("ancestral_sigmas", lambda s, n: rd.ancestral_sigmas(s, n, 0.7), lambda rng: [],
         SIG_PAIRS, 14),
    Case("euler_ancestral_step", lambda x, d, z, s, n: rd.euler_ancestral_step(x, d, s, n, z),
         _xs(3), SIG_PAIRS, 20),
    Case("flow_euler_step", lambda x, u, t, n: rd.flow_euler_step(x, u, t, n), _xs(2),
         [(0.9, 0.5), (0.7, 0.2), (0.3, 0.1)], 4),
    Case("dpmpp_2m_step", lambda x, d, dp, s, n, p: rd.dpmpp_2m_step(
        x, d, s, n, rd.MultistepState(dp, p))[0], _xs(3),
        [(2.0, 1.0, 4.0), (10.0, 0.5, 20.0), (0.3, 0.1, 0.6)], 20),
]

# refdiff.fused is being written alongside this file: its fused steps join the table when the
# module exists (guided_*_step(x_t, eps_uncond, eps_cond, scale, alpha_bar_t, alpha_bar_prev)
# against the unfused composition, which the Inductor test below also compiles).
try:
    _fused = importlib.import_module("refdiff.fused")
except ImportError:
    _fused = None
FUSED = [name for name in ("guided_ddim_step", "guided_ddpm_step")
         if _fused is not None and hasattr(_fused, name)]
if "guided_ddim_step" in FUSED:
    CASES.append(Case("fused.guided_ddim_step", lambda x, u, c, s, a, p: _fused.guided_ddim_step(
        x, u, c, s, a, p), _xs(3), [(7.5, *PAIRS[0]), (0.4, *PAIRS[1]), (-1.5, *PAIRS[2])], 16))
if "guided_ddpm_step" in FUSED:
    CASES.append(Case("fused.guided_ddpm_step", lambda x, u, c, z, s, a, p: _fused.guided_ddpm_step(
        x, u, c, s, a, p, z), _xs(4), [(7.5, *PAIRS[0]), (0.4, *PAIRS[1]), (-1.5, *PAIRS[2])], 18))

IDS = [c.name for c in CASES]
WITH_ARRAYS = [pytest.param(c, id=c.name) for c in CASES if any(
    np.issubdtype(a.dtype, np.floating) for a in c.arrays(np.random.default_rng(0)))]
WITH_LEVELS = [pytest.param(c, id=c.name) for c in CASES if c.levels]


# ----- reference arithmetic in NumPy float64 --------------------------------------------------

def _tuple(r: Any) -> tuple:
    return tuple(r) if isinstance(r, tuple) else (r,)


def _np(a: Any) -> np.ndarray:
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().to(torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _floating(a: Any) -> bool:
    if torch is not None and isinstance(a, torch.Tensor):
        return a.is_floating_point()
    return np.issubdtype(a.dtype, np.floating)


def _host(args: list) -> list:
    """Backend arrays as the NumPy reference's inputs: floating ones as float64 (the values
    the backend holds, already rounded to its dtype), integers as NumPy integers."""
    return [_np(a) if _floating(a) else np.asarray(a) for a in args]


def _reference(case: Case, arrays: list, levels: tuple) -> tuple:
    """The case in NumPy float64, levels as Python floats (the reference semantics)."""
    return tuple(_np(o) for o in _tuple(case.fn(*arrays, *levels)))


def _magnitude(case: Case, arrays: list, levels: tuple) -> tuple:
    """M: the magnitude of the terms of the formula, elementwise per output.

    M = |f| + Σ_i |∂f/∂v_i · v_i| over every floating input v_i (arrays and levels), the
    derivatives along relative perturbations taken by central differences of the float64
    function (relative step 1e-6). For a formula linear in its arrays (the steps, the
    conversions, CFG) Σ_i |∂f/∂v_i·v_i| is exactly the sum of |coefficient·array| over its
    terms (an intermediate such as x̂_0 = (x_t − √(1−ᾱ)·ε)/√ᾱ enters through its
    coefficient); a level's term is the size of what its coefficient multiplies (s·(ε_c − ε_u)
    for CFG). It is the M of refdiff.testing.bounds (the |·|-evaluation), found numerically so
    that one definition serves every function of the table.
    """
    base = _reference(case, arrays, levels)
    total = [np.abs(b) for b in base]
    t = 1e-6
    inputs = list(arrays) + list(levels)
    for i, v in enumerate(inputs):
        if isinstance(v, np.ndarray) and not _floating(v):
            continue
        up, dn = list(inputs), list(inputs)
        up[i], dn[i] = v * (1 + t), v * (1 - t)
        f_up = _reference(case, up[:len(arrays)], tuple(up[len(arrays):]))
        f_dn = _reference(case, dn[:len(arrays)], tuple(dn[len(arrays):]))
        for j in range(len(total)):
            total[j] = total[j] + np.abs(f_up[j] - f_dn[j]) / (2 * t)
    return tuple(total)


def _tolerance(case: Case, arrays: list, levels: tuple, dtype: str) -> tuple:
    """|transformed − eager| ≤ 2·γ_k·M + 2·η, elementwise.

    Both are evaluations of the same formula in the same dtype with unit roundoff u; any
    evaluation order with at most k roundings per term lands within γ_k·M (γ_k = k·u/(1 − k·u))
    of the exact value (Higham, Accuracy and Stability, §3.1; refdiff.testing.bounds), so two
    of them (XLA's fusion, AOTAutograd's decomposition, a batched kernel, the eager op-by-op
    evaluation) differ by at most twice that. η: the smallest subnormal, for results that
    underflow. M from :func:`_magnitude`, k from the table (counted from the formula).
    """
    u = UNIT_ROUNDOFF[dtype]
    gamma = case.k * u / (1 - case.k * u)
    tiny = float(np.finfo(dtype).smallest_subnormal)
    return tuple(2 * gamma * m + 2 * tiny for m in _magnitude(case, arrays, levels))


def _assert_close(got: Any, want: Any, tol: tuple, lib: str, dtype: str) -> float:
    """Every output within its tolerance, with the eager output's shape and dtype; returns
    the worst |got − want|/tol (0 when bit for bit)."""
    got, want = _tuple(got), _tuple(want)
    assert len(got) == len(want)
    worst = 0.0
    for g, w, t in zip(got, want, tol):
        assert tuple(g.shape) == tuple(w.shape), (g.shape, w.shape)
        assert str(g.dtype).split(".")[-1] == str(w.dtype).split(".")[-1], (g.dtype, w.dtype)
        err = np.abs(_np(g) - _np(w))
        t = np.broadcast_to(t, err.shape)
        assert np.all(err <= t), f"{lib}: max |got - eager| = {err.max():.3e}, tol {t.min():.3e}"
        worst = max(worst, float(np.max(err / t, initial=0.0)))
    return worst


# ----- the libraries ------------------------------------------------------------------------------

def _on(lib: str, a: Any, dtype: str) -> Any:
    """A NumPy array or a float on ``lib``: floating ones in ``dtype``, integers as they are;
    a float becomes a 0-d array (a traced level)."""
    a = np.asarray(a)
    if _floating(a):
        a = a.astype(dtype)
    if lib == "jax":
        return jnp.asarray(a)
    return torch.asarray(a)


def _stack(lib: str, items: list) -> Any:
    return jnp.stack(items) if lib == "jax" else torch.stack(items)


def _x64():
    return jax.enable_x64(True)


def _case_data(case: Case, seed: int = 0) -> list:
    return case.arrays(np.random.default_rng(seed))


# ----- JAX ----------------------------------------------------------------------------------------
# The JAX results are compared with the NumPy float64 function on the values JAX holds (the
# float32-rounded arrays and levels), not with eager JAX: eager JAX compiles every primitive
# on first use (seconds per case on two cores), and eager JAX equals that reference within
# γ_k·M anyway. One float32 evaluation is within γ_k·M of the exact value and the float64
# reference within γ_k(u₆₄)·M, so 2·γ_k·M (:func:`_tolerance`) holds with a margin of 2.

def _check_jax(case: Case, got: Any, args: list, levels: list, lib: str) -> float:
    host, lv = _host(args), tuple(float(v) for v in levels)
    want = tuple(o.astype(np.float32) if o.dtype == np.float64 and lib else o
                 for o in _reference(case, host, lv))
    want = tuple(w_.astype(str(g.dtype)) for w_, g in zip(want, _tuple(got)))
    return _assert_close(got, want, _tolerance(case, host, lv, "float32"), lib, "float32")


@needs_jax
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jax_jit_traces_levels_once(case: Case):
    """jax.jit with the levels as traced 0-d arrays: one trace serves every level value, and
    each result is the eager one within 2·γ_k·M (float32)."""
    arrays = _case_data(case)
    traces = []

    def counted(*args):
        traces.append(1)
        return case.fn(*args)

    with _x64():
        jitted = jax.jit(counted)
        for levels in case.levels or [()]:
            args = [_on("jax", a, "float32") for a in arrays]
            lv = [_on("jax", v, "float32") for v in levels]
            _check_jax(case, jitted(*args, *lv), args, lv, "jax.jit")
    assert len(traces) == 1


@needs_jax
@pytest.mark.parametrize("case", WITH_ARRAYS)
def test_jax_vmap_over_a_batch_axis(case: Case):
    """jax.vmap over a new leading axis of every array (the levels unmapped) equals the
    function on each slice. Under jax.jit: one compilation instead of one per primitive (the
    batching rules are the same; eager vmap runs in the value-check test below)."""
    per_k = [_case_data(case, seed) for seed in range(K)]
    levels = case.levels[0] if case.levels else ()
    with _x64():
        stacked = [_stack("jax", [_on("jax", d[i], "float32") for d in per_k])
                   for i in range(len(per_k[0]))]
        lv = [_on("jax", v, "float32") for v in levels]
        axes = (0,) * len(stacked) + (None,) * len(lv)
        got = _tuple(jax.jit(jax.vmap(case.fn, in_axes=axes))(*stacked, *lv))
        for k in range(K):
            _check_jax(case, tuple(g[k] for g in got), [s[k] for s in stacked], lv, "jax.vmap")


@needs_jax
@pytest.mark.parametrize("case", WITH_LEVELS)
def test_jax_vmap_over_levels(case: Case):
    """jax.vmap over a stack of level sets, the arrays unmapped (several steps at once)."""
    arrays = _case_data(case)
    with _x64():
        args = [_on("jax", a, "float32") for a in arrays]
        stacked = [_stack("jax", [_on("jax", lv[i], "float32") for lv in case.levels])
                   for i in range(len(case.levels[0]))]
        axes = (None,) * len(args) + (0,) * len(stacked)
        got = _tuple(jax.jit(jax.vmap(case.fn, in_axes=axes))(*args, *stacked))
        for k in range(len(case.levels)):
            _check_jax(case, tuple(g[k] for g in got), args, [s[k] for s in stacked],
                       "jax.vmap")


# ----- gradients against finite differences of the NumPy float64 function --------------------------

H = 1e-4


def _weights(case: Case, arrays: list, levels: tuple) -> tuple:
    """Fixed random weights w_j of each output's shape: L = Σ_j Σ w_j·f_j."""
    rng = np.random.default_rng(11)
    return tuple(rng.standard_normal(o.shape) for o in _reference(case, arrays, levels))


def _wrt(case: Case, arrays: list) -> int:
    """The input differentiated: the case's choice, else the first floating array, else the
    first level."""
    if case.wrt is not None:
        return case.wrt
    for i, a in enumerate(arrays):
        if _floating(a):
            return i
    return len(arrays)


def _fd_gradient(case: Case, arrays: list, levels: tuple, w: tuple) -> tuple:
    """∂L/∂v by fourth-order central differences of L in NumPy float64, and its error bound.

    D_h = [8(L(v+h) − L(v−h)) − (L(v+2h) − L(v−2h))]/(12h), per element of v.
    Rounding: each L carries |δ| ≤ δ_L = 2·γ_k·Σ_j |w_j|·M_j (float64, M from
    :func:`_magnitude`, doubled for the perturbed points), so D_h's rounding is at most
    (8·2 + 2)·δ_L/(12h) = 1.5·δ_L/h. Truncation: h⁴/30·|L⁽⁵⁾| — zero for the formulas that
    are affine, quadratic or piecewise affine in v (every step, conversion and loss here
    away from a clip or sort boundary); for the smooth nonlinear ones (log-softmax, the
    rescale ratio, exp of the learned variance, sin/cos) the leading term of D_{2h} is 16
    times that of D_h, so |D_h − D_{2h}| ≥ ~15·|truncation of D_h| estimates it. The
    transformation's own float64 gradient is within a few γ_k of exact, far below
    1.5·δ_L/h (h = 1e-4: a margin of 1e4). Returns (D_h, 1.5·δ_L/h + |D_h − D_{2h}|).
    """
    inputs = list(arrays) + list(levels)
    i = _wrt(case, arrays)
    v0 = np.asarray(inputs[i], dtype=np.float64)

    def loss(v: np.ndarray) -> float:
        vals = list(inputs)
        vals[i] = v if v.ndim else float(v)
        outs = _reference(case, vals[:len(arrays)], tuple(vals[len(arrays):]))
        return float(sum(np.sum(wj * oj) for wj, oj in zip(w, outs)))

    def central(h: float) -> np.ndarray:
        g = np.zeros_like(v0)
        for idx in np.ndindex(v0.shape):
            e = np.zeros_like(v0)
            e[idx] = h
            g[idx] = (8 * (loss(v0 + e) - loss(v0 - e)) - (loss(v0 + 2 * e) - loss(v0 - 2 * e))) / (
                12 * h)
        return g

    d_h, d_2h = central(H), central(2 * H)
    u = UNIT_ROUNDOFF["float64"]
    mags = _magnitude(case, arrays, levels)
    delta = 2 * 2 * case.k * u * sum(float(np.sum(np.abs(wj) * mj)) for wj, mj in zip(w, mags))
    return d_h, 1.5 * delta / H + np.abs(d_h - d_2h)


def _check_gradient(got: Any, want: np.ndarray, bound: np.ndarray, lib: str) -> None:
    got = _np(got)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.any(want != 0), "a zero gradient checks nothing"
    err = np.abs(got - want)
    assert np.all(err <= bound), f"{lib}: max |grad - FD| = {err.max():.3e}, bound {bound.min():.3e}"


@needs_jax
@pytest.mark.parametrize("case", [c for c in CASES if c.name != "alpha_bar_at"], ids=[
    c.name for c in CASES if c.name != "alpha_bar_at"])
def test_jax_grad_matches_finite_differences(case: Case):
    """jax.grad of Σ w·f (float64) equals fourth-order differences of the NumPy function."""
    arrays = _case_data(case)
    levels = case.levels[0] if case.levels else ()
    w = _weights(case, arrays, levels)
    want, bound = _fd_gradient(case, arrays, levels, w)
    i = _wrt(case, arrays)
    with _x64():
        args = [_on("jax", a, "float64") for a in arrays] + [_on("jax", v, "float64")
                                                              for v in levels]
        wj = [jnp.asarray(x) for x in w]

        def loss(*a):
            return sum(jnp.sum(c * o) for c, o in zip(wj, _tuple(case.fn(*a))))

        got = jax.jit(jax.grad(loss, argnums=i))(*args)
    _check_gradient(got, want, bound, "jax.grad")


# ----- torch ---------------------------------------------------------------------------------------

class _Counting:
    """A Dynamo backend that counts the graphs it is given and hands them to ``inner``."""

    def __init__(self, inner: str = "eager"):
        self.inner = torch._dynamo.lookup_backend(inner)
        self.graphs = 0

    def __call__(self, gm: Any, example_inputs: Any) -> Any:
        self.graphs += 1
        return self.inner(gm, example_inputs)


def _compile(fn: Callable, backend: _Counting) -> Callable:
    torch._dynamo.reset()   # a clean cache: each case compiles from nothing, no cache limit hit
    return torch.compile(fn, fullgraph=True, backend=backend)


@needs_torch
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_torch_compile_one_graph_for_every_level(case: Case):
    """torch.compile(fullgraph=True) with the levels as 0-d tensors: one graph for
    three sets of level values (and, without levels, for three sets of arrays), each
    result the eager one within 2·γ_k·M (float32)."""
    counting = _Counting()
    compiled = _compile(case.fn, counting)
    runs = [(case.arrays(np.random.default_rng(0)), lv) for lv in case.levels] or [
        (case.arrays(np.random.default_rng(s)), ()) for s in range(K)]
    for arrays, levels in runs:
        args = [_on("torch", a, "float32") for a in arrays]
        lv = [_on("torch", v, "float32") for v in levels]
        got = compiled(*args, *lv)
        tol = _tolerance(case, _host(args), tuple(float(np.float32(v)) for v in levels),
                         "float32")
        _FACTS.clear()  # the eager call refills refdiff's type cache: its keys must not be guarded
        _assert_close(got, case.fn(*args, *lv), tol, "torch.compile", "float32")
    assert counting.graphs == 1, f"{counting.graphs} graphs compiled (recompiled on new values)"


@needs_torch
@pytest.mark.parametrize("case", WITH_ARRAYS)
def test_torch_vmap_over_a_batch_axis(case: Case):
    per_k = [_case_data(case, seed) for seed in range(K)]
    levels = case.levels[0] if case.levels else ()
    stacked = [_stack("torch", [_on("torch", d[i], "float32") for d in per_k])
               for i in range(len(per_k[0]))]
    lv = [_on("torch", v, "float32") for v in levels]
    dims = (0,) * len(stacked) + (None,) * len(lv)
    got = _tuple(torch.func.vmap(case.fn, in_dims=dims)(*stacked, *lv))
    for k in range(K):
        args = [s[k] for s in stacked]
        tol = _tolerance(case, _host(args), tuple(float(np.float32(v)) for v in levels),
                         "float32")
        _assert_close(tuple(g[k] for g in got), case.fn(*args, *lv), tol, "torch.func.vmap",
                      "float32")


@needs_torch
@pytest.mark.parametrize("case", WITH_LEVELS)
def test_torch_vmap_over_levels(case: Case):
    arrays = _case_data(case)
    args = [_on("torch", a, "float32") for a in arrays]
    stacked = [_stack("torch", [_on("torch", lv[i], "float32") for lv in case.levels])
               for i in range(len(case.levels[0]))]
    dims = (None,) * len(args) + (0,) * len(stacked)
    got = _tuple(torch.func.vmap(case.fn, in_dims=dims)(*args, *stacked))
    ref = _host(args)
    for k, levels in enumerate(case.levels):
        lv = [s[k] for s in stacked]
        tol = _tolerance(case, ref, tuple(float(np.float32(v)) for v in levels), "float32")
        _assert_close(tuple(g[k] for g in got), case.fn(*args, *lv), tol, "torch.func.vmap",
                      "float32")


@needs_torch
@pytest.mark.parametrize("case", [c for c in CASES if c.name != "alpha_bar_at"], ids=[
    c.name for c in CASES if c.name != "alpha_bar_at"])
def test_torch_func_grad_matches_finite_differences(case: Case):
    arrays = _case_data(case)
    levels = case.levels[0] if case.levels else ()
    w = _weights(case, arrays, levels)
    want, bound = _fd_gradient(case, arrays, levels, w)
    args = [_on("torch", a, "float64") for a in arrays] + [_on("torch", v, "float64")
                                                            for v in levels]
    wt = [torch.asarray(x) for x in w]

    def loss(*a):
        return sum((c * o).sum() for c, o in zip(wt, _tuple(case.fn(*a))))

    got = torch.func.grad(loss, argnums=_wrt(case, arrays))(*args)
    _check_gradient(got, want, bound, "torch.func.grad")


# ----- Inductor: the guided step, compiled for real ----------------------------------------------

def _guided_ddim(x, u, c, s, a, p):
    return rd.ddim_step(x, rd.cfg(u, c, s), a, p)


GUIDED_LEVELS = [(7.5, *PAIRS[0]), (0.4, *PAIRS[1]), (-1.5, *PAIRS[2])]
GUIDED = Case("ddim_step∘cfg", _guided_ddim, _xs(3), GUIDED_LEVELS, 16)
INDUCTOR = [pytest.param(GUIDED, id="ddim_step∘cfg")] + [
    pytest.param(c, id=c.name) for c in CASES if c.name == "fused.guided_ddim_step"]


@needs_torch
@pytest.mark.slow
@pytest.mark.parametrize("case", INDUCTOR)
def test_inductor_compiles_the_guided_step_once(case: Case):
    """The default backend (Inductor, C++ on the CPU): one graph for three (s, ᾱ_t, ᾱ_prev),
    each within 2·γ_k·M of eager (Inductor may fuse a·x + b·y into FMAs and reorder)."""
    counting = _Counting("inductor")
    compiled = _compile(case.fn, counting)
    arrays = _case_data(case)
    args = [_on("torch", a, "float32") for a in arrays]
    for levels in case.levels:
        lv = [_on("torch", v, "float32") for v in levels]
        tol = _tolerance(case, _host(args), tuple(float(np.float32(v)) for v in levels),
                         "float32")
        _assert_close(compiled(*args, *lv), case.fn(*args, *lv), tol, "inductor", "float32")
    assert counting.graphs == 1


# ----- exactness, value checks and metadata checks under tracing ---------------------------------

@pytest.mark.parametrize("lib", [pytest.param("jax", marks=needs_jax),
                                 pytest.param("torch", marks=needs_torch)])
def test_cfg_is_exact_at_scale_0_and_1_when_traced(lib: str):
    """ε_u + s·(ε_c − ε_u) returns ε_u at s = 0 and ε_c at s = 1 bit for bit, with s traced
    (jit/compile, vmap) as with s a Python float or a concrete array."""
    rng = np.random.default_rng(3)
    u_np, c_np = (rng.standard_normal((B, *SAMPLE)) * 1e3 for _ in range(2))
    u_np[0, 0, 0] = -0.0
    with (_x64() if lib == "jax" else _nullcontext()):
        u, c = _on(lib, u_np, "float32"), _on(lib, c_np, "float32")
        s01 = [_on(lib, 0.0, "float32"), _on(lib, 1.0, "float32")]
        if lib == "jax":
            traced = jax.jit(rd.cfg)
            mapped = jax.vmap(rd.cfg, in_axes=(None, None, 0))(u, c, _stack(lib, s01))
        else:
            traced = _compile(rd.cfg, _Counting())
            mapped = torch.func.vmap(rd.cfg, in_dims=(None, None, 0))(u, c, _stack(lib, s01))
        results = {
            "traced": (traced(u, c, s01[0]), traced(u, c, s01[1])),
            "vmap": (mapped[0], mapped[1]),
            "float": (rd.cfg(u, c, 0.0), rd.cfg(u, c, 1.0)),
            "array": (rd.cfg(u, c, s01[0]), rd.cfg(u, c, s01[1])),
        }
        for how, (at0, at1) in results.items():
            for got, want in ((at0, u), (at1, c)):
                g, w_ = np.asarray(_np(got)), np.asarray(_np(want))
                assert np.array_equal(g, w_) and np.array_equal(np.signbit(g), np.signbit(w_)), how


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# (function of (x, level), a level value out of range, what the eager error says)
OUT_OF_RANGE = [
    ("ddim_step ᾱ_t > 1", lambda x, v: rd.ddim_step(x, x, v, 1.0), 1.5, "alpha_bar_t"),
    ("ddim_step ᾱ_prev < ᾱ_t", lambda x, v: rd.ddim_step(x, x, 0.5, v), 0.2,
     "alpha_bar_prev must be >= alpha_bar_t"),
    ("q_sample ᾱ < 0", lambda x, v: rd.q_sample(x, v, x), -0.5, "alpha_bar_t"),
    ("cfg s not finite", lambda x, v: rd.cfg(x, x, v), math.inf, "scale"),
    ("classifier_guided_mean Σ < 0", lambda x, v: rd.classifier_guided_mean(x, v, x, 2.0),
     -1.0, "variance"),
]


@pytest.mark.parametrize("fn,bad,message", [pytest.param(f, b, m, id=i)
                                            for i, f, b, m in OUT_OF_RANGE])
def test_value_checks_raise_eagerly_and_are_skipped_when_traced(fn, bad, message):
    x_np = np.random.default_rng(5).standard_normal((B, *SAMPLE))
    with pytest.raises(ValueError, match=message):
        fn(x_np, np.asarray(bad))
    if jax is not None:
        with _x64():
            x, v = _on("jax", x_np, "float32"), _on("jax", bad, "float32")
            with pytest.raises(ValueError, match=message):
                fn(x, v)                                            # concrete: checked
            jax.jit(fn)(x, v)                                        # traced: not checked
            jax.vmap(fn, in_axes=(None, 0))(x, _stack("jax", [v, v]))
    if torch is not None:
        x, v = _on("torch", x_np, "float32"), _on("torch", bad, "float32")
        with pytest.raises(ValueError, match=message):
            fn(x, v)
        _compile(fn, _Counting())(x, v)
        torch.func.vmap(fn, in_dims=(None, 0))(x, torch.stack([v, v]))


# (function of (x, y), what y is: the dtype or shape mismatch, the error)
MISMATCHES = [
    ("dtype", lambda x, y: rd.ddim_step(x, y, 0.3, 0.6), "float16", None, TypeError,
     "eps has dtype"),
    ("shape", lambda x, y: rd.cfg(x, y, 2.0), "float32", (B, 5), ValueError,
     "must have the shape"),
    ("level dtype", lambda x, y: rd.q_sample(x, y, x), "int32", (), TypeError,
     "real floating"),
]


@pytest.mark.parametrize("fn,dtype,shape,error,message", [
    pytest.param(f, d, s, e, m, id=i) for i, f, d, s, e, m in MISMATCHES])
def test_metadata_checks_raise_under_tracing(fn, dtype, shape, error, message):
    x_np = np.random.default_rng(6).standard_normal((B, *SAMPLE))
    y_np = np.ones(shape if shape is not None else x_np.shape)
    if jax is not None:
        with _x64():
            x = _on("jax", x_np, "float32")
            y = jnp.asarray(y_np, dtype=dtype)
            with pytest.raises(error, match=message):
                jax.jit(fn)(x, y)
            with pytest.raises(error, match=message):
                jax.vmap(fn)(_stack("jax", [x, x]), _stack("jax", [y, y]))
            with pytest.raises(error, match=message):
                jax.grad(lambda a: jnp.sum(fn(a, y)))(x)
    if torch is not None:
        x = _on("torch", x_np, "float32")
        y = torch.asarray(y_np).to(getattr(torch, dtype))
        with pytest.raises(error, match=message):
            torch.compile(fn, backend="aot_eager")(x, y)         # Dynamo falls back, re-raises
        torch._dynamo.reset()
        with pytest.raises(torch._dynamo.exc.Unsupported) as info:  # fullgraph: no fallback
            torch.compile(fn, fullgraph=True, backend="aot_eager")(x, y)
        assert message in str(info.value.__cause__)              # refdiff's error, inside
        with pytest.raises(error, match=message):
            torch.func.vmap(fn)(torch.stack([x, x]), torch.stack([y, y]))
        with pytest.raises(error, match=message):
            torch.func.grad(lambda a: fn(a, y).sum())(x)


def test_table_covers_every_public_per_call_function():
    """A new public function must be added to CASES or to the exclusions of the docstring."""
    covered = {c.name.split("/")[0].removeprefix("fused.") for c in CASES}
    excluded = {"linear_schedule", "scaled_linear_schedule", "cosine_schedule",
                "guided_diffusion_linear_schedule", "rescale_zero_terminal_snr",
                "inference_timesteps", "compvis_timesteps", "guided_diffusion_timesteps",
                "Schedule", "sample", "ddim_invert", "Guidance", "sample_timesteps",
                "sample_guidance_scales", "drop_condition", "cfg_scale_from_w",
                "w_from_cfg_scale", "DynamicThreshold", "PRESETS", "INVERSION_PRESETS",
                "PREDICTION_TYPES", "SPACINGS", "VARIANCE_TYPES", "ORIGINAL_SPACINGS",
                "sigma_from_alpha_bar", "scheduled_scale", "interval_from_steps",
                "ScaleSchedule", "APG", "GUIDANCE_METHODS", "SCHEDULE_KINDS",
                "karras_sigmas", "vp_sigmas", "flow_times", "dynamic_shift", "FINAL_LEVELS",
                "sample_ode", "sample_flow", "SOLVERS", "PATHS", "PATH_PREDICTIONS",
                "MultistepState"}
    missing = set(rd.__all__) - covered - excluded - {"classifier_gradient"}
    assert not missing, f"public functions with no transformation test: {sorted(missing)}"
    assert "classifier_gradient/analytic" in {c.name for c in CASES}
