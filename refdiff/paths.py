"""Gaussian paths x = a·x_0 + b·ε, their noise levels, and exact conversions between the
predictions a model can make on them.

Symbols: ``a``, ``b`` = the coefficients of x_0 and ε at one level of a path; σ = b/a (the
noise-to-signal ratio, k-diffusion's and EDM's σ); ``x0`` = x_0, ``eps`` = ε; v = (a·ε −
b·x_0)/√(a² + b²) (Salimans & Ho's v, which on the VP path is √ᾱ·ε − √(1−ᾱ)·x_0); u = ε − x_0
(the rectified-flow velocity, dx/dt on the flow path).

The three paths (:data:`PATHS`) and the level each is indexed by:

=========  ===========  ===================  =========================================
path       level        (a, b)               σ = b/a
=========  ===========  ===================  =========================================
``"vp"``   ᾱ ∈ [0, 1]   (√ᾱ, √(1 − ᾱ))       √((1 − ᾱ)/ᾱ)
``"ve"``   σ ∈ [0, ∞]   (1, σ)               σ
``"flow"`` t ∈ [0, 1]   (1 − t, t)           t/(1 − t)
=========  ===========  ===================  =========================================

Two levels of any two paths with the same σ hold the same distribution up to a scale: x on
(a, b) and x' on (a', b') with b/a = b'/a' satisfy x' = x·√(a'² + b'²)/√(a² + b²)
(:func:`change_path`). So x_VP = x_VE·√ᾱ and x_flow = x_VE/(1 + σ), and one denoiser serves
every path. The conversions between predictions (:func:`path_x0_eps`,
:func:`path_prediction`) are affine in the prediction for a fixed x, so plain CFG gives the
same guided step in every space; APG, rescale and thresholding do not commute with them.

References
----------
.. [EDM] T. Karras, M. Aittala, T. Aila, S. Laine, "Elucidating the Design Space of
   Diffusion-Based Generative Models", arXiv:2206.00364v2, §2 and Table 1 (x = s(t)·(x_0 +
   σ(t)·ε); the VP and VE paths as s, σ).
.. [FM] Y. Lipman et al., "Flow Matching for Generative Modeling", arXiv:2210.02747v2,
   Eq. 23 (the optimal-transport path x_t = (1 − (1 − σ_min)t)·x_0 + t·ε, here σ_min = 0).
.. [RF] X. Liu, C. Gong, Q. Liu, "Flow Straight and Fast", arXiv:2209.03003v1, Eq. 1
   (X_t = t·X_1 + (1 − t)·X_0, velocity X_1 − X_0).
.. [V] T. Salimans, J. Ho, arXiv:2202.00512v2, §4 and Appendix D (v-prediction).
"""

from __future__ import annotations

import math
from typing import Any

from refdiff import _xp
from refdiff._xp import cast, sqrt

PATHS = ("vp", "ve", "flow")
PATH_PREDICTIONS = ("epsilon", "sample", "v_prediction", "velocity")
_LEVEL_RANGE = {"vp": (0.0, 1.0), "ve": (0.0, math.inf), "flow": (0.0, 1.0)}


# ----- bodies: math only ------------------------------------------------------------------

def _coefficients(xp: Any, path: str, level: Any) -> tuple[Any, Any]:
    """(a, b) of a level of a path: the table of the module docstring."""
    if path == "vp":
        return sqrt(xp, level), sqrt(xp, 1.0 - level)
    if path == "ve":
        return 1.0 + 0.0 * level, level
    return 1.0 - level, level


def _sigma(xp: Any, path: str, level: Any) -> Any:
    """σ = b/a of a level (∞ where a = 0), formed without cancellation."""
    if path == "ve":
        return level
    a, b = (level, 1.0 - level) if path == "vp" else (1.0 - level, level)
    if not _xp.is_array(level):
        return math.inf if a == 0 else (math.sqrt(b / a) if path == "vp" else b / a)
    ratio = b / xp.where(a == 0, xp.ones_like(a), a)
    ratio = xp.sqrt(ratio) if path == "vp" else ratio
    return xp.where(a == 0, xp.full_like(a, math.inf), ratio)


def _level(xp: Any, path: str, sigma: Any) -> Any:
    """The level of ``path`` whose σ = b/a is ``sigma`` (σ = ∞ gives ᾱ = 0 or t = 1)."""
    if path == "ve":
        return sigma
    if not _xp.is_array(sigma):
        if sigma == math.inf:
            return 0.0 if path == "vp" else 1.0
        return 1.0 / (1.0 + sigma * sigma) if path == "vp" else sigma / (1.0 + sigma)
    finite = xp.where(xp.isinf(sigma), xp.zeros_like(sigma), sigma)
    level = 1.0 / (1.0 + finite * finite) if path == "vp" else finite / (1.0 + finite)
    at_inf = 0.0 if path == "vp" else 1.0
    return xp.where(xp.isinf(sigma), xp.full_like(sigma, at_inf), level)


def _x0_eps(xp: Any, x: Any, out: Any, a: Any, b: Any, prediction_type: str) -> Any:
    """(x̂_0, ε̂) from a prediction at x = a·x_0 + b·ε; coefficients cast once to x's dtype."""
    if prediction_type == "epsilon":
        a_, b_ = cast(xp, x, a, b)
        return (x - b_ * out) / a_, out                             # x = a·x_0 + b·ε for x_0
    if prediction_type == "sample":
        a_, b_ = cast(xp, x, a, b)
        return out, (x - a_ * out) / b_                             # ... for ε
    if prediction_type == "velocity":
        a_, b_, ab = cast(xp, x, a, b, 1.0 / (a + b))
        return ab * (x - b_ * out), ab * (x + a_ * out)             # u = ε − x_0 with x
    c2 = a * a + b * b                                              # v: c·v = a·ε − b·x_0
    p, q = cast(xp, x, a / c2, b / sqrt(xp, c2))
    r, s = cast(xp, x, b / c2, a / sqrt(xp, c2))
    return p * x - q * out, r * x + s * out                         # V App. D, scaled by c = √(a²+b²)


def _prediction(xp: Any, x0: Any, eps: Any, a: Any, b: Any, prediction_type: str) -> Any:
    """The prediction of a type from (x_0, ε) at (a, b)."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    if prediction_type == "velocity":
        return eps - x0                                             # RF Eq. 1: u = X_1 − X_0
    p, q = cast(xp, x0, a / sqrt(xp, a * a + b * b), b / sqrt(xp, a * a + b * b))
    return p * eps - q * x0                                         # V §4, on the rescaled path


def _converted(xp: Any, x: Any, out: Any, a: Any, b: Any, source: str, target: str) -> Any:
    """A prediction of type ``source`` at x expressed as one of type ``target`` (as is if
    equal)."""
    if source == target:
        return out
    x0, eps = _x0_eps(xp, x, out, a, b, source)
    return _prediction(xp, x0, eps, a, b, target)


# ----- checked prologues --------------------------------------------------------------------

def _path_level(xp: Any, path: str, level: Any, x: Any = None, name: str = "level") -> Any:
    _xp.choice("path", path, PATHS)
    lo, hi = _LEVEL_RANGE[path]
    return _xp.level(xp, name, level, x, lo=lo, hi=hi, hi_open=path == "ve")


def _ab(xp: Any, a: Any, b: Any, x: Any, prediction_type: str) -> tuple[Any, Any]:
    """(a, b) checked: finite, ≥ 0, not both 0; a > 0 for ε, b > 0 for x_0 (else the
    prediction cannot be inverted)."""
    _xp.choice("prediction_type", prediction_type, PATH_PREDICTIONS)
    a = _xp.level(xp, "a", a, x, lo=0.0, hi=math.inf, lo_open=prediction_type == "epsilon",
                  hi_open=True)
    b = _xp.level(xp, "b", b, x, lo=0.0, hi=math.inf, lo_open=prediction_type == "sample",
                  hi_open=True)
    if not (_xp.is_array(a) or _xp.is_array(b)) and a + b == 0:
        raise ValueError("a and b must not both be 0 (got a=0, b=0)")
    return a, b


def path_coefficients(path: str, level: Any) -> tuple[Any, Any]:
    """The coefficients (a, b) of x = a·x_0 + b·ε at one level of a path.

    Parameters
    ----------
    path : {"vp", "ve", "flow"}
    level : float or array
        ᾱ ∈ [0, 1] (VP), σ ∈ [0, ∞) (VE), or t ∈ [0, 1] (flow).

    Returns
    -------
    a, b : floats, or arrays of the level's shape, dtype and device

    References
    ----------
    EDM, arXiv:2206.00364v2, Table 1; FM, arXiv:2210.02747v2, Eq. 23; RF,
    arXiv:2209.03003v1, Eq. 1.

    Examples
    --------
    >>> path_coefficients("flow", 0.25)
    (0.75, 0.25)
    """
    xp = _xp.namespace(level=level) if _xp.is_array(level) else None
    level = _path_level(xp, path, level)
    return _coefficients(xp, path, level)


def path_sigma(path: str, level: Any) -> Any:
    """σ = b/a of a level: √((1 − ᾱ)/ᾱ) (VP), σ (VE), t/(1 − t) (flow); ∞ at ᾱ = 0 or t = 1.

    Examples
    --------
    >>> path_sigma("vp", 0.2), path_sigma("flow", 0.8)
    (2.0, 4.000000000000001)
    """
    xp = _xp.namespace(level=level) if _xp.is_array(level) else None
    return _sigma(xp, path, _path_level(xp, path, level))


def path_level(path: str, sigma: Any) -> Any:
    """The level of ``path`` at noise-to-signal ratio σ: 1/(1 + σ²) (VP), σ (VE),
    σ/(1 + σ) (flow); σ = ∞ gives ᾱ = 0 and t = 1. The inverse of :func:`path_sigma`.

    Examples
    --------
    >>> path_level("vp", 2.0), path_level("flow", 3.0)
    (0.2, 0.75)
    """
    _xp.choice("path", path, PATHS)
    if not _xp.is_array(sigma):
        return _level(None, path, sigma if sigma == math.inf else _xp.number("sigma", sigma, lo=0.0))
    xp = _xp.namespace(sigma=sigma)
    _xp.check_floating(xp, "sigma", sigma)
    if _xp.readable(sigma) and bool(xp.any((sigma < 0) | xp.isnan(sigma))):
        raise ValueError("sigma must lie in [0, inf], got values outside it (or NaN)")
    return _level(xp, path, sigma)


def change_path(x: Any, path: str, level: Any, new_path: str) -> tuple[Any, Any]:
    """Move x from a level of one path to the level of another with the same σ.

    .. math:: x' = x·\\sqrt{a'^2 + b'^2}/\\sqrt{a^2 + b^2},\\quad b'/a' = b/a

    Parameters
    ----------
    x : array, shape (B, ...)
    path, new_path : {"vp", "ve", "flow"}
    level : float or array, shape () or (B,)
        The level of x on ``path``; ᾱ = 0 and t = 1 (σ = ∞) are allowed, VE σ is finite.

    Returns
    -------
    x_new : array, shape, dtype and device of ``x``
    new_level : float or array
        The level on ``new_path``.

    Notes
    -----
    x_VP = x_VE·√ᾱ and x_flow = x_VE/(1 + σ). With (a', b') = k·(a, b), the factor k equals
    (a' + b')/(a + b) = √(a'² + b'²)/√(a² + b²); the first form is evaluated (a sum of
    non-negative terms, no square root), and it is finite at σ = ∞ too.

    References
    ----------
    EDM, arXiv:2206.00364v2, §2 (x = s(t)·x̂ with x̂ on the σ path).

    Examples
    --------
    >>> import numpy as np
    >>> change_path(np.array([1.0]), "ve", 3.0, "flow")
    (array([0.25]), 0.75)
    """
    xp = _xp.arrays("x", x)
    level = _path_level(xp, path, level, x)
    _xp.choice("new_path", new_path, PATHS)
    new_level = _level(xp, new_path, _sigma(xp, path, level))
    a, b = _coefficients(xp, path, level)
    a2, b2 = _coefficients(xp, new_path, new_level)
    (k,) = cast(xp, x, (a2 + b2) / (a + b))
    return k * x, new_level


def path_x0_eps(x: Any, model_output: Any, a: Any, b: Any,
                prediction_type: str = "epsilon") -> tuple[Any, Any]:
    """(x̂_0, ε̂) from a model's prediction at x = a·x_0 + b·ε, on any Gaussian path.

    .. math::
        \\text{epsilon: } \\hat x_0 = \\frac{x − bε}{a};\\quad
        \\text{sample: } \\hat ε = \\frac{x − a\\hat x_0}{b};\\quad
        \\text{velocity } u = ε − x_0:\\ \\hat x_0 = \\frac{x − bu}{a + b},\\
        \\hat ε = \\frac{x + au}{a + b};\\quad
        \\text{v: } \\hat x_0 = \\frac{ax − bcv}{c^2},\\ \\hat ε = \\frac{bx + acv}{c^2},\\
        c = \\sqrt{a^2 + b^2}

    Parameters
    ----------
    x, model_output : arrays, shape (B, ...)
    a, b : float or array, shape () or (B,)
        Finite and ≥ 0, not both 0; a > 0 for ``"epsilon"``, b > 0 for ``"sample"``
        (:func:`path_coefficients` gives them for a path).
    prediction_type : {"epsilon", "sample", "v_prediction", "velocity"}

    Returns
    -------
    x0_hat, eps : arrays, shape, dtype and device of ``x``

    References
    ----------
    V, arXiv:2202.00512v2, §4 and Appendix D; RF, arXiv:2209.03003v1, Eq. 1.

    Examples
    --------
    >>> import numpy as np
    >>> path_x0_eps(np.array([0.5]), np.array([1.0]), 0.5, 0.5, "velocity")
    (array([0.]), array([1.]))
    """
    xp = _xp.arrays("x", x, model_output=model_output)
    a, b = _ab(xp, a, b, x, prediction_type)
    return _x0_eps(xp, x, model_output, a, b, prediction_type)


def path_prediction(x0: Any, eps: Any, a: Any, b: Any, prediction_type: str = "epsilon") -> Any:
    """The prediction of a type from (x_0, ε) at (a, b): the inverse of :func:`path_x0_eps`
    given x = a·x_0 + b·ε; the training target of that parameterisation.

    Parameters
    ----------
    x0, eps : arrays, shape (B, ...)
    a, b : float or array, shape () or (B,)
        Finite, ≥ 0, not both 0.
    prediction_type : {"epsilon", "sample", "v_prediction", "velocity"}

    Returns
    -------
    prediction : array, shape, dtype and device of ``x0``

    Examples
    --------
    >>> import numpy as np
    >>> path_prediction(np.array([1.0]), np.array([0.0]), 0.6, 0.8, "v_prediction")
    array([-0.8])
    """
    xp = _xp.arrays("x0", x0, eps=eps)
    a, b = _ab(xp, a, b, x0, "v_prediction")
    _xp.choice("prediction_type", prediction_type, PATH_PREDICTIONS)
    return _prediction(xp, x0, eps, a, b, prediction_type)


def convert_prediction(x: Any, model_output: Any, a: Any, b: Any, source: str,
                       target: str) -> Any:
    """A prediction of type ``source`` at x = a·x_0 + b·ε as one of type ``target``:
    :func:`path_prediction` of :func:`path_x0_eps`. Exact in exact arithmetic.

    Examples
    --------
    >>> import numpy as np
    >>> convert_prediction(np.array([1.0]), np.array([0.0]), 1.0, 1.0, "epsilon", "velocity")
    array([-1.])
    """
    xp = _xp.arrays("x", x, model_output=model_output)
    a, b = _ab(xp, a, b, x, source)
    _xp.choice("target", target, PATH_PREDICTIONS)
    return _converted(xp, x, model_output, a, b, source, target)
