"""One reverse step of DDPM or DDIM, and the DDIM inversion step, from (ᾱ_t, ᾱ_prev).

Symbols: ``x_t`` = x_t, ``eps`` = ε̂ (the model's noise prediction), ``x0`` = x̂_0,
``alpha_bar_t`` = ᾱ_t, ``alpha_bar_prev`` = ᾱ_prev (the level the step goes to: the next
element of the timestep list, or 1 after the last one), ``eta`` = η, ``noise`` = z ~ N(0, I),
β' = 1 − ᾱ_t/ᾱ_prev, β̃ = (1−ᾱ_prev)/(1−ᾱ_t)·β'.

The steps take ᾱ values, not indices, so a respaced schedule needs nothing special. Noise is
always passed in; the sampling loop passes zeros on its last step ("is this the last step"
decides, never "t > 0").

Clipping x̂_0 (``clip_x0 = b`` clips to [−b, b]) has two conventions for DDIM:
``rederive_eps=True`` recomputes ε̂ from the clipped x̂_0 (guided-diffusion, GLIDE);
``rederive_eps=False`` keeps the model's ε̂ (diffusers' DDIMScheduler). DDPM's posterior mean
is written with x̂_0 and x_t, so a clipped x̂_0 enters it directly (both guided-diffusion
and diffusers' DDPMScheduler do this).

References
----------
.. [DDPM] J. Ho, A. Jain, P. Abbeel, arXiv:2006.11239v2, Algorithm 2, Eqs. 6–7.
.. [DDIM] J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models",
   arXiv:2010.02502v4, Eq. 12 (the step) and Eq. 16 (σ with η).
.. [IDDPM] A. Nichol, P. Dhariwal, arXiv:2102.09672v1, §3.1 (the "fixed_large" variance β').
"""

from __future__ import annotations

import math
from typing import Any

from refdiff import _xp
from refdiff.forward import posterior_coefficients

VARIANCES = ("fixed_small", "fixed_large")


def _x0_from_eps(xp, x_t: Any, eps: Any, ab_t: Any, x0: Any):
    """x̂_0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t, or the given x̂_0; refuses ᾱ_t = 0 without it."""
    if x0 is not None:
        return x0
    zero = (not _xp.is_array(ab_t) and ab_t == 0) or (
        _xp.is_array(ab_t) and _xp.on_host(ab_t) and bool(xp.any(ab_t == 0)))
    if zero:
        raise ValueError("alpha_bar_t = 0 (zero terminal SNR): x0 cannot be derived from an "
                         "epsilon prediction there; pass x0= (v- or x_0-prediction)")
    a = _xp.cast_to(xp, _xp.sqrt(xp, ab_t), x_t)
    b = _xp.cast_to(xp, _xp.sqrt(xp, 1.0 - ab_t), x_t)
    return (x_t - b * eps) / a


def _clip_x0(xp, x_t: Any, x0: Any, eps: Any, ab_t: Any, clip_x0: Any, rederive_eps: bool):
    """Clip x̂_0 to [−b, b]; re-derive ε̂ = (x_t − √ᾱ_t·x̂_0)/√(1−ᾱ_t) if asked."""
    if clip_x0 is None:
        return x0, eps
    if isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float)) or not (
            math.isfinite(clip_x0) and clip_x0 > 0):
        raise ValueError(f"clip_x0 must be None or a finite bound > 0, got {clip_x0!r}")
    x0 = xp.clip(x0, -float(clip_x0), float(clip_x0))
    if rederive_eps:
        a = _xp.cast_to(xp, _xp.sqrt(xp, ab_t), x_t)
        b = _xp.cast_to(xp, _xp.sqrt(xp, 1.0 - ab_t), x_t)
        eps = (x_t - a * x0) / b
    return x0, eps


def _check_step(x_t: Any, eps: Any, noise: Any, x0: Any):
    xp = _xp.namespace(x_t=x_t, eps=eps, noise=noise, x0=x0)
    _xp.check_like(xp, "x_t", x_t, eps=eps, noise=noise, x0=x0)
    return xp


def _levels(xp, x_t: Any, alpha_bar_t: Any, alpha_bar_prev: Any):
    """Validated (ᾱ_t in [0, 1), ᾱ_prev in (0, 1], ᾱ_prev ≥ ᾱ_t)."""
    ab_t = _xp.scalar(xp, "alpha_bar_t", alpha_bar_t, x_t, hi_open=True)
    ab_prev = _xp.scalar(xp, "alpha_bar_prev", alpha_bar_prev, x_t, lo_open=True)
    _xp.check_order("alpha_bar_prev", ab_prev, "alpha_bar_t", ab_t, xp)
    return ab_t, ab_prev


def ddpm_mean_variance(x_t: Any, eps: Any, alpha_bar_t: Any, alpha_bar_prev: Any, *,
                       variance: str = "fixed_small", clip_x0: Any = None, x0: Any = None):
    """Mean and variance of the DDPM reverse step p(x_prev | x_t).

    The mean is the posterior mean q(x_prev | x_t, x̂_0) at the predicted (optionally
    clipped) x̂_0; the variance is β̃ (``"fixed_small"``) or β' (``"fixed_large"``).

    Parameters
    ----------
    x_t, eps : arrays, shape (B, ...)
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in [0, 1) (ᾱ_t = 0 needs ``x0``).
    alpha_bar_prev : float or array, shape () or (B,)
        ᾱ_prev in (0, 1], ≥ ᾱ_t.
    variance : {"fixed_small", "fixed_large"}
    clip_x0 : float, optional
        Clip x̂_0 to [−clip_x0, clip_x0] before forming the mean.
    x0 : array, optional
        x̂_0 when the model predicts it (x_0- or v-prediction); else derived from ε̂.

    Returns
    -------
    mean : array, shape, dtype and device of ``x_t``
    variance : array, dtype and device of ``x_t``, shape () or (B, 1, ..., 1)

    References
    ----------
    DDPM, arXiv:2006.11239v2, Eqs. 6–7 and §3.2 (σ² = β̃ or β); IDDPM, arXiv:2102.09672v1,
    §3.1.
    """
    xp = _check_step(x_t, eps, None, x0)
    return _mean_variance(xp, x_t, eps, alpha_bar_t, alpha_bar_prev, variance, clip_x0, x0)


def _mean_variance(xp, x_t: Any, eps: Any, alpha_bar_t: Any, alpha_bar_prev: Any,
                   variance: str, clip_x0: Any, x0: Any):
    """:func:`ddpm_mean_variance` after the array checks (shared with :func:`ddpm_step`)."""
    _xp.choice("variance", variance, VARIANCES)
    ab_t, ab_prev = _levels(xp, x_t, alpha_bar_t, alpha_bar_prev)
    x0 = _x0_from_eps(xp, x_t, eps, ab_t, x0)
    x0, _ = _clip_x0(xp, x_t, x0, eps, ab_t, clip_x0, rederive_eps=False)
    c0, ct, beta_tilde, beta_step = posterior_coefficients(ab_t, ab_prev, like=x_t)
    mean = _xp.cast_to(xp, c0, x_t) * x0 + _xp.cast_to(xp, ct, x_t) * x_t
    var = beta_tilde if variance == "fixed_small" else beta_step
    return mean, _xp.as_array_like(xp, var, x_t)


def ddpm_step(x_t: Any, eps: Any, alpha_bar_t: Any, alpha_bar_prev: Any, noise: Any, *,
              variance: str = "fixed_small", clip_x0: Any = None, x0: Any = None):
    """One ancestral DDPM step: x_prev = μ̃(x_t, x̂_0) + σ·z.

    .. math::
        x_{prev} = \\frac{\\sqrt{\\bar α_{prev}}\\,β'}{1−\\bar α_t}\\hat x_0
                 + \\frac{\\sqrt{1−β'}\\,(1−\\bar α_{prev})}{1−\\bar α_t}x_t + σ z,\\qquad
        σ^2 ∈ \\{\\tilde β,\\ β'\\}

    Parameters
    ----------
    x_t, eps : arrays, shape (B, ...)
    alpha_bar_t, alpha_bar_prev : float or array, shape () or (B,)
        See :func:`ddpm_mean_variance`.
    noise : array, shape of ``x_t``
        z ~ N(0, I). Required; the sampling loop passes zeros on its last step.
    variance, clip_x0, x0
        See :func:`ddpm_mean_variance`.

    Returns
    -------
    x_prev : array, shape, dtype and device of ``x_t``

    Notes
    -----
    With σ² = β̃ this equals :func:`ddim_step` with η = 1 on any (ᾱ_t, ᾱ_prev) pair.
    guided-diffusion's "fixed_large" uses β̃ instead of β at its first timestep to keep a
    log-variance finite; refdiff uses β' throughout and adds no noise on the last step.

    References
    ----------
    DDPM, arXiv:2006.11239v2, Algorithm 2 and Eqs. 6–7.

    Examples
    --------
    >>> import numpy as np
    >>> x = ddpm_step(np.ones(1), np.zeros(1), 0.25, 1.0, np.zeros(1))
    >>> x  # last step to alpha_bar = 1 returns x0 = x_t / sqrt(0.25)
    array([2.])
    """
    if noise is None:
        raise ValueError("noise is required for ddpm_step (pass zeros for a step without "
                         "noise, as the sampling loop does on its last step)")
    xp = _check_step(x_t, eps, noise, x0)  # checks every array once, noise included
    mean, var = _mean_variance(xp, x_t, eps, alpha_bar_t, alpha_bar_prev, variance, clip_x0, x0)
    return mean + xp.sqrt(var) * noise


def ddim_sigma(alpha_bar_t: Any, alpha_bar_prev: Any, eta: float):
    """σ of the DDIM step and the coefficient of ε̂: (σ, √(1 − ᾱ_prev − σ²)).

    .. math::
        σ = η\\sqrt{\\frac{1−\\bar α_{prev}}{1−\\bar α_t}}\\sqrt{1 − \\frac{\\bar α_t}{\\bar α_{prev}}}

    Works on Python floats and on arrays (returned in the dtype of ᾱ). Raises ValueError
    for η < 0 or an η that makes 1 − ᾱ_prev − σ² negative (values checked on the host).

    References
    ----------
    DDIM, arXiv:2010.02502v4, Eq. 16 (σ) and Eq. 12.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (
            math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite float >= 0, got {eta!r}")
    arrays = [a for a in (alpha_bar_t, alpha_bar_prev) if _xp.is_array(a)]
    xp = _xp.namespace(alpha_bar_t=alpha_bar_t, alpha_bar_prev=alpha_bar_prev) if arrays else None
    # r = σ²/(1 − ᾱ_prev) = η²·β'/(1 − ᾱ_t); at most η² since β' ≤ 1 − ᾱ_t.
    r = eta**2 * (1.0 - alpha_bar_t / alpha_bar_prev) / (1.0 - alpha_bar_t)
    host = not arrays or all(_xp.on_host(a) for a in arrays)
    if host and (bool(xp.any(r > 1 + 1e-12)) if arrays else r > 1 + 1e-12):
        raise ValueError(f"eta={eta} makes the DDIM variance 1 - alpha_bar_prev - sigma^2 "
                         "negative for this step; use eta <= 1 or a smaller step")
    one_minus_r = xp.clip(1.0 - r, min=0.0) if arrays else max(1.0 - r, 0.0)
    sigma = _xp.sqrt(xp, r * (1.0 - alpha_bar_prev))
    return sigma, _xp.sqrt(xp, (1.0 - alpha_bar_prev) * one_minus_r)


def ddim_step(x_t: Any, eps: Any, alpha_bar_t: Any, alpha_bar_prev: Any, *, eta: float = 0.0,
              noise: Any = None, clip_x0: Any = None, rederive_eps: bool = True, x0: Any = None):
    """One DDIM step: x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z.

    Parameters
    ----------
    x_t, eps : arrays, shape (B, ...)
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in [0, 1) (ᾱ_t = 0 needs ``x0``).
    alpha_bar_prev : float or array, shape () or (B,)
        ᾱ_prev in (0, 1], ≥ ᾱ_t.
    eta : float
        η ≥ 0; 0 is deterministic DDIM, 1 is DDPM with σ² = β̃. Variance is η²·β̃.
    noise : array, optional
        z, required when η > 0 and ignored when η = 0.
    clip_x0 : float, optional
        Clip x̂_0 to [−clip_x0, clip_x0].
    rederive_eps : bool
        After clipping, recompute ε̂ from the clipped x̂_0 (True: guided-diffusion) or keep
        the model's ε̂ (False: diffusers' default). No effect without clipping.
    x0 : array, optional
        x̂_0 when the model predicts it; else derived from ε̂.

    Returns
    -------
    x_prev : array, shape, dtype and device of ``x_t``

    References
    ----------
    DDIM, arXiv:2010.02502v4, Eq. 12 and Eq. 16.

    Examples
    --------
    >>> import numpy as np
    >>> ddim_step(np.array([1.0]), np.array([0.0]), 0.25, 1.0)
    array([2.])
    """
    xp = _check_step(x_t, eps, noise, x0)
    ab_t, ab_prev = _levels(xp, x_t, alpha_bar_t, alpha_bar_prev)
    sigma, dir_coef = ddim_sigma(ab_t, ab_prev, eta)
    if eta > 0 and noise is None:
        raise ValueError(f"noise is required when eta > 0 (got eta={eta} and noise=None)")
    x0 = _x0_from_eps(xp, x_t, eps, ab_t, x0)
    x0, eps = _clip_x0(xp, x_t, x0, eps, ab_t, clip_x0, rederive_eps)
    # Eq. 12: "predicted x_0" + "direction pointing to x_t" + "random noise"
    x_prev = _xp.cast_to(xp, _xp.sqrt(xp, ab_prev), x_t) * x0 + _xp.cast_to(xp, dir_coef,
                                                                              x_t) * eps
    if eta > 0:
        x_prev = x_prev + _xp.cast_to(xp, sigma, x_t) * noise
    return x_prev


def ddim_inversion_step(x_t: Any, eps: Any, alpha_bar_t: Any, alpha_bar_next: Any, *,
                        x0: Any = None):
    """Deterministic DDIM (η = 0) run forward: from ᾱ_t to a noisier ᾱ_next ≤ ᾱ_t.

    .. math:: x_{next} = \\sqrt{\\bar α_{next}}\\,\\hat x_0 + \\sqrt{1−\\bar α_{next}}\\,\\hat ε

    The caller chooses where ε̂ is evaluated. :func:`refdiff.ddim_invert` evaluates it at the
    source level (x_t with the timestep of ᾱ_t), as guided-diffusion does; code in the
    prompt-to-prompt style labels it with the destination timestep instead.

    Parameters
    ----------
    x_t, eps : arrays, shape (B, ...)
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in (0, 1] (1 for clean data; 0 needs ``x0``).
    alpha_bar_next : float or array, shape () or (B,)
        ᾱ_next in [0, ᾱ_t].

    References
    ----------
    DDIM, arXiv:2010.02502v4, Eq. 12 with σ = 0, and §4.3 (the ODE run in reverse).
    """
    xp = _check_step(x_t, eps, None, x0)
    ab_t = _xp.scalar(xp, "alpha_bar_t", alpha_bar_t, x_t)
    ab_next = _xp.scalar(xp, "alpha_bar_next", alpha_bar_next, x_t)
    _xp.check_order("alpha_bar_t", ab_t, "alpha_bar_next", ab_next, xp)
    x0 = _x0_from_eps(xp, x_t, eps, ab_t, x0)
    a = _xp.cast_to(xp, _xp.sqrt(xp, ab_next), x_t)
    b = _xp.cast_to(xp, _xp.sqrt(xp, 1.0 - ab_next), x_t)
    return a * x0 + b * eps
