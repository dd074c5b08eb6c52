"""One reverse step of DDPM or DDIM, and the DDIM inversion step, from (ᾱ_t, ᾱ_prev).

Symbols: ``x_t`` = x_t, ``eps`` = ε̂ (the model's noise prediction), ``x0_hat`` = x̂_0,
``alpha_bar_t`` = ᾱ_t, ``alpha_bar_prev`` = ᾱ_prev (the level the step goes to: the next
element of the timestep list, or 1 after the last one), ``eta`` = η, ``noise`` = z ~ N(0, I)
(the step noise; ε is the forward-process noise), β' = 1 − ᾱ_t/ᾱ_prev,
β̃ = (1−ᾱ_prev)/(1−ᾱ_t)·β'.

The steps take ᾱ values, not indices, so a respaced schedule needs nothing special. Noise is
always passed in; the sampling loop passes zeros on its last step ("is this the last step"
decides, never "t > 0").

DDPM's variance σ² (``variance_type``): β̃ or β' (fixed), or from the model's variance
channel v (``var_values``): exp(v) ("learned") or IDDPM's interpolation of log β' and log β̃
("learned_range"); :func:`ddpm_mean_variance` states the last-step end case (β̃ = 0).

Clipping x̂_0 (``clip_x0 = b`` clips to [−b, b]; ``clip_x0 = DynamicThreshold(...)``
thresholds per sample, Imagen's dynamic thresholding) has two conventions for DDIM:
``rederive_eps=True`` recomputes ε̂ from the clipped x̂_0 (guided-diffusion, GLIDE);
``rederive_eps=False`` keeps the model's ε̂ (diffusers' DDIMScheduler). DDPM's posterior mean
is written with x̂_0 and x_t, so a clipped x̂_0 enters it directly (both guided-diffusion
and diffusers' DDPMScheduler do this).

Each public step checks its arguments once (:func:`_step_inputs`, :func:`_check_eta`) and
calls its private body, which is only the algorithm; the sampling loop calls the bodies.

Precision rule: when x̂_0 is not needed (no ``clip_x0`` and no ``x0_hat``), a step never forms
x̂_0: its term c·x̂_0 is evaluated as A·(x_t − √(1−ᾱ_t)·ε̂) with A = c/√ᾱ_t computed from ᾱ in
float64 and cast once to the dtype of x (:func:`_x0_term`). No intermediate then exceeds
|x_t| + |ε̂| or the term itself, so a float16 step whose float64 result fits float16 does not
overflow (x̂_0 alone would at cosine t = 999, where 1/√ᾱ ≈ 2·10⁴). With clipping, x̂_0 is
formed, as the clip needs it.

References
----------
.. [DDPM] J. Ho, A. Jain, P. Abbeel, arXiv:2006.11239v2, Algorithm 2, Eqs. 6–7, Eq. 15.
.. [DDIM] J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models",
   arXiv:2010.02502v4, Eq. 12 (the step) and Eq. 16 (σ with η).
.. [IDDPM] A. Nichol, P. Dhariwal, arXiv:2102.09672v1, §3.1 (the "fixed_large" variance β')
   and Eq. 15 (the learned-range variance).
"""

from __future__ import annotations

import math
from typing import Any

from refdiff import _xp
from refdiff._xp import cast, sqrt
from refdiff.forward import (_eps_from_x0, _posterior_coefficients, _posterior_mean,
                             _q_sample, _x0_from_eps)
from refdiff.thresholding import DynamicThreshold, _dynamic_threshold

Clip = float | DynamicThreshold | None  # a checked clip_x0: a bound b, a threshold, or none

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
LEARNED_VARIANCES = ("learned", "learned_range")
BETA_TILDE_FLOOR = 1e-20  # diffusers' floor of β̃ before its logarithm (learned_range)


# ----- bodies: math only ------------------------------------------------------------------

def _x0_eps(xp: Any, x_t: Any, eps: Any, ab_t: Any, x0_hat: Any, clip_x0: Clip,
            rederive_eps: bool) -> Any:
    """x̂_0 (given, or from ε̂), clipped or thresholded if asked, and ε̂ re-derived if asked."""
    if x0_hat is None:
        x0_hat = _x0_from_eps(xp, x_t, eps, ab_t)                   # "predicted x_0"
    if clip_x0 is not None:
        if isinstance(clip_x0, DynamicThreshold):                   # Imagen §2.3
            x0_hat = _dynamic_threshold(xp, x0_hat, clip_x0)
        else:                                                       # static clip to [−b, b]
            x0_hat = xp.clip(x0_hat, -clip_x0, clip_x0)
        if rederive_eps:
            eps = _eps_from_x0(xp, x_t, x0_hat, ab_t)
    return x0_hat, eps


def _ddim_ratio(ab_t: Any, ab_prev: Any, eta: float) -> Any:
    """r = σ²/(1 − ᾱ_prev) = η²·β'/(1 − ᾱ_t); at most η², since β' ≤ 1 − ᾱ_t."""
    return eta**2 * (1.0 - ab_t / ab_prev) / (1.0 - ab_t)


def _ddim_sigma(xp: Any, ab_t: Any, ab_prev: Any, eta: float) -> Any:
    """(σ, √(1 − ᾱ_prev − σ²)) of DDIM Eq. 16 and Eq. 12, in the precision of ᾱ."""
    r = _ddim_ratio(ab_t, ab_prev, eta)
    one_minus_r = xp.clip(1.0 - r, min=0.0) if _xp.is_array(r) else max(1.0 - r, 0.0)
    sigma = sqrt(xp, r * (1.0 - ab_prev))                           # DDIM Eq. 16
    return sigma, sqrt(xp, (1.0 - ab_prev) * one_minus_r)           # coefficient of ε̂, Eq. 12


def _x0_term(xp: Any, x_t: Any, eps: Any, ab_t: Any, c_x0: Any) -> Any:
    """c_x0·x̂_0 without forming x̂_0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t: (c_x0/√ᾱ_t)·(x_t − √(1−ᾱ_t)·ε̂).

    Numerical choice: the coefficient c_x0/√ᾱ_t is formed in float64 (or ᾱ's dtype) and cast
    once, so no intermediate is larger than |x_t| + |ε̂| or than the term itself; x̂_0 alone
    carries the factor 1/√ᾱ_t (≈ 2·10⁴ at cosine t = 999), which overflows float16 where the
    step's result fits.
    """
    a, b = cast(xp, x_t, c_x0 / sqrt(xp, ab_t), sqrt(xp, 1.0 - ab_t))
    return a * (x_t - b * eps)                                      # DDPM Eq. 15, times c_x0


def _ddim_step(xp: Any, x_t: Any, eps: Any, ab_t: Any, ab_prev: Any, eta: float, noise: Any,
               clip_x0: Clip, rederive_eps: bool, x0_hat: Any) -> Any:
    sigma, dir_coef = _ddim_sigma(xp, ab_t, ab_prev, eta)           # Eq. 16
    if x0_hat is None and clip_x0 is None:                          # no x̂_0 needed: fold it in
        dir_coef, sigma = cast(xp, x_t, dir_coef, sigma)
        x_prev = _x0_term(xp, x_t, eps, ab_t, sqrt(xp, ab_prev)) + dir_coef * eps  # Eq. 12
    else:
        x0_hat, eps = _x0_eps(xp, x_t, eps, ab_t, x0_hat, clip_x0, rederive_eps)
        a_prev, dir_coef, sigma = cast(xp, x_t, sqrt(xp, ab_prev), dir_coef, sigma)
        x_prev = a_prev * x0_hat + dir_coef * eps                   # Eq. 12: x̂_0 term + direction
    return x_prev + sigma * noise if eta > 0 else x_prev            # Eq. 12: random noise σ·z


def _ddpm_mean_variance(xp: Any, x_t: Any, eps: Any, ab_t: Any, ab_prev: Any, variance_type: str,
                        clip_x0: Clip, x0_hat: Any, var_values: Any = None,
                        zero_beta_tilde: float | None = None) -> Any:
    c0, ct, beta_tilde, beta_step = _posterior_coefficients(xp, ab_t, ab_prev)
    if x0_hat is None and clip_x0 is None:                          # no x̂_0 needed: fold it in
        (ct_,) = cast(xp, x_t, ct)
        mean = _x0_term(xp, x_t, eps, ab_t, c0) + ct_ * x_t         # DDPM Eq. 7 at x̂_0 (Eq. 15)
    else:
        x0_hat, _ = _x0_eps(xp, x_t, eps, ab_t, x0_hat, clip_x0, rederive_eps=False)
        mean = _posterior_mean(xp, x0_hat, x_t, c0, ct)             # DDPM Eq. 7 at x̂_0
    variance = _ddpm_variance(xp, x_t, ab_prev, beta_tilde, beta_step, variance_type,
                              var_values, zero_beta_tilde)
    return mean, variance


def _ddpm_variance(xp: Any, x_t: Any, ab_prev: Any, beta_tilde: Any, beta_step: Any,
                   variance_type: str, var_values: Any, zero_beta_tilde: float | None) -> Any:
    """σ² of the DDPM step: β̃ or β' (fixed), or from the model's variance channel (learned).

    At a step to ᾱ_prev = 1, β̃ = 0 and log β̃ = −∞. With ``zero_beta_tilde`` = b that β̃ is
    replaced by b where a logarithm or "fixed_large" needs it (guided-diffusion's index-0
    value); without, β̃ is floored at 1e-20 inside the logarithm (diffusers).
    """
    if variance_type == "fixed_small":
        return _xp.as_array_like(xp, beta_tilde, x_t)               # DDPM §3.2: σ² = β̃
    if variance_type == "fixed_large":                              # DDPM §3.2: σ² = β
        if zero_beta_tilde is not None:
            beta_step = _xp.where_one(xp, ab_prev, zero_beta_tilde, beta_step)
        return _xp.as_array_like(xp, beta_step, x_t)
    if variance_type == "learned":                                  # the model gives log σ²
        return xp.exp(var_values)
    if zero_beta_tilde is not None:
        beta_tilde = _xp.where_one(xp, ab_prev, zero_beta_tilde, beta_tilde)
    elif _xp.is_array(beta_tilde):
        beta_tilde = xp.clip(beta_tilde, min=BETA_TILDE_FLOOR)
    else:
        beta_tilde = max(beta_tilde, BETA_TILDE_FLOOR)
    max_log, min_log = cast(xp, x_t, _xp.log(xp, beta_step), _xp.log(xp, beta_tilde))
    frac = (var_values + 1) / 2                                     # IDDPM Eq. 15: v ∈ [−1, 1]
    return xp.exp(frac * max_log + (1 - frac) * min_log)            # IDDPM Eq. 15


# ----- the checked prologue ---------------------------------------------------------------

def _step_inputs(x_t: Any, eps: Any, noise: Any, x0_hat: Any, alpha_bar_t: Any,
                 alpha_bar_prev: Any) -> Any:
    """Namespace and validated (ᾱ_t, ᾱ_prev) of a reverse step; ᾱ_t = 0 needs ``x0_hat``."""
    xp = _xp.arrays("x_t", x_t, eps=eps, noise=noise, x0_hat=x0_hat,
                    optional=("noise", "x0_hat"))
    ab_t, ab_prev = _xp.step_levels(xp, x_t, alpha_bar_t, alpha_bar_prev)
    return xp, ab_t, ab_prev


def _refuse_zero_snr(xp: Any, ab_t: Any, x0_hat: Any) -> None:
    if x0_hat is None and _xp.is_zero(xp, ab_t):
        raise ValueError("alpha_bar_t = 0 (zero terminal SNR): x0_hat cannot be derived from "
                         "an epsilon prediction there; pass x0_hat= (v- or x_0-prediction)")


def _clip_bound(clip_x0: Any) -> Clip:
    """A checked ``clip_x0``: None, a finite bound b > 0, or a :class:`DynamicThreshold`."""
    if clip_x0 is None or isinstance(clip_x0, DynamicThreshold):
        return clip_x0
    if isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float)) or not (
            math.isfinite(clip_x0) and clip_x0 > 0):
        raise ValueError(f"clip_x0 must be None, a finite bound > 0 or a "
                         f"refdiff.DynamicThreshold, got {clip_x0!r}")
    return float(clip_x0)


def _variance_inputs(xp: Any, x_t: Any, variance_type: Any, var_values: Any,
                     zero_beta_tilde: Any) -> float | None:
    """Check the variance options of a DDPM step: the type, the model's variance channel
    (required exactly for the learned types) and the replacement of β̃ = 0."""
    _xp.choice("variance_type", variance_type, VARIANCE_TYPES)
    if variance_type in LEARNED_VARIANCES:
        if var_values is None:
            raise ValueError(f"variance_type={variance_type!r} needs var_values= (the model's "
                             "variance channel, shape of x_t)")
        _xp.returned(xp, "x_t", x_t, var_values=var_values)
    elif var_values is not None:
        raise ValueError(f"var_values applies to the learned variance types only, got "
                         f"variance_type={variance_type!r}")
    if zero_beta_tilde is None:
        return None
    if variance_type in ("fixed_small", "learned"):
        raise ValueError(f"zero_beta_tilde applies to variance_type 'fixed_large' and "
                         f"'learned_range' only, got variance_type={variance_type!r}")
    return _xp.number("zero_beta_tilde", zero_beta_tilde, lo=0.0, lo_open=True, hi=1.0)


def _check_eta(xp: Any, eta: Any, ab_t: Any, ab_prev: Any) -> float:
    """η ≥ 0, and small enough that 1 − ᾱ_prev − σ² ≥ 0 on this step (host values)."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (
            math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite float >= 0, got {eta!r}")
    eta = float(eta)
    r = _ddim_ratio(ab_t, ab_prev, eta)
    if not _xp.is_array(r):
        too_large = r > 1 + 1e-12
    else:
        too_large = _xp.readable(r) and bool(xp.any(r > 1 + 1e-12))
    if too_large:
        raise ValueError(f"eta={eta} makes the DDIM variance 1 - alpha_bar_prev - sigma^2 "
                         "negative for this step; use eta <= 1 or a smaller step")
    return eta


# ----- public functions -------------------------------------------------------------------

def ddpm_mean_variance(x_t: Any, eps: Any, alpha_bar_t: Any, alpha_bar_prev: Any, *,
                       variance_type: str = "fixed_small", var_values: Any = None,
                       zero_beta_tilde: float | None = None, clip_x0: Any = None,
                       x0_hat: Any = None) -> Any:
    """Mean and variance of the DDPM reverse step p(x_prev | x_t).

    The mean is the posterior mean q(x_prev | x_t, x̂_0) at the predicted (optionally
    clipped or thresholded) x̂_0. The variance σ² by ``variance_type``:

    - ``"fixed_small"``: β̃ (DDPM §3.2); 0 at a step to ᾱ_prev = 1;
    - ``"fixed_large"``: β' = 1 − ᾱ_t/ᾱ_prev (DDPM's σ² = β, respaced as IDDPM §4);
    - ``"learned"``: exp(v), the model's variance channel v read as log σ² (guided-diffusion's
      LEARNED). diffusers' ``variance_type="learned"`` reads the same channel as σ² itself:
      pass ``log`` of it here to reproduce diffusers;
    - ``"learned_range"``: IDDPM Eq. 15, log σ² = frac·log β' + (1 − frac)·log β̃ with
      frac = (v + 1)/2; v is not clipped to [−1, 1] (neither original does).

    At a step to ᾱ_prev = 1 (the last step), β̃ = 0 and log β̃ = −∞. By default β̃ is floored
    at 1e-20 inside the logarithm (diffusers); ``zero_beta_tilde=b`` uses b in place of β̃ = 0
    there and as the "fixed_large" variance (guided-diffusion uses β̃ of its index 1: the
    β̃ of the step before the last).

    Parameters
    ----------
    x_t, eps : arrays, shape (B, ...)
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in [0, 1) (ᾱ_t = 0 needs ``x0_hat``).
    alpha_bar_prev : float or array, shape () or (B,)
        ᾱ_prev in (0, 1], ≥ ᾱ_t.
    variance_type : {"fixed_small", "fixed_large", "learned", "learned_range"}
    var_values : array, shape of ``x_t``
        The model's variance channel; required by the learned types, refused otherwise.
    zero_beta_tilde : float in (0, 1], optional
        The value of β̃ where it is 0 ("fixed_large" and "learned_range" only).
    clip_x0 : float or DynamicThreshold, optional
        Clip x̂_0 to [−clip_x0, clip_x0], or threshold it dynamically
        (:func:`refdiff.dynamic_threshold`), before forming the mean.
    x0_hat : array, optional
        x̂_0 when the model predicts it (x_0- or v-prediction); else derived from ε̂.

    Returns
    -------
    mean : array, shape, dtype and device of ``x_t``
    variance : array, dtype and device of ``x_t``; shape () or (B, 1, ..., 1) for the fixed
        types, the shape of ``x_t`` for the learned ones

    References
    ----------
    DDPM, arXiv:2006.11239v2, Eqs. 6–7 and §3.2 (σ² = β̃ or β); IDDPM, arXiv:2102.09672v1,
    §3.1 and Eq. 15 (learned range).
    """
    xp, ab_t, ab_prev = _step_inputs(x_t, eps, None, x0_hat, alpha_bar_t, alpha_bar_prev)
    zero_beta_tilde = _variance_inputs(xp, x_t, variance_type, var_values, zero_beta_tilde)
    _refuse_zero_snr(xp, ab_t, x0_hat)
    clip_x0 = _clip_bound(clip_x0)
    return _ddpm_mean_variance(xp, x_t, eps, ab_t, ab_prev, variance_type, clip_x0, x0_hat,
                               var_values, zero_beta_tilde)


def ddpm_step(x_t: Any, eps: Any, alpha_bar_t: Any, alpha_bar_prev: Any, noise: Any, *,
              variance_type: str = "fixed_small", var_values: Any = None,
              zero_beta_tilde: float | None = None, clip_x0: Any = None,
              x0_hat: Any = None) -> Any:
    """One ancestral DDPM step: x_prev = μ̃(x_t, x̂_0) + σ·z.

    .. math::
        x_{prev} = \\frac{\\sqrt{\\bar α_{prev}}\\,β'}{1−\\bar α_t}\\hat x_0
                 + \\frac{\\sqrt{1−β'}\\,(1−\\bar α_{prev})}{1−\\bar α_t}x_t + σ z

    Parameters
    ----------
    x_t, eps : arrays, shape (B, ...)
    alpha_bar_t, alpha_bar_prev : float or array, shape () or (B,)
        See :func:`ddpm_mean_variance`.
    noise : array, shape of ``x_t``
        z ~ N(0, I). Required; the sampling loop passes zeros on its last step.
    variance_type, var_values, zero_beta_tilde, clip_x0, x0_hat
        See :func:`ddpm_mean_variance` (σ² by ``variance_type``).

    Returns
    -------
    x_prev : array, shape, dtype and device of ``x_t``

    Notes
    -----
    With σ² = β̃ this equals :func:`ddim_step` with η = 1 on any (ᾱ_t, ᾱ_prev) pair. Without
    clipping or ``x0_hat`` the mean's x̂_0 term is formed as A·(x_t − √(1−ᾱ_t)·ε̂) (module
    docstring: precision rule), so float16 inputs do not overflow where the result fits.
    σ is formed as √σ² (guided-diffusion: exp(½·log σ²); the two agree to rounding).

    References
    ----------
    DDPM, arXiv:2006.11239v2, Algorithm 2 and Eqs. 6–7; IDDPM, arXiv:2102.09672v1, Eq. 15.

    Examples
    --------
    >>> import numpy as np
    >>> x = ddpm_step(np.ones(1), np.zeros(1), 0.25, 1.0, np.zeros(1))
    >>> x  # last step to alpha_bar = 1 returns x0_hat = x_t / sqrt(0.25)
    array([2.])
    """
    if noise is None:
        raise ValueError("noise is required for ddpm_step (pass zeros for a step without "
                         "noise, as the sampling loop does on its last step)")
    xp, ab_t, ab_prev = _step_inputs(x_t, eps, noise, x0_hat, alpha_bar_t, alpha_bar_prev)
    zero_beta_tilde = _variance_inputs(xp, x_t, variance_type, var_values, zero_beta_tilde)
    _refuse_zero_snr(xp, ab_t, x0_hat)
    clip_x0 = _clip_bound(clip_x0)
    mean, variance = _ddpm_mean_variance(xp, x_t, eps, ab_t, ab_prev, variance_type, clip_x0,
                                         x0_hat, var_values, zero_beta_tilde)
    return mean + xp.sqrt(variance) * noise                         # Algorithm 2, line 4


def ddim_sigma(alpha_bar_t: Any, alpha_bar_prev: Any, eta: float) -> Any:
    """σ of the DDIM step and the coefficient of ε̂: (σ, √(1 − ᾱ_prev − σ²)).

    .. math::
        σ = η\\sqrt{\\frac{1−\\bar α_{prev}}{1−\\bar α_t}}\\sqrt{1 − \\frac{\\bar α_t}{\\bar α_{prev}}}

    Parameters
    ----------
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in [0, 1).
    alpha_bar_prev : float or array, shape () or (B,)
        ᾱ_prev in (0, 1], ≥ ᾱ_t.
    eta : float
        η ≥ 0.

    Returns
    -------
    sigma, dir_coef : Python floats, or arrays in the dtype of the ᾱ arrays

    Raises
    ------
    ValueError
        For ᾱ outside their ranges or out of order, η < 0, or an η that makes
        1 − ᾱ_prev − σ² negative. Values are checked on Python floats and host arrays only:
        the checks are skipped for traced arrays (``jax.jit``/``grad``/``vmap``,
        ``torch.compile``, ``torch.func``) and for arrays on an accelerator.

    References
    ----------
    DDIM, arXiv:2010.02502v4, Eq. 16 (σ) and Eq. 12.
    """
    given = [a for a in (alpha_bar_t, alpha_bar_prev) if _xp.is_array(a)]
    xp = _xp.namespace(alpha_bar_t=alpha_bar_t, alpha_bar_prev=alpha_bar_prev) if given else None
    ab_t, ab_prev = _xp.step_levels(xp, None, alpha_bar_t, alpha_bar_prev)
    eta = _check_eta(xp, eta, ab_t, ab_prev)
    return _ddim_sigma(xp, ab_t, ab_prev, eta)


def ddim_step(x_t: Any, eps: Any, alpha_bar_t: Any, alpha_bar_prev: Any, *, eta: float = 0.0,
              noise: Any = None, clip_x0: Any = None, rederive_eps: bool = True,
              x0_hat: Any = None) -> Any:
    """One DDIM step: x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z.

    Parameters
    ----------
    x_t, eps : arrays, shape (B, ...)
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in [0, 1) (ᾱ_t = 0 needs ``x0_hat``).
    alpha_bar_prev : float or array, shape () or (B,)
        ᾱ_prev in (0, 1], ≥ ᾱ_t.
    eta : float
        η ≥ 0; 0 is deterministic DDIM, 1 is DDPM with σ² = β̃. Variance is η²·β̃.
    noise : array, optional
        z, required when η > 0 and ignored when η = 0.
    clip_x0 : float or DynamicThreshold, optional
        Clip x̂_0 to [−clip_x0, clip_x0], or threshold it dynamically
        (:func:`refdiff.dynamic_threshold`; diffusers' ``thresholding=True``).
    rederive_eps : bool
        After clipping or thresholding, recompute ε̂ from the new x̂_0 (True:
        guided-diffusion) or keep the model's ε̂ (False: diffusers' default). No effect
        without ``clip_x0``.
    x0_hat : array, optional
        x̂_0 when the model predicts it; else derived from ε̂.

    Returns
    -------
    x_prev : array, shape, dtype and device of ``x_t``

    Raises
    ------
    TypeError, ValueError
        For arrays of another library, device, dtype or shape (always, under tracing too),
        and for ᾱ out of range or out of order, η too large, or ᾱ_t = 0 without ``x0_hat``:
        value checks run on Python floats and host arrays and are skipped for traced arrays
        (``jax.jit``/``grad``/``vmap``, ``torch.compile``, ``torch.func``) and for arrays on
        an accelerator.

    Notes
    -----
    Without clipping or ``x0_hat`` the step is formed as A·(x_t − √(1−ᾱ_t)·ε̂) +
    √(1−ᾱ_prev−σ²)·ε̂ + σ·z with A = √ᾱ_prev/√ᾱ_t computed in float64 (module docstring:
    precision rule); otherwise as Eq. 12 through x̂_0.

    References
    ----------
    DDIM, arXiv:2010.02502v4, Eq. 12 and Eq. 16.

    Examples
    --------
    >>> import numpy as np
    >>> ddim_step(np.array([1.0]), np.array([0.0]), 0.25, 1.0)
    array([2.])
    """
    xp, ab_t, ab_prev = _step_inputs(x_t, eps, noise, x0_hat, alpha_bar_t, alpha_bar_prev)
    eta = _check_eta(xp, eta, ab_t, ab_prev)
    if eta > 0 and noise is None:
        raise ValueError(f"noise is required when eta > 0 (got eta={eta} and noise=None)")
    _refuse_zero_snr(xp, ab_t, x0_hat)
    clip_x0 = _clip_bound(clip_x0)
    rederive_eps = _xp.flag("rederive_eps", rederive_eps)
    return _ddim_step(xp, x_t, eps, ab_t, ab_prev, eta, noise, clip_x0, rederive_eps, x0_hat)


def ddim_inversion_step(x_t: Any, eps: Any, alpha_bar_t: Any, alpha_bar_next: Any, *,
                        clip_x0: Any = None, rederive_eps: bool = True,
                        x0_hat: Any = None) -> Any:
    """Deterministic DDIM (η = 0) run forward: from ᾱ_t to a noisier ᾱ_next ≤ ᾱ_t.

    .. math:: x_{next} = \\sqrt{\\bar α_{next}}\\,\\hat x_0 + \\sqrt{1−\\bar α_{next}}\\,\\hat ε

    The caller chooses where ε̂ is evaluated (:func:`refdiff.ddim_invert`'s
    ``model_timestep``: the source level's timestep, as guided-diffusion, or the
    destination's, as diffusers' DDIMInverseScheduler and prompt-to-prompt).

    Parameters
    ----------
    x_t, eps : arrays, shape (B, ...)
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in [0, 1] (1 for clean data; 0 needs ``x0_hat``).
    alpha_bar_next : float or array, shape () or (B,)
        ᾱ_next in [0, ᾱ_t].
    clip_x0 : float or DynamicThreshold, optional
        Clip (or threshold) x̂_0 first: guided-diffusion's ``ddim_reverse_sample`` with
        ``clip_denoised=True`` (ε̂ re-derived) and diffusers' DDIMInverseScheduler with its
        default ``clip_sample=True`` (ε̂ kept: ``rederive_eps=False``).
    rederive_eps : bool
        After clipping, recompute ε̂ from the clipped x̂_0 (True) or keep the model's (False).
        At ᾱ_t = 1 (clean data) ε̂ cannot be re-derived and the model's is kept.
    x0_hat : array, optional
        x̂_0 when the model predicts it; else derived from ε̂.

    Returns
    -------
    x_next : array, shape, dtype and device of ``x_t``

    References
    ----------
    DDIM, arXiv:2010.02502v4, Eq. 12 with σ = 0, and §4.3 (the ODE run in reverse).
    """
    xp = _xp.arrays("x_t", x_t, eps=eps, x0_hat=x0_hat, optional=("x0_hat",))
    ab_t = _xp.level(xp, "alpha_bar_t", alpha_bar_t, x_t)
    ab_next = _xp.level(xp, "alpha_bar_next", alpha_bar_next, x_t)
    _xp.check_order(xp, "alpha_bar_t", ab_t, "alpha_bar_next", ab_next)
    _refuse_zero_snr(xp, ab_t, x0_hat)
    clip_x0 = _clip_bound(clip_x0)
    rederive_eps = _xp.flag("rederive_eps", rederive_eps)
    if clip_x0 is not None and rederive_eps and _xp.is_array(ab_t) and _xp.readable(ab_t) and bool(
            xp.any(ab_t == 1)):
        raise ValueError("rederive_eps=True cannot re-derive eps where alpha_bar_t = 1 (clean "
                         "data: eps = (x_t - x0_hat)/0); pass alpha_bar_t as the float 1.0, "
                         "which keeps the model's eps there, or rederive_eps=False")
    return _ddim_inversion_step(xp, x_t, eps, ab_t, ab_next, x0_hat, clip_x0, rederive_eps)


def _ddim_inversion_step(xp: Any, x_t: Any, eps: Any, ab_t: Any, ab_next: Any, x0_hat: Any,
                         clip_x0: Clip = None, rederive_eps: bool = True) -> Any:
    if x0_hat is None and clip_x0 is None:                          # no x̂_0 needed: fold it in
        (b_next,) = cast(xp, x_t, sqrt(xp, 1.0 - ab_next))
        return _x0_term(xp, x_t, eps, ab_t, sqrt(xp, ab_next)) + b_next * eps  # DDIM Eq. 12, σ = 0
    clean = not _xp.is_array(ab_t) and ab_t == 1                    # ε̂ cannot be re-derived
    x0_hat, eps = _x0_eps(xp, x_t, eps, ab_t, x0_hat, clip_x0, rederive_eps and not clean)
    return _q_sample(xp, x0_hat, ab_next, eps)                      # DDIM Eq. 12, σ = 0
