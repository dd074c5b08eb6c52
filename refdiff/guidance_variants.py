"""Guidance that is not plain CFG: adaptive projected guidance (APG) and CFG++.

Symbols: ``pred_uncond`` = D_u and ``pred_cond`` = D_c (two predictions of one space: the
denoised x̂_0 for APG as its paper writes it, or ε or v), Δ = D_c − D_u, ``scale`` = s (refdiff's
CFG scale: D_u + s·(D_c − D_u) is CFG, the paper's w), ``eta`` = η, ``norm_threshold`` = r,
``momentum`` = β, ``running`` = the running average Δ̄ that momentum carries from step to step;
for CFG++ ``lam`` = λ, ``eps_uncond`` = ε_u, ``eps_cond`` = ε_c, ᾱ_t and ᾱ_prev as in
:mod:`refdiff.steps`, σ_t = √((1 − ᾱ_t)/ᾱ_t).

Neither method is affine in the predictions as CFG is, so each has a space:

- APG projects Δ onto D_c. The projection depends on the space: the paper applies it to the
  denoised prediction (x̂_0); diffusers' guider applies it to whatever the network returns.
  :func:`apg` acts in the space of the arrays it is given; :func:`refdiff.sample` takes the space
  as an option (default x̂_0, the paper's).
- CFG++ is a DDIM step, written in ε: x̂_0 comes from the guided ε_λ, the renoising direction
  from the unconditional ε_u.

Both are pure: APG's momentum state goes in as ``running`` and comes out as the second result,
and the sampling loop carries it between steps.

References
----------
.. [APG] S. Sadat, O. Hilliges, R. M. Weber, "Eliminating Oversaturation and Artifacts of High
   Guidance Scales in Diffusion Models", arXiv:2410.02416v1, §3 and Algorithm 1.
.. [CFGPP] H. Chung, J. Kim, G. Y. Park, H. Nam, J. C. Ye, "CFG++: Manifold-constrained
   Classifier Free Guidance for Diffusion Models", arXiv:2406.08070v1, Algorithm 1 (DDIM).
.. [DDIM] J. Song, C. Meng, S. Ermon, arXiv:2010.02502v4, Eq. 12.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from refdiff import _xp
from refdiff._xp import cast, sqrt
from refdiff.classifier_free import _cfg
from refdiff.paths import PATH_PREDICTIONS
from refdiff.fused import _guided_inputs
from refdiff.steps import _ddim_step


@dataclass(frozen=True)
class APG:
    """The settings of adaptive projected guidance in :func:`refdiff.sample`
    (``Guidance(method="apg", apg=APG(...))``), checked at construction.

    Attributes
    ----------
    eta : float
        η, the weight of Δ's part parallel to D_c (default 0, the paper's recommendation;
        1 keeps it, diffusers' default).
    norm_threshold : float
        r ≥ 0; 0 = off (the paper pairs r with each model; diffusers' default is 15).
    momentum : float
        β in [−1, 1]; 0 = off (the paper's momentum is negative).
    space : {"sample", "epsilon", "v_prediction", "velocity"} or None
        Where Δ is projected: "sample" (x̂_0, the paper's denoised prediction; default), or
        None for the model's output space (diffusers' guider); "velocity" (u = ε − x_0) in
        :func:`refdiff.sample_ode` and :func:`refdiff.sample_flow` only.

    References
    ----------
    APG, arXiv:2410.02416v1, §3 and Algorithm 1.
    """

    eta: float = 0.0
    norm_threshold: float = 0.0
    momentum: float = 0.0
    space: str | None = "sample"

    def __post_init__(self) -> None:
        ranges: dict[str, tuple[float, float]] = {
            "eta": (-math.inf, math.inf), "norm_threshold": (0.0, math.inf),
            "momentum": (-1.0, 1.0)}
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if _xp.is_array(value):
                raise TypeError(f"APG.{name} must be a Python float, got an array")
            object.__setattr__(self, name, _xp.number(f"APG.{name}", value, lo=lo, hi=hi))
        if self.space is not None:
            _xp.choice("APG.space", self.space, PATH_PREDICTIONS)


# ----- bodies: math only ------------------------------------------------------------------

def _scaled(xp: Any, v: Any, axes: tuple[int, ...]) -> Any:
    """(v/m, m) with m = max|v| per sample (1 where v is all zero): sums of squares of v/m
    cannot overflow or underflow in float16/float32 where those of v would."""
    m = xp.max(xp.abs(v), axis=axes, keepdims=True)
    m = xp.where(m == 0, 1.0, m)
    return v / m, m


def _norm(xp: Any, v: Any, axes: tuple[int, ...]) -> Any:
    """‖v‖₂ per sample over ``axes``, computed as m·‖v/m‖ (exactly 0 for v = 0)."""
    v_hat, m = _scaled(xp, v, axes)
    return m * xp.sqrt(xp.sum(v_hat * v_hat, axis=axes, keepdims=True))


def _parallel(xp: Any, v: Any, u: Any, axes: tuple[int, ...]) -> Any:
    """The projection of v onto u per sample, (⟨v, u⟩/⟨u, u⟩)·u; 0 where u = 0 (nothing to
    project onto: then all of v is orthogonal)."""
    v_hat, m_v = _scaled(xp, v, axes)
    u_hat, _ = _scaled(xp, u, axes)
    uu = xp.sum(u_hat * u_hat, axis=axes, keepdims=True)
    vu = xp.sum(v_hat * u_hat, axis=axes, keepdims=True)
    coef = xp.where(uu == 0, 0.0, vu / xp.where(uu == 0, 1.0, uu))
    return (m_v * coef) * u_hat                                     # (⟨v,u⟩/⟨u,u⟩)·u


def _apg(xp: Any, d_u: Any, d_c: Any, s: Any, eta: float, r: float, beta: float,
         running: Any) -> Any:
    delta = d_c - d_u                                               # Alg. 1: ΔD = D_c − D_u
    if beta != 0 and running is not None:
        delta = delta + beta * running                              # Alg. 1: momentum, Δ̄
    if eta == 1 and r == 0 and (beta == 0 or running is None):      # update = Δ: CFG itself
        return _cfg(xp, d_u, d_c, s), delta
    new_running = delta
    axes = tuple(range(1, delta.ndim))
    if r > 0:                                                       # Alg. 1: ‖ΔD‖ ≤ r
        norm = _norm(xp, delta, axes)
        delta = delta * xp.where(norm > r, r / xp.where(norm > r, norm, 1.0), 1.0)
    par = _parallel(xp, delta, d_c, axes)                           # Eq. 6: ΔD∥ onto D_c
    update = (delta - par) + eta * par                              # Eq. 8: ΔD⊥ + η·ΔD∥
    (s,) = cast(xp, d_c, s)
    if not _xp.is_array(s) and s == 1:
        return d_c * 1.0, new_running                               # no guidance: D_c exactly
    return d_c + (s - 1.0) * update, new_running                    # Eq. 9: D_c + (w − 1)·update


def _cfgpp_ddim_step(xp: Any, x_t: Any, eps_u: Any, eps_c: Any, lam: Any, ab_t: Any,
                     ab_prev: Any) -> Any:
    x_prev = _ddim_step(xp, x_t, eps_u, ab_t, ab_prev, 0.0, None, None, True, None)
    if not _xp.is_array(lam) and lam == 0:
        return x_prev                                               # λ = 0: unconditional DDIM
    # x̂_0(ε_λ) = x̂_0(ε_u) − σ_t·λ·(ε_c − ε_u): only the x̂_0 term sees ε_λ (Alg. 1, line 4)
    c = -sqrt(xp, ab_prev) * sqrt(xp, (1.0 - ab_t) / ab_t)          # −√ᾱ_prev·σ_t
    (c,) = cast(xp, x_t, c * lam)
    return x_prev + c * (eps_c - eps_u)


# ----- public functions -------------------------------------------------------------------

def apg(pred_uncond: Any, pred_cond: Any, scale: Any, *, eta: float = 0.0,
        norm_threshold: float = 0.0, momentum: float = 0.0, running: Any = None) -> Any:
    """Adaptive projected guidance: CFG's update split along D_c, the parallel part down-weighted.

    .. math::
        Δ = D_c − D_u\\ (+\\,β\\,\\bar Δ_{prev}),\\quad
        Δ ← Δ·\\min(1, r/‖Δ‖),\\quad
        Δ_∥ = \\frac{⟨Δ, D_c⟩}{⟨D_c, D_c⟩}\\,D_c,\\quad Δ_⊥ = Δ − Δ_∥,

    .. math:: \\tilde D = D_c + (s − 1)\\,(Δ_⊥ + η\\,Δ_∥)

    Norms and inner products are per sample, over all non-batch axes. With η = 1, r = 0 and
    no momentum the update is Δ and the result is :func:`refdiff.cfg` bit for bit (the body
    then calls it). s = 1 returns D_c exactly.

    Parameters
    ----------
    pred_uncond, pred_cond : arrays, shape (B, ...) with at least one axis after the batch
        D_u and D_c, in one space (the paper's: the denoised prediction x̂_0).
    scale : float or array, shape () or (B,)
        s (the paper's w; diffusers' ``guidance_scale``); any finite value.
    eta : float
        η, the weight of the parallel part (the paper recommends 0; 1 keeps it, diffusers'
        default).
    norm_threshold : float
        r ≥ 0: Δ is rescaled to norm r where its norm exceeds r (0 = off).
    momentum : float
        β in [−1, 1] (the paper uses a negative β); 0 = off.
    running : array like ``pred_cond``, optional
        Δ̄ returned by the previous step (None at the first step, or without momentum).

    Returns
    -------
    guided : array, shape, dtype and device of ``pred_cond``
    running : array
        Δ̄ = Δ + β·Δ̄_prev before the norm threshold, to pass to the next step.

    Notes
    -----
    Numerical choices: the norm and the projection coefficient are sums over v/max|v| per
    sample, so they cannot overflow in float16 where the plain sums of squares would; where
    D_c = 0 the parallel part is taken as 0 (nothing to project onto), where ‖Δ‖ ≤ r nothing
    is rescaled. diffusers' ``normalized_guidance`` returns D_u + s·update by default
    (``use_original_formulation=False``), which equals this only when update = Δ (η = 1, no
    threshold, no momentum); with ``use_original_formulation=True`` it returns
    D_c + s·update, this formula at s − 1 in place of s.

    References
    ----------
    APG, arXiv:2410.02416v1, Eqs. 6–9 and Algorithm 1.

    Examples
    --------
    >>> import numpy as np
    >>> d_u, d_c = np.array([[1.0, 1.0]]), np.array([[2.0, 0.0]])
    >>> guided, _ = apg(d_u, d_c, 3.0)  # Δ = (1, −1); Δ∥ = (1, 0), Δ⊥ = (0, −1)
    >>> guided
    array([[ 2., -2.]])
    """
    xp = _xp.arrays("pred_cond", pred_cond, pred_uncond=pred_uncond, running=running,
                    optional=("running",))
    if pred_cond.ndim < 2:
        raise ValueError(f"pred_cond must have a batch axis and at least one more, got shape "
                         f"{tuple(pred_cond.shape)}")
    s = _xp.any_real(xp, "scale", scale, pred_cond)
    a = APG(eta, norm_threshold, momentum)  # the same checks (names prefixed "APG.")
    return _apg(xp, pred_uncond, pred_cond, s, a.eta, a.norm_threshold, a.momentum, running)


def cfgpp_ddim_step(x_t: Any, eps_uncond: Any, eps_cond: Any, lam: Any, alpha_bar_t: Any,
                    alpha_bar_prev: Any) -> Any:
    """One CFG++ DDIM step: x̂_0 from the guided ε_λ, renoised with the unconditional ε_u.

    .. math::
        ε_λ = ε_u + λ\\,(ε_c − ε_u),\\quad
        \\hat x_0 = \\frac{x_t − \\sqrt{1 − \\bar α_t}\\,ε_λ}{\\sqrt{\\bar α_t}},\\quad
        x_{prev} = \\sqrt{\\bar α_{prev}}\\,\\hat x_0 + \\sqrt{1 − \\bar α_{prev}}\\,ε_u

    Deterministic (DDIM with η = 0). λ = 0, or ε_c = ε_u, gives :func:`refdiff.ddim_step` on
    ε_u bit for bit. The step is evaluated as ``ddim_step(x_t, ε_u, ...)`` plus the one term
    that sees the guidance, −√ᾱ_prev·σ_t·λ·(ε_c − ε_u) with σ_t = √((1 − ᾱ_t)/ᾱ_t); the
    same algebra shows that CFG++ at λ is plain CFG-DDIM at the step's scale
    s = λ·σ_t/(σ_t − σ_prev), which is larger than λ and grows as the steps get finer.

    Parameters
    ----------
    x_t, eps_uncond, eps_cond : arrays, shape (B, ...)
        ε-predictions (convert an x_0- or v-model's output with
        :func:`refdiff.predict_x0_eps` first).
    lam : float or array, shape () or (B,)
        λ in [0, 1] (checked on the host).
    alpha_bar_t, alpha_bar_prev : float or array, shape () or (B,)
        ᾱ of the step's source and destination levels, ᾱ_t < ᾱ_prev ≤ 1; ᾱ_t = 0 is refused.

    Returns
    -------
    x_prev : array, shape, dtype and device of ``x_t``

    Notes
    -----
    Index convention: ᾱ_t is the level of the timestep the model is evaluated at and ᾱ_prev
    that of the next listed timestep (1 after the last), as for every sampler in refdiff.
    CFG++'s official DDIM code prepends 1.0 to its ᾱ table, so its level for a timestep
    sits one place away from this convention; to reproduce it, pass its ᾱ values (the step
    takes values, not indices).

    References
    ----------
    CFGPP, arXiv:2406.08070v1, Algorithm 1; DDIM, arXiv:2010.02502v4, Eq. 12.

    Examples
    --------
    >>> import numpy as np
    >>> x = cfgpp_ddim_step(np.ones(1), np.zeros(1), np.ones(1), 0.5, 0.25, 1.0)
    >>> x  # x̂_0 = (1 − √0.75·0.5)/0.5; renoised with ε_u = 0 at ᾱ_prev = 1
    array([1.1339746])
    """
    xp, ab_t, ab_prev, _ = _guided_inputs(x_t, eps_uncond, eps_cond, None, 0.0, alpha_bar_t,
                                          alpha_bar_prev)
    lam = _xp.level(xp, "lam", lam, x_t)
    return _cfgpp_ddim_step(xp, x_t, eps_uncond, eps_cond, lam, ab_t, ab_prev)
