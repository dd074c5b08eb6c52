"""Forward noising q(x_t | x_0), its posterior, and the three parameterisations.

Symbols: ``x0`` = x_0, ``x_t`` = x_t, ``eps`` = ε, ``alpha_bar_t`` = ᾱ_t,
``alpha_bar_prev`` = ᾱ_prev (the ᾱ of the level the step goes to; on a respaced chain it is
not ᾱ_{t−1}), β' = 1 − ᾱ_t/ᾱ_prev (the effective β of one respaced step), v = √ᾱ·ε − √(1−ᾱ)·x_0.

Every ᾱ argument is a Python float, a 0-d array or a per-sample array of shape (B,); see
:mod:`refdiff._xp`. Outputs keep the dtype and device of the arrays passed.

References
----------
.. [DDPM] J. Ho, A. Jain, P. Abbeel, arXiv:2006.11239v2, Eq. 4 (q(x_t | x_0)), Eqs. 6–7
   (posterior), Eq. 15 (x_0 from ε).
.. [V] T. Salimans, J. Ho, "Progressive Distillation for Fast Sampling of Diffusion Models",
   arXiv:2202.00512v2, §4 and Appendix D (v-prediction).
"""

from __future__ import annotations

from typing import Any

from refdiff import _xp

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _coefs(xp, x: Any, alpha_bar: Any, name: str, **bounds: Any):
    """(√ᾱ, √(1−ᾱ)) as Python floats or as arrays in the dtype of ``x`` (computed first in
    the dtype of ᾱ: 1 − ᾱ is never formed in a low-precision float)."""
    ab = _xp.scalar(xp, name, alpha_bar, x, **bounds)
    return (_xp.cast_to(xp, _xp.sqrt(xp, ab), x), _xp.cast_to(xp, _xp.sqrt(xp, 1.0 - ab), x))


def q_sample(x0: Any, alpha_bar_t: Any, noise: Any):
    """Draw x_t from q(x_t | x_0) given the noise.

    .. math:: x_t = \\sqrt{\\bar α_t}\\,x_0 + \\sqrt{1 − \\bar α_t}\\,ε

    Parameters
    ----------
    x0 : array, shape (B, ...)
        Clean data.
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in [0, 1].
    noise : array, shape of ``x0``
        ε ~ N(0, I), drawn by the caller.

    Returns
    -------
    x_t : array, shape, dtype and device of ``x0``

    References
    ----------
    DDPM, arXiv:2006.11239v2, Eq. 4.

    Examples
    --------
    >>> import numpy as np
    >>> q_sample(np.ones(2), 0.25, np.zeros(2))
    array([0.5, 0.5])
    """
    xp = _xp.namespace(x0=x0, noise=noise)
    _xp.check_like(xp, "x0", x0, noise=noise)
    a, b = _coefs(xp, x0, alpha_bar_t, "alpha_bar_t")
    return a * x0 + b * noise


def predict_x0_eps(x_t: Any, model_output: Any, alpha_bar_t: Any,
                   prediction_type: str = "epsilon"):
    """Turn a model output (ε, x_0 or v) into the pair (x̂_0, ε̂).

    .. math::
        \\text{epsilon:}\\ \\hat x_0 = (x_t − \\sqrt{1−\\bar α}\\,ε)/\\sqrt{\\bar α};\\quad
        \\text{sample:}\\ \\hat ε = (x_t − \\sqrt{\\bar α}\\,\\hat x_0)/\\sqrt{1−\\bar α};\\quad
        \\text{v:}\\ \\hat x_0 = \\sqrt{\\bar α}\\,x_t − \\sqrt{1−\\bar α}\\,v,\\
        \\hat ε = \\sqrt{1−\\bar α}\\,x_t + \\sqrt{\\bar α}\\,v

    Parameters
    ----------
    x_t : array, shape (B, ...)
    model_output : array, shape of ``x_t``
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t; in (0, 1] for ``"epsilon"``, [0, 1) for ``"sample"``, [0, 1] for v.
    prediction_type : {"epsilon", "sample", "v_prediction"}

    Returns
    -------
    x0, eps : arrays, shape, dtype and device of ``x_t``

    References
    ----------
    DDPM, arXiv:2006.11239v2, Eq. 15; V, arXiv:2202.00512v2, §4 and Appendix D.
    """
    xp = _xp.namespace(x_t=x_t, model_output=model_output)
    _xp.check_like(xp, "x_t", x_t, model_output=model_output)
    _xp.choice("prediction_type", prediction_type, PREDICTION_TYPES)
    bounds = {"epsilon": {"lo_open": True}, "sample": {"hi_open": True}}.get(prediction_type, {})
    a, b = _coefs(xp, x_t, alpha_bar_t, "alpha_bar_t", **bounds)
    if prediction_type == "epsilon":
        return (x_t - b * model_output) / a, model_output
    if prediction_type == "sample":
        return model_output, (x_t - a * model_output) / b
    return a * x_t - b * model_output, b * x_t + a * model_output


def prediction_from_x0_eps(x0: Any, eps: Any, alpha_bar_t: Any,
                           prediction_type: str = "epsilon"):
    """The training target of a parameterisation, from (x_0, ε): the inverse of
    :func:`predict_x0_eps` (given x_t = √ᾱ·x_0 + √(1−ᾱ)·ε).

    ``"epsilon"`` returns ε, ``"sample"`` returns x_0, ``"v_prediction"`` returns
    v = √ᾱ·ε − √(1−ᾱ)·x_0.

    References
    ----------
    V, arXiv:2202.00512v2, §4 (definition of v).
    """
    xp = _xp.namespace(x0=x0, eps=eps)
    _xp.check_like(xp, "x0", x0, eps=eps)
    _xp.choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return v_target(x0, eps, alpha_bar_t)


def v_target(x0: Any, eps: Any, alpha_bar_t: Any):
    """The v-prediction target v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0.

    References
    ----------
    V, arXiv:2202.00512v2, §4.
    """
    xp = _xp.namespace(x0=x0, eps=eps)
    _xp.check_like(xp, "x0", x0, eps=eps)
    a, b = _coefs(xp, x0, alpha_bar_t, "alpha_bar_t")
    return a * eps - b * x0


def posterior_coefficients(alpha_bar_t: Any, alpha_bar_prev: Any, *, like: Any = None):
    """Coefficients of q(x_prev | x_t, x_0) on a possibly respaced chain.

    Returns ``(c0, ct, variance, beta_step)`` with β' = 1 − ᾱ_t/ᾱ_prev,
    c0 = √ᾱ_prev·β'/(1−ᾱ_t), ct = √(1−β')·(1−ᾱ_prev)/(1−ᾱ_t),
    variance β̃ = (1−ᾱ_prev)/(1−ᾱ_t)·β', so that mean = c0·x_0 + ct·x_t.

    Parameters
    ----------
    alpha_bar_t, alpha_bar_prev : float or array, shape () or (B,)
        ᾱ_t in [0, 1) and ᾱ_prev in (0, 1], ᾱ_prev ≥ ᾱ_t.
    like : array, optional
        An array of shape (B, ...) that the coefficients will multiply; per-sample ᾱ
        arrays are then shaped (B, 1, ..., 1).

    Returns
    -------
    Python floats for float ᾱ, else arrays in the dtype of ᾱ (not yet cast to ``like``).

    References
    ----------
    DDPM, arXiv:2006.11239v2, Eq. 7, with ᾱ_{t−1} replaced by ᾱ_prev and β_t by β'.
    """
    arrays = [a for a in (like, alpha_bar_t, alpha_bar_prev) if _xp.is_array(a)]
    like = arrays[0] if arrays else None
    xp = _xp.namespace(like=like) if arrays else None
    ab_t = _xp.scalar(xp, "alpha_bar_t", alpha_bar_t, like, hi_open=True)
    ab_prev = _xp.scalar(xp, "alpha_bar_prev", alpha_bar_prev, like, lo_open=True)
    _xp.check_order("alpha_bar_prev", ab_prev, "alpha_bar_t", ab_t, xp)
    beta_step = 1.0 - ab_t / ab_prev
    c0 = _xp.sqrt(xp, ab_prev) * beta_step / (1.0 - ab_t)
    ct = _xp.sqrt(xp, 1.0 - beta_step) * (1.0 - ab_prev) / (1.0 - ab_t)
    variance = (1.0 - ab_prev) / (1.0 - ab_t) * beta_step
    return c0, ct, variance, beta_step


def q_posterior(x0: Any, x_t: Any, alpha_bar_t: Any, alpha_bar_prev: Any):
    """Mean and variance of q(x_prev | x_t, x_0).

    .. math::
        \\tilde μ = \\frac{\\sqrt{\\bar α_{prev}}\\,β'}{1 − \\bar α_t}\\,x_0
                  + \\frac{\\sqrt{1 − β'}\\,(1 − \\bar α_{prev})}{1 − \\bar α_t}\\,x_t,\\qquad
        \\tilde β = \\frac{1 − \\bar α_{prev}}{1 − \\bar α_t}\\,β',\\qquad
        β' = 1 − \\bar α_t/\\bar α_{prev}

    Written with (ᾱ_t, ᾱ_prev) rather than an index, so it holds on a respaced chain; with
    ᾱ_prev = ᾱ_{t−1} it is DDPM Eqs. 6–7.

    Parameters
    ----------
    x0, x_t : arrays, shape (B, ...)
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in [0, 1).
    alpha_bar_prev : float or array, shape () or (B,)
        ᾱ_prev in (0, 1], ᾱ_prev ≥ ᾱ_t.

    Returns
    -------
    mean : array, shape, dtype and device of ``x_t``
    variance : array, dtype and device of ``x_t``, shape () or (B, 1, ..., 1)
        β̃, broadcastable to ``x_t``.

    References
    ----------
    DDPM, arXiv:2006.11239v2, Eqs. 6–7.

    Examples
    --------
    >>> import numpy as np
    >>> mean, var = q_posterior(np.zeros(1), np.ones(1), 0.5, 1.0)
    >>> mean, float(var)
    (array([0.]), 0.0)
    """
    xp = _xp.namespace(x0=x0, x_t=x_t)
    _xp.check_like(xp, "x_t", x_t, x0=x0)
    c0, ct, variance, _ = posterior_coefficients(alpha_bar_t, alpha_bar_prev, like=x_t)
    mean = _xp.cast_to(xp, c0, x_t) * x0 + _xp.cast_to(xp, ct, x_t) * x_t
    return mean, _xp.as_array_like(xp, variance, x_t)
