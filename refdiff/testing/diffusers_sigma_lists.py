"""The σ and flow-time lists of diffusers' σ-space and flow schedulers, against refdiff's.

:func:`check_configured_sigmas` takes a :class:`~refdiff.testing.diffusers_solvers.DiffusersSolver`
and compares, for every n in a range, the list its configuration produces
(``set_timesteps(n)`` then ``.sigmas``; Heun's repeated entries dropped) with refdiff's
construction for the convention the configuration claims:

- VP σ's (Euler, Euler-ancestral, Heun, DPM-Solver++): :func:`refdiff.vp_sigmas` at
  :func:`refdiff.inference_timesteps` (T, n, ``timestep_spacing``, ``steps_offset``), or with
  ``use_karras_sigmas`` :func:`refdiff.karras_sigmas` from the table's σ(0) and σ(T − 1)
  (Euler: its ``sigma_min``/``sigma_max`` when set), then ``final_sigmas_type``;
- flow times (FlowMatch): :func:`refdiff.flow_times` (n, ``shift``, t_min = 1/T), or with
  ``use_dynamic_shifting`` μ (exponential shift; the "linear" type is the SD3 shift s = μ).

A failure is replayed under diffusers' own rules (:func:`diffusers_rule`): its timesteps
(fractional ``linspace`` with σ interpolated linearly in Euler/Heun, DPM's n + 1-point
``linspace``/``leading`` without the last point, the float-step trailing ``arange``), its
Karras ends (σ of the first and last *inference* timestep in Euler/Heun), its flow t_min
(the shifted table's smallest level, shifted again). When the replay meets diffusers and the
claim did not, the failure is a finding naming the rules that differ.

Tolerance. diffusers computes the table in float32: β rounded, ᾱ_t a product of t + 1
rounded factors 1 − β, so |δᾱ_t| ≤ γ_{2(t+1)}·ᾱ_t (Higham, *Accuracy and Stability*, 2nd
ed., Lemma 3.1; u = 2⁻²⁴); 1 − ᾱ_t is then off by γ·ᾱ + u·(1 − ᾱ), and
σ = √((1 − ᾱ)/ᾱ) by ½(γᾱ/(1 − ᾱ) + γ + 2u) + u relatively (one division, one root), then
rounded once more to float32 (u). An interpolated or Karras σ is off by at most the larger
relative error of its two ends, plus u. Flow times: the ends 1 and shift(1/T) are float32
values (≤ 5 roundings, each amplified by at most max(1, 1/s), the shift's log-derivative);
the stored list is rounded to float32: (5·max(1, 1/s) + 2)·u relatively.
"""

from __future__ import annotations

import math
import time
import numpy as np

import refdiff as rd
from refdiff.testing._engine import CheckResult
from refdiff.testing.bounds import Precision

P32 = Precision("float32")


# ----- refdiff's claim and diffusers' rule -------------------------------------------------

def _table(adapter) -> np.ndarray:
    """refdiff's float64 σ(t), t = 0 … T − 1, of the configured β schedule."""
    cached = getattr(adapter, "_sigma_table", None)
    if cached is None:
        sched = adapter.schedule()
        ab = np.array([sched.alpha_bar(t) for t in range(sched.num_train_timesteps)])
        cached = adapter._sigma_table = (np.sqrt((1.0 - ab) / ab), ab)
    return cached


def _table_bound(ab: np.ndarray) -> np.ndarray:
    """Relative error of diffusers' float32 σ(t) (module docstring)."""
    g = np.array([P32.gamma(2 * (t + 1)) for t in range(len(ab))])
    return 0.5 * (g * ab / (1.0 - ab) + g + 2 * P32.u) + 2 * P32.u


def _diffusers_timesteps(adapter, n: int) -> np.ndarray:
    """diffusers' inference timesteps for the configured spacing (floats; module docstring)."""
    c, T = adapter.config, adapter.config["num_train_timesteps"]
    spacing, offset = c["timestep_spacing"], c.get("steps_offset", 0)
    if adapter.name == "DPMSolverMultistepScheduler" and spacing != "trailing":
        if spacing == "linspace":
            return np.linspace(0, T - 1, n + 1).round()[::-1][:-1].astype(np.float64)
        return (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1] + offset
    if spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].astype(np.float64)
    if spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.float64) + offset
    return np.arange(T, 0, -T / n).round() - 1.0


def _karras_ends(adapter, sig: np.ndarray, inference: np.ndarray) -> tuple[float, float]:
    c = adapter.config
    if c.get("sigma_min") is not None and c.get("sigma_max") is not None:
        return c["sigma_min"], c["sigma_max"]
    if adapter.name == "DPMSolverMultistepScheduler":
        return float(sig[0]), float(sig[-1])
    return float(inference[-1]), float(inference[0])      # Euler, Heun: the inference list


def _vp_list(adapter, n: int, rule: str) -> tuple[np.ndarray, list[str]]:
    """The σ list by refdiff's claim (``rule="refdiff"``) or diffusers' rule, and what the
    rule changes (names of the conventions)."""
    c, T = adapter.config, adapter.config["num_train_timesteps"]
    sig, _ = _table(adapter)
    final = c.get("final_sigmas_type", "zero")
    if rule == "refdiff":
        ts = rd.inference_timesteps(T, n, c["timestep_spacing"], c.get("steps_offset", 0))
        levels = sig[np.asarray(ts)]
    else:
        ts = _diffusers_timesteps(adapter, n)
        levels = np.interp(ts, np.arange(T), sig)
    if c.get("use_karras_sigmas"):
        lo, hi = ((float(sig[0]), float(sig[-1])) if rule == "refdiff"
                  and c.get("sigma_min") is None else _karras_ends(adapter, sig, levels))
        levels = np.asarray(rd.karras_sigmas(n, lo, hi))[:-1] if n > 1 else np.array([hi])
    last = 0.0 if final == "zero" else float(sig[0])
    return np.append(levels, last), ts


def _flow_list(adapter, n: int, rule: str) -> np.ndarray:
    c, T = adapter.config, adapter.config["num_train_timesteps"]
    if c.get("use_dynamic_shifting"):
        mu = adapter.mu
        if c["time_shift_type"] == "linear":
            return np.asarray(rd.flow_times(n, shift=mu, t_min=1.0 / T))
        return np.asarray(rd.flow_times(n, mu=mu, t_min=1.0 / T))
    s = c["shift"]
    t_min = 1.0 / T if rule == "refdiff" else rd.time_shift(1.0 / T, s)
    return np.asarray(rd.flow_times(n, shift=s, t_min=t_min))


def _flow_bound(adapter) -> float:
    c = adapter.config
    s = math.exp(adapter.mu) if c.get("use_dynamic_shifting") else c["shift"]
    if c.get("use_dynamic_shifting") and c["time_shift_type"] == "linear":
        s = adapter.mu
    return (5 * max(1.0, 1.0 / s) + 2) * P32.u


def expected_list(adapter, n: int, rule: str = "refdiff") -> tuple[np.ndarray, np.ndarray]:
    """(levels, relative bound per level) of refdiff's claim or of diffusers' rule."""
    if adapter.name == "FlowMatchEulerDiscreteScheduler":
        levels = _flow_list(adapter, n, rule)
        return levels, np.full(levels.shape, _flow_bound(adapter))
    levels, ts = _vp_list(adapter, n, rule)
    sig, ab = _table(adapter)
    rel = _table_bound(ab)
    T = len(sig)
    if adapter.config.get("use_karras_sigmas"):
        own = rule != "refdiff" and adapter.name != "DPMSolverMultistepScheduler"
        lo, hi = (int(math.floor(float(np.min(ts)))), int(math.ceil(float(np.max(ts))))) \
            if own else (0, T - 1)
        per = np.full(len(levels) - 1, max(rel[max(lo, 0)], rel[min(hi, T - 1)]) + P32.u)
    else:
        t = np.clip(np.asarray(ts, dtype=np.float64), 0, T - 1)
        per = np.maximum(rel[np.floor(t).astype(int)], rel[np.ceil(t).astype(int)]) + P32.u
    return levels, np.append(per, rel[0] + P32.u)


# ----- the check ---------------------------------------------------------------------------

def _meets(actual: np.ndarray, levels: np.ndarray, rel: np.ndarray) -> tuple[bool, float]:
    if actual.shape != levels.shape:
        return False, math.inf
    err = np.abs(actual - levels)
    return bool(np.all(err <= rel * np.abs(levels))), float(np.max(err, initial=0.0))


def default_ns(adapter) -> list[int]:
    """n = 1 … 200 and 250, 500, 1000 (capped at T)."""
    T = adapter.config["num_train_timesteps"]
    return sorted({n for n in [*range(1, 201), 250, 500, 1000] if n <= T})


def check_configured_sigmas(adapter, ns=None) -> CheckResult:
    """The scheduler's own list (``adapter.sigma_list(n)``) for every n in ``ns``
    (:func:`default_ns`) within the float32 bound of refdiff's claimed construction (n for
    which refdiff has no list are skipped).

    The counterexample is the smallest failing n; the message counts the failing n. A failed
    result gets ``classification`` (:func:`explain_list`).
    """
    ns, t0, failed, first, tried = list(ns or default_ns(adapter)), time.perf_counter(), [], None, []
    for n in ns:
        try:
            levels, rel = expected_list(adapter, n)
        except ValueError:      # refdiff has no list for n (a leading offset leaving [0, T − 1])
            continue
        tried.append(n)
        actual = np.asarray(adapter.sigma_list(n), dtype=np.float64)
        ok, err = _meets(actual, levels, rel)
        if not ok:
            failed.append(n)
            first = first or (n, actual, levels, rel, err, len(tried), time.perf_counter() - t0)
    ns = tried
    name = f"configured {'flow times' if adapter.is_flow else 'sigmas'}"
    seconds = time.perf_counter() - t0
    if first is None:
        return CheckResult(name, True, len(ns), seconds, settings={"ns": (ns[0], ns[-1])})
    n, actual, levels, rel, err, at, when = first
    if actual.shape != levels.shape:
        where = f"set_timesteps({n}) gives {len(actual)} levels, expected {len(levels)}"
    else:
        bad = np.flatnonzero(np.abs(actual - levels) > rel * np.abs(levels))
        where = f"{len(bad)} level(s) outside the float32 bound, first at index {bad[0]}"
    rel_err = float(np.max(np.abs(actual - levels) / np.maximum(np.abs(levels), 1e-300))) \
        if actual.shape == levels.shape else math.inf
    repro = ["import numpy as np", "from refdiff.testing.diffusers_solvers import DiffusersSolver",
             "from refdiff.testing.diffusers_sigma_lists import expected_list",
             f"adapter = {adapter.source()}",
             f"actual = np.asarray(adapter.sigma_list({n}))",
             f"expected, rel = expected_list(adapter, {n})",
             "assert actual.shape == expected.shape and np.all(np.abs(actual - expected) <= rel * "
             "np.abs(expected)), (actual, expected)"]
    result = CheckResult(name, False, len(ns), seconds, counterexample={"n": n},
                         actual=actual.tolist(), expected=levels.tolist(), max_abs=err,
                         max_rel=rel_err, examples_to_fail=at, time_to_fail=when,
                         message=f"{len(failed)} of {len(ns)} values of n differ; first n = {n}: "
                                 f"{where}", reproduction="\n".join(repro),
                         settings={"ns": (ns[0], ns[-1]), "failed_n": failed})
    result.classification = explain_list(adapter, result)
    return result


def _rules(adapter, n: int) -> list[str]:
    """Names of diffusers' rules that change the list at n (vs refdiff's claim)."""
    c, out = adapter.config, []
    if adapter.is_flow:
        if not c.get("use_dynamic_shifting") and c["shift"] != 1.0:
            out.append(f"a bare set_timesteps(n) shifts twice: its linspace ends at the shifted "
                       f"table's smallest level shift(1/T) = {rd.time_shift(1 / c['num_train_timesteps'], c['shift']):.6g}, "
                       f"which is shifted again (flow_times(n, shift=s, t_min=time_shift(1/T, s)))")
        return out
    T, spacing = c["num_train_timesteps"], c["timestep_spacing"]
    ref = np.asarray(rd.inference_timesteps(T, n, spacing, c.get("steps_offset", 0)), dtype=float)
    own = _diffusers_timesteps(adapter, n)
    if own.shape != ref.shape or not np.array_equal(own, ref):
        out.append(_timestep_rule(adapter, spacing))
    if c.get("use_karras_sigmas") and c.get("sigma_min") is None and \
            adapter.name != "DPMSolverMultistepScheduler" and own.size and \
            (own.min() != 0 or own.max() != T - 1):
        out.append("the Karras ends are σ of the first and last inference timestep "
                   f"({own.max():g}, {own.min():g}), not σ(T − 1) and σ(0)")
    return out


def _timestep_rule(adapter, spacing: str) -> str:
    if adapter.name == "DPMSolverMultistepScheduler" and spacing != "trailing":
        return (f"DPM-Solver's {spacing!r} spacing takes n + 1 points and drops the last "
                f"(t = 0 is never visited)")
    if spacing == "linspace":
        return ("'linspace' timesteps are fractional (linspace(0, T − 1, n) in float32, "
                "not rounded) and σ is interpolated linearly in σ between table entries")
    if spacing == "trailing":
        return "trailing timesteps are round(arange(T, 0, -T/n)) - 1, a float-step arange"
    return "leading timesteps differ"


def explain_list(adapter, result: CheckResult) -> str:
    """``"finding: <rules>"`` when the list by diffusers' rules meets diffusers' list at the
    counterexample and some rule differs from refdiff's; else MATH."""
    from refdiff.testing.diffusers_adapters import CONVENTION, MATH

    n = result.counterexample["n"]
    rules = _rules(adapter, n)
    levels, rel = expected_list(adapter, n, rule="diffusers")
    ok, _ = _meets(np.asarray(result.actual), levels, rel)
    if not rules or not ok:
        return MATH
    return f"finding: diffusers' {adapter.name}: {'; '.join(rules)} ({CONVENTION})"


# ----- replays of the kit checks' counterexamples -------------------------------------------

def _levels_meet(actual, expected: list[float], bound) -> bool:
    from refdiff.testing.level_checks import compare_levels

    try:
        compare_levels(actual, expected, bound, "replay")
    except AssertionError:
        return False
    return True


def _explain_karras(adapter, result: CheckResult, options: dict) -> str | None:
    """Euler's ``final_sigmas_type="sigma_min"`` appends the table's σ(0), not the list's σ_min."""
    from refdiff.testing.level_checks import karras_bound

    ce, sig0 = result.counterexample, float(_table(adapter)[0][0])
    if options.get("final") != "sigma_min" or ce["sigma_min"] == sig0:
        return None
    n, lo, hi = ce["n"], ce["sigma_min"], ce["sigma_max"]
    expected = [float(v) for v in rd.karras_sigmas(n, lo, hi, options.get("rho", 7.0))][:-1] + [sig0]
    bound = karras_bound(n, lo, hi, options.get("rho", 7.0), options.get("dtype", "float64"), "zero")
    bound[-1] = (_table_bound(_table(adapter)[1])[0] + P32.u) * sig0
    if not _levels_meet(result.actual, expected, bound):
        return None
    return (f"final_sigmas_type='sigma_min' appends the table's σ(t = 0) = {sig0:.8g}, not "
            f"the Karras list's sigma_min = {lo!r}")


def _explain_flow_times(adapter, result: CheckResult, options: dict) -> str | None:
    """A bare set_timesteps(n) shifts the already-shifted table end again."""
    from refdiff.testing.level_checks import flow_times_bound

    n, s = result.counterexample["n"], result.counterexample["shift"]
    t_min = rd.time_shift(1.0 / adapter.config["num_train_timesteps"], s)
    if s == 1.0 or t_min == options.get("t_min"):
        return None
    expected = [float(v) for v in rd.flow_times(n, shift=s, t_min=t_min)]
    if not _levels_meet(result.actual, expected,
                        flow_times_bound(n, s, t_min, options.get("dtype", "float64"))):
        return None
    return (f"a bare set_timesteps(n) shifts twice: its linspace ends at the shifted table's "
            f"smallest level time_shift(1/T, {s!r}) = {t_min:.6g}, which is shifted again "
            f"(it equals flow_times(n, shift=s, t_min=time_shift(1/T, s)))")


def diffusers_lower_order_final(adapter, steps: int) -> bool:
    """Whether diffusers' DPM-Solver++ takes its last step of a ``steps``-step run first
    order: ``euler_at_final``, ``final_sigmas_type="zero"``, or ``lower_order_final`` with
    fewer than 15 steps."""
    c = adapter.config
    return bool(c["euler_at_final"] or c["final_sigmas_type"] == "zero"
                or (c["lower_order_final"] and steps < 15))


def _explain_dpm(adapter, result: CheckResult, options: dict) -> str | None:
    from refdiff.testing import solver_checks as SC
    from refdiff.testing.checks import compare

    ce = result.counterexample
    steps, claimed = len(ce["sigmas"]) - 1, bool(options.get("lower_order_final", False))
    own = diffusers_lower_order_final(adapter, steps)
    if own == claimed or result.actual is None:
        return None
    t = adapter.target
    x, mu, lam = (t.rounded(ce[k]) for k in ("x", "mean", "variance"))
    try:
        compare(result.actual, SC.dpmpp_reference(mu, lam, x, ce["sigmas"], own), dtype=t.dtype,
                device=t.device, bound=SC.dpmpp_bound(mu, lam, x, ce["sigmas"], t.dtype, own))
    except AssertionError:
        return None
    return (f"lower_order_final applies to runs of fewer than 15 steps only: the last step of "
            f"this {steps}-step run is {'first' if own else 'second'} order")


def explain_check(adapter, check: str, result: CheckResult, options: dict) -> str:
    """``"finding: ..."`` when a kit check's counterexample, replayed in refdiff under one of
    diffusers' conventions, meets diffusers' output within the check's own bound; else MATH."""
    from refdiff.testing.diffusers_adapters import CONVENTION, MATH

    if check == "timesteps":
        return explain_list(adapter, result)
    replay = {"karras": _explain_karras, "flow_times": _explain_flow_times,
              "dpmpp_2m": _explain_dpm}.get(check)
    found = replay(adapter, result, options) if replay and result.counterexample else None
    return MATH if found is None else f"finding: diffusers' {adapter.name}: {found} ({CONVENTION})"
