"""Hand-written σ-space and flow sampler candidates with planted slips (``bug=``) and correct
controls written differently from refdiff.

In the manner of :mod:`refdiff.testing.guidance_mutants`: each of :data:`SOLVER_MUTANTS` must
be caught by the public check named with it (:mod:`refdiff.testing.solver_checks`,
:mod:`refdiff.testing.level_checks`), each of :data:`SOLVER_CONTROLS` must pass (on NumPy
float64, NumPy float32 and torch float32). :func:`run_solver_case` runs one case. Every
candidate has its check's adapter signature; σ, t are Python floats, arrays any backend.

References
----------
.. [EDM] T. Karras et al., arXiv:2206.00364v2, Eq. 5, Algorithm 1.
.. [DPMPP] C. Lu et al., arXiv:2211.01095v2, Algorithm 2.
.. [DDIM] Song, Meng, Ermon, arXiv:2010.02502v4, Eqs. 12, 16.
.. [SD3] P. Esser et al., arXiv:2403.03206v1, Eq. 23.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from refdiff.testing._engine import CheckResult
from refdiff.testing.checks import Target
from refdiff.testing.level_checks import check_flow_times, check_karras_sigmas
from refdiff.testing.mutants import Case  # a candidate, the check that judges it, its options
from refdiff.testing.solver_checks import (check_dpmpp_2m, check_euler_ancestral_step,
                                           check_euler_step, check_flow_euler_step,
                                           check_heun_step)


def euler_candidate(bug: str | None = None, *, form: str = "derivative") -> Callable:
    """Euler, k-diffusion style: d = (x − D)/σ, x' = x + (σ' − σ)·d. ``form="ddim"``: DDIM
    η = 0 on the VP path (√ᾱ = 1/√(1 + σ²)). Bug ``"sign"``: x + (σ − σ')·d."""
    def step(x, denoised, sigma, sigma_next):
        if form == "ddim":
            a, a_n = 1 / math.sqrt(1 + sigma**2), 1 / math.sqrt(1 + sigma_next**2)
            eps = (a * x - a * denoised) / (sigma * a)
            return (a_n * denoised + sigma_next * a_n * eps) / a_n
        d = (x - denoised) / sigma
        return x + ((sigma - sigma_next) if bug == "sign" else (sigma_next - sigma)) * d
    return step


def heun_candidate(bug: str | None = None) -> Callable:
    """Heun, EDM Algorithm 1 as written. Bugs: ``"correct_at_zero"`` (the correction also on
    the step to σ' = 0: divides by σ'), ``"no_correction"`` (plain Euler everywhere)."""
    def step(denoiser, x, sigma, sigma_next):
        d = (x - denoiser(x, sigma)) / sigma
        x_e = x + (sigma_next - sigma) * d
        if bug == "no_correction" or (sigma_next == 0 and bug != "correct_at_zero"):
            return x_e
        with np.errstate(divide="ignore", invalid="ignore"):
            d_e = (x_e - denoiser(x_e, sigma_next)) / sigma_next
        return x + (sigma_next - sigma) * (0.5 * d + 0.5 * d_e)
    return step


def euler_ancestral_candidate(bug: str | None = None, *, form: str = "kdiff") -> Callable:
    """Euler-ancestral with k-diffusion's split. ``form="ddim"``: DDIM with η on the VP path,
    rescaled. Bugs: ``"eta_squared"`` (η² in σ_up), ``"down_linear"`` (σ_down = σ' − σ_up)."""
    def step(x, denoised, sigma, sigma_next, *, eta, noise):
        if form == "ddim":
            return _ddim_ancestral(x, denoised, sigma, sigma_next, eta, noise)
        w = eta**2 if bug == "eta_squared" else eta
        up = min(sigma_next, w * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
        down = sigma_next - up if bug == "down_linear" else math.sqrt(sigma_next**2 - up**2)
        return x + (down - sigma) * ((x - denoised) / sigma) + up * noise
    return step


def _ddim_ancestral(x, denoised, sigma, sigma_next, eta, noise):
    """DDIM Eqs. 12, 16 on ᾱ = 1/(1 + σ²), with 1 − ᾱ = σ²/(1 + σ²) written without
    cancellation; x_VP = √ᾱ·x, back by 1/√ᾱ'."""
    a, a_n = 1 / math.sqrt(1 + sigma**2), 1 / math.sqrt(1 + sigma_next**2)
    b, b_n = sigma * a, sigma_next * a_n
    s = min(b_n, eta * b_n / b * math.sqrt((sigma**2 - sigma_next**2) / (1 + sigma**2)))
    eps = (a * x - a * denoised) / b
    return (a_n * denoised + math.sqrt(max(b_n**2 - s**2, 0.0)) * eps + s * noise) / a_n


def flow_euler_candidate(bug: str | None = None, *, form: str = "velocity") -> Callable:
    """Flow Euler x + (t' − t)·u. ``form="x0eps"``: x̂_0 = x − t·u, ε̂ = x + (1 − t)·u,
    x' = (1 − t')·x̂_0 + t'·ε̂. Bug ``"sign"``: x + (t − t')·u."""
    def step(x, velocity, t, t_next):
        if form == "x0eps":
            return (1 - t_next) * (x - t * velocity) + t_next * (x + (1 - t) * velocity)
        return x + ((t - t_next) if bug == "sign" else (t_next - t)) * velocity
    return step


def dpmpp_2m_candidate(bug: str | None = None, *, form: str = "kdiff",
                  lower_order_final: bool = False) -> Callable:
    """DPM-Solver++(2M) in k-diffusion's variables (t = −log σ, r = h_prev/h). ``form="vp"``:
    diffusers' VP form (α = 1/√(1 + σ²), σ_VP = σα, λ = log α − log σ_VP, the midpoint
    D_1 = (D − D_prev)/r). Bugs: ``"ratio_inverted"`` (r = h/h_prev), ``"first_order"``
    (never second order), ``"final_second"`` (the last step second order, even when
    ``lower_order_final`` is claimed and at σ' = 0)."""
    def run(denoiser, x, sigmas):
        if form == "vp":
            return _dpmpp_vp(denoiser, x, sigmas, lower_order_final)
        prev, n = None, len(sigmas) - 1
        for i in range(n):
            s, s_n = sigmas[i], sigmas[i + 1]
            d = denoiser(x, s)
            last = i == n - 1
            first = prev is None or bug == "first_order" or (
                (s_n == 0 or lower_order_final) and last and bug != "final_second")
            if first:
                x = (s_n / s) * x + (1 - s_n / s) * d
            else:
                h, h_prev = math.log(s) - math.log(s_n), math.log(sigmas[i - 1]) - math.log(s)
                r = h / h_prev if bug == "ratio_inverted" else h_prev / h
                x = (s_n / s) * x - math.expm1(-h) * ((1 + 1 / (2 * r)) * d - 1 / (2 * r) * prev)
            prev = d
        return x
    return run


def _dpmpp_vp(denoiser, x, sigmas, lower_order_final):
    """diffusers' form: x_t = (σ_t/σ_s)·x_s − α_t(e^{−h} − 1)·(D_0 + ½·D_1), on x_VP."""
    def levels(sig):
        a = 1 / math.sqrt(1 + sig**2)
        return a, sig * a, (math.log(a) - math.log(sig * a)) if sig > 0 else math.inf
    n = len(sigmas) - 1
    a, s_vp, lam = levels(sigmas[0])
    x, prev, h_prev = a * x, None, None
    for i in range(n):
        d = denoiser(x / a, sigmas[i])
        a_n, s_vp_n, lam_n = levels(sigmas[i + 1])
        h = lam_n - lam
        coef = -1.0 if h == math.inf else a_n * (math.exp(-h) - 1)
        x_next = (s_vp_n / s_vp) * x - coef * d
        if prev is not None and sigmas[i + 1] > 0 and not (lower_order_final and i == n - 1):
            x_next = x_next - 0.5 * coef * ((d - prev) / (h_prev / h))
        x, prev, h_prev, (a, s_vp, lam) = x_next, d, h, (a_n, s_vp_n, lam_n)
    return x / a


def karras_candidate(bug: str | None = None, *, precision: str = "float64") -> Callable:
    """EDM's σ list (Eq. 5), then 0. ``precision="float32"``: the ramp and the power in
    float32 (k-diffusion's torch.linspace default). Bugs: ``"rho_inverted"`` (exponent 1/ρ),
    ``"linear"`` (σ linear from σ_max to σ_min), ``"final_sigma_min"`` (σ_min appended)."""
    def sigmas(n, sigma_min, sigma_max, rho=7.0):
        f = np.linspace(0.0, 1.0, n, dtype=precision)
        if bug == "rho_inverted":
            rho = 1 / rho
        if bug == "linear":
            out = sigma_max + f * (sigma_min - sigma_max)
        else:
            a, b = (np.asarray(v, dtype=precision) ** (1 / rho) for v in (sigma_max, sigma_min))
            out = (a + f * (b - a)) ** np.asarray(rho, dtype=precision)
        return [float(v) for v in out] + [sigma_min if bug == "final_sigma_min" else 0.0]
    return sigmas


def flow_times_candidate(bug: str | None = None, *, t_min: float = 1e-3) -> Callable:
    """SD3-shifted flow times, then 0. Bugs: ``"shift_twice"``, ``"final_sigma_min"``
    (the shifted t_min appended instead of 0)."""
    def times(n, shift):
        t = np.linspace(1.0, t_min, n)
        for _ in range(2 if bug == "shift_twice" else 1):
            t = shift * t / (1 + (shift - 1) * t)
        return [float(v) for v in t] + [float(t[-1]) if bug == "final_sigma_min" else 0.0]
    return times


# ----- the correct candidates, as plain functions with the adapter signatures -----------------

def hand_euler(x, denoised, sigma, sigma_next):
    """A correct Euler step for :func:`~refdiff.testing.solver_checks.check_euler_step`."""
    return euler_candidate()(x, denoised, sigma, sigma_next)


def hand_heun(denoiser, x, sigma, sigma_next):
    """A correct Heun step for :func:`~refdiff.testing.solver_checks.check_heun_step`."""
    return heun_candidate()(denoiser, x, sigma, sigma_next)


def hand_euler_ancestral(x, denoised, sigma, sigma_next, *, eta, noise):
    """A correct Euler-ancestral step for
    :func:`~refdiff.testing.solver_checks.check_euler_ancestral_step`."""
    return euler_ancestral_candidate()(x, denoised, sigma, sigma_next, eta=eta, noise=noise)


def hand_flow_euler(x, velocity, t, t_next):
    """A correct flow Euler step for :func:`~refdiff.testing.solver_checks.check_flow_euler_step`."""
    return flow_euler_candidate()(x, velocity, t, t_next)


def hand_dpmpp_2m(denoiser, x, sigmas):
    """A correct DPM-Solver++(2M) run for :func:`~refdiff.testing.solver_checks.check_dpmpp_2m`."""
    return dpmpp_2m_candidate()(denoiser, x, sigmas)


def hand_karras(n, sigma_min, sigma_max):
    """A correct Karras list for :func:`~refdiff.testing.level_checks.check_karras_sigmas`."""
    return karras_candidate()(n, sigma_min, sigma_max)


def hand_flow_times(n, shift):
    """Correct flow times for :func:`~refdiff.testing.level_checks.check_flow_times`."""
    return flow_times_candidate()(n, shift)


_ETA = {"eta": 0.5}
_LOW = {"lower_order_final": True}

SOLVER_MUTANTS = [
    Case("Euler: (sigma - sigma') sign slip", check_euler_step, lambda s: euler_candidate("sign")),
    Case("Heun: correction at sigma'=0", check_heun_step, lambda s: heun_candidate("correct_at_zero")),
    Case("Heun: no correction (Euler)", check_heun_step, lambda s: heun_candidate("no_correction")),
    Case("ancestral: eta^2 in sigma_up", check_euler_ancestral_step,
         lambda s: euler_ancestral_candidate("eta_squared"), _ETA),
    Case("ancestral: sigma_down = sigma' - sigma_up", check_euler_ancestral_step,
         lambda s: euler_ancestral_candidate("down_linear")),
    Case("flow Euler: (t - t') sign slip", check_flow_euler_step, lambda s: flow_euler_candidate("sign")),
    Case("DPM++2M: r = h/h_prev", check_dpmpp_2m, lambda s: dpmpp_2m_candidate("ratio_inverted")),
    Case("DPM++2M: never second order", check_dpmpp_2m, lambda s: dpmpp_2m_candidate("first_order")),
    Case("DPM++2M: last step second order (lower_order_final)", check_dpmpp_2m,
         lambda s: dpmpp_2m_candidate("final_second", lower_order_final=True), _LOW),
    Case("Karras: rho inverted", check_karras_sigmas, lambda s: karras_candidate("rho_inverted")),
    Case("Karras: linear ramp", check_karras_sigmas, lambda s: karras_candidate("linear")),
    Case("Karras: last step to sigma_min", check_karras_sigmas,
         lambda s: karras_candidate("final_sigma_min")),
    Case("flow times: shift applied twice", check_flow_times, lambda s: flow_times_candidate("shift_twice")),
    Case("flow times: last step to t_min", check_flow_times,
         lambda s: flow_times_candidate("final_sigma_min")),
]

SOLVER_CONTROLS = [
    Case("Euler: x + (sigma'-sigma)*d", check_euler_step, lambda s: euler_candidate()),
    Case("Euler: DDIM on the VP path", check_euler_step, lambda s: euler_candidate(form="ddim")),
    Case("Heun: EDM Algorithm 1", check_heun_step, lambda s: heun_candidate()),
    Case("ancestral: k-diffusion split", check_euler_ancestral_step, lambda s: euler_ancestral_candidate()),
    Case("ancestral: DDIM eta=1", check_euler_ancestral_step,
         lambda s: euler_ancestral_candidate(form="ddim")),
    Case("ancestral: DDIM eta=0.5", check_euler_ancestral_step,
         lambda s: euler_ancestral_candidate(form="ddim"), _ETA),
    Case("flow Euler: velocity", check_flow_euler_step, lambda s: flow_euler_candidate()),
    Case("flow Euler: via x0/eps", check_flow_euler_step, lambda s: flow_euler_candidate(form="x0eps")),
    Case("DPM++2M: k-diffusion form", check_dpmpp_2m, lambda s: dpmpp_2m_candidate()),
    Case("DPM++2M: diffusers VP form", check_dpmpp_2m, lambda s: dpmpp_2m_candidate(form="vp")),
    Case("DPM++2M: VP form, lower_order_final", check_dpmpp_2m,
         lambda s: dpmpp_2m_candidate(form="vp", lower_order_final=True), _LOW),
    Case("Karras: float64", check_karras_sigmas, lambda s: karras_candidate()),
    Case("Karras: float32 arithmetic", check_karras_sigmas,
         lambda s: karras_candidate(precision="float32"), {"dtype": "float32"}),
    Case("flow times: float64", check_flow_times, lambda s: flow_times_candidate()),
]

LEVEL_CHECKS = (check_karras_sigmas, check_flow_times)


def run_solver_case(case: Case, *, seed: int | None = None, max_examples: int | None = None,
                    target: Target | None = None) -> CheckResult:
    """Run ``case.check`` on the case's candidate; ``target`` applies to the array checks
    (the level checks take lists of floats: their precision is the case's ``dtype``)."""
    kwargs = dict(case.options, seed=seed)
    if max_examples is not None:
        kwargs["max_examples"] = max_examples
    if target is not None and case.check not in LEVEL_CHECKS:
        kwargs["target"] = target
    return case.check(case.make(None), **kwargs)


def slip_table(max_examples: int = 50) -> str:
    """A Markdown table: each slip, the examples to its first failure (CI search, and seed 0),
    and each control's worst error/bound ratio over NumPy float64, NumPy float32 and torch
    float32 (``python -m refdiff.testing.solver_mutants``)."""
    from refdiff.testing.tolerance import observe
    rows = ["| slip | check | examples to first failure (CI / seed 0) |", "|---|---|---|"]
    for case in SOLVER_MUTANTS:
        found = [run_solver_case(case, seed=s, max_examples=max_examples) for s in (None, 0)]
        rows.append(f"| {case.name} | {case.check.__name__} | " + " / ".join(
            "missed" if r.passed else str(r.examples_to_fail) for r in found) + " |")
    rows += ["", "| control | passed | max error/bound |", "|---|---|---|"]
    for case in SOLVER_CONTROLS:
        ratios, ok = [0.0], True
        targets = [Target()] if case.check in LEVEL_CHECKS else [
            Target(), Target("numpy", "float32"), Target("torch", "float32")]
        with observe(lambda rec: ratios.append(rec.get("ratio", 0.0))):
            for target in targets:
                ok &= run_solver_case(case, target=target, max_examples=max_examples).passed
        rows.append(f"| {case.name} | {ok} | {max(ratios):.3g} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(slip_table())
