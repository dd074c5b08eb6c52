"""Forward noising q(x_t | x_0), its posterior, and the three parameterisations.

Symbols: ``x0`` = x_0 (data), ``x0_hat`` = x̂_0 (a prediction of it), ``x_t`` = x_t,
``eps`` = ε (the noise of the forward process, or its prediction ε̂), ``alpha_bar_t`` = ᾱ_t,
``alpha_bar_prev`` = ᾱ_prev (the ᾱ of the level a step goes to; on a respaced chain it is not
ᾱ_{t−1}), β' = 1 − ᾱ_t/ᾱ_prev (the effective β of one respaced step),
v = √ᾱ·ε − √(1−ᾱ)·x_0.

Every ᾱ argument is a Python float, a 0-d array or a per-sample array of shape (B,); see
:mod:`refdiff._xp`. Outputs keep the dtype and device of the arrays passed.

Each public function checks its arguments once and calls a private body of the same name
with a leading underscore; the bodies are only math and are shared with the steps and the
sampling loop.

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
from refdiff._xp import cast, sqrt

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# The ᾱ_t each parameterisation can be inverted at: ε needs √ᾱ > 0, x_0 needs √(1 − ᾱ) > 0.
_ALPHA_BAR_BOUNDS = {"epsilon": {"lo_open": True}, "sample": {"hi_open": True},
                     "v_prediction": {}}


# ----- bodies: math only ------------------------------------------------------------------

def _q_sample(xp: Any, x0: Any, ab: Any, eps: Any) -> Any:
    a, b = cast(xp, x0, sqrt(xp, ab), sqrt(xp, 1.0 - ab))
    return a * x0 + b * eps                                         # DDPM Eq. 4


def _x0_from_eps(xp: Any, x_t: Any, eps: Any, ab: Any) -> Any:
    a, b = cast(xp, x_t, sqrt(xp, ab), sqrt(xp, 1.0 - ab))
    return (x_t - b * eps) / a                                      # DDPM Eq. 15


def _eps_from_x0(xp: Any, x_t: Any, x0_hat: Any, ab: Any) -> Any:
    a, b = cast(xp, x_t, sqrt(xp, ab), sqrt(xp, 1.0 - ab))
    return (x_t - a * x0_hat) / b                                   # DDPM Eq. 4 solved for ε


def _predict_x0_eps(xp: Any, x_t: Any, model_output: Any, ab: Any,
                    prediction_type: str) -> tuple[Any, Any]:
    if prediction_type == "epsilon":
        return _x0_from_eps(xp, x_t, model_output, ab), model_output
    if prediction_type == "sample":
        return model_output, _eps_from_x0(xp, x_t, model_output, ab)
    a, b = cast(xp, x_t, sqrt(xp, ab), sqrt(xp, 1.0 - ab))
    return a * x_t - b * model_output, b * x_t + a * model_output   # V, Appendix D


def _v_target(xp: Any, x0: Any, eps: Any, ab: Any) -> Any:
    a, b = cast(xp, x0, sqrt(xp, ab), sqrt(xp, 1.0 - ab))
    return a * eps - b * x0                                         # V §4: v = √ᾱ·ε − √(1−ᾱ)·x_0


def _prediction_from_x0_eps(xp: Any, x0: Any, eps: Any, ab: Any, prediction_type: str) -> Any:
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return _v_target(xp, x0, eps, ab)


def _posterior_coefficients(xp: Any, ab_t: Any, ab_prev: Any) -> Any:
    beta_step = 1.0 - ab_t / ab_prev                                # β' of the respaced step
    c0 = sqrt(xp, ab_prev) * beta_step / (1.0 - ab_t)               # DDPM Eq. 7, coefficient of x_0
    ct = sqrt(xp, 1.0 - beta_step) * (1.0 - ab_prev) / (1.0 - ab_t)  # DDPM Eq. 7, of x_t
    beta_tilde = (1.0 - ab_prev) / (1.0 - ab_t) * beta_step         # DDPM Eq. 7, β̃
    return c0, ct, beta_tilde, beta_step


def _posterior_mean(xp: Any, x0: Any, x_t: Any, c0: Any, ct: Any) -> Any:
    c0, ct = cast(xp, x_t, c0, ct)
    return c0 * x0 + ct * x_t                                       # DDPM Eq. 7, μ̃


# ----- public functions: check once, then the body ----------------------------------------

def q_sample(x0: Any, alpha_bar_t: Any, eps: Any) -> Any:
    """Draw x_t from q(x_t | x_0) given the noise.

    .. math:: x_t = \\sqrt{\\bar α_t}\\,x_0 + \\sqrt{1 − \\bar α_t}\\,ε

    Parameters
    ----------
    x0 : array, shape (B, ...)
        Clean data.
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in [0, 1].
    eps : array, shape of ``x0``
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
    xp = _xp.arrays("x0", x0, eps=eps)
    ab = _xp.level(xp, "alpha_bar_t", alpha_bar_t, x0)
    return _q_sample(xp, x0, ab, eps)


def predict_x0_eps(x_t: Any, model_output: Any, alpha_bar_t: Any,
                   prediction_type: str = "epsilon") -> Any:
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
    x0_hat, eps : arrays, shape, dtype and device of ``x_t``

    References
    ----------
    DDPM, arXiv:2006.11239v2, Eq. 15; V, arXiv:2202.00512v2, §4 and Appendix D.
    """
    xp = _xp.arrays("x_t", x_t, model_output=model_output)
    _xp.choice("prediction_type", prediction_type, PREDICTION_TYPES)
    ab = _xp.level(xp, "alpha_bar_t", alpha_bar_t, x_t, **_ALPHA_BAR_BOUNDS[prediction_type])
    return _predict_x0_eps(xp, x_t, model_output, ab, prediction_type)


def prediction_from_x0_eps(x0: Any, eps: Any, alpha_bar_t: Any,
                           prediction_type: str = "epsilon") -> Any:
    """The training target of a parameterisation, from (x_0, ε): the inverse of
    :func:`predict_x0_eps` (given x_t = √ᾱ·x_0 + √(1−ᾱ)·ε).

    Parameters
    ----------
    x0, eps : arrays, shape (B, ...)
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in [0, 1] (used by ``"v_prediction"`` only, checked for every type).
    prediction_type : {"epsilon", "sample", "v_prediction"}

    Returns
    -------
    array, shape, dtype and device of ``x0``
        ε for ``"epsilon"``, x_0 for ``"sample"``, v = √ᾱ·ε − √(1−ᾱ)·x_0 for
        ``"v_prediction"``.

    References
    ----------
    V, arXiv:2202.00512v2, §4 (definition of v).
    """
    xp = _xp.arrays("x0", x0, eps=eps)
    _xp.choice("prediction_type", prediction_type, PREDICTION_TYPES)
    ab = _xp.level(xp, "alpha_bar_t", alpha_bar_t, x0)
    return _prediction_from_x0_eps(xp, x0, eps, ab, prediction_type)


def v_target(x0: Any, eps: Any, alpha_bar_t: Any) -> Any:
    """The v-prediction target v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0.

    Parameters
    ----------
    x0, eps : arrays, shape (B, ...)
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in [0, 1].

    Returns
    -------
    v : array, shape, dtype and device of ``x0``

    References
    ----------
    V, arXiv:2202.00512v2, §4.
    """
    xp = _xp.arrays("x0", x0, eps=eps)
    ab = _xp.level(xp, "alpha_bar_t", alpha_bar_t, x0)
    return _v_target(xp, x0, eps, ab)


def posterior_coefficients(alpha_bar_t: Any, alpha_bar_prev: Any, *, like: Any = None) -> Any:
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
    c0, ct, variance, beta_step
        Python floats for float ᾱ, else arrays in the dtype of ᾱ (not yet cast to ``like``).

    References
    ----------
    DDPM, arXiv:2006.11239v2, Eq. 7, with ᾱ_{t−1} replaced by ᾱ_prev and β_t by β'.
    """
    given = [a for a in (like, alpha_bar_t, alpha_bar_prev) if _xp.is_array(a)]
    xp = _xp.namespace(like=given[0]) if given else None
    ab_t, ab_prev = _xp.step_levels(xp, given[0] if given else None, alpha_bar_t,
                                    alpha_bar_prev)
    return _posterior_coefficients(xp, ab_t, ab_prev)


def q_posterior(x0: Any, x_t: Any, alpha_bar_t: Any, alpha_bar_prev: Any) -> Any:
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
    xp = _xp.arrays("x_t", x_t, x0=x0)
    ab_t, ab_prev = _xp.step_levels(xp, x_t, alpha_bar_t, alpha_bar_prev)
    c0, ct, beta_tilde, _ = _posterior_coefficients(xp, ab_t, ab_prev)
    return _posterior_mean(xp, x0, x_t, c0, ct), _xp.as_array_like(xp, beta_tilde, x_t)
