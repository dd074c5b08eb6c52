"""The Gaussian-mixture oracle on every Gaussian path, and the exact probability-flow ODE
solution of a single Gaussian.

A level (a, b) of any path holds the same distribution as the VP level ᾱ = a²/(a² + b²)
scaled by c = √(a² + b²) (:mod:`refdiff.paths`), so the exact predictions on a path are the
VP oracle's at x/c: x̂_0 = E[x_0 | x] and ε̂ = E[ε | x] are unchanged by the scaling, and v, u
and the score follow from them (score = −ε̂/b on the path).

For one Gaussian N(μ, U diag(λ) Uᵀ) the probability-flow ODE on the VE path, dx/dσ =
(x − D(x; σ))/σ with D = μ + Σ(Σ + σ²I)⁻¹(x − μ), is solved exactly by

.. math:: x(σ') − μ = U\\,\\mathrm{diag}\\Big(\\sqrt{\\frac{λ + σ'^2}{λ + σ^2}}\\Big)\\,U^T (x(σ) − μ)

(along each eigenvector the ODE is dy/dσ = σy/(λ + σ²)), which the convergence-order test and
the accuracy study use as the reference.

References
----------
.. [EDM] T. Karras et al., arXiv:2206.00364v2, Eq. 4 (dx/dσ = −σ·∇ log p = (x − D)/σ) and
   Eq. 3 (D is the minimiser of the denoising loss, E[x_0 | x]).
.. [SDE] Y. Song et al., arXiv:2011.13456v2, Eq. 13 (the probability-flow ODE).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from refdiff import _xp
from refdiff.oracle import GaussianMixture
from refdiff.paths import (PATH_PREDICTIONS, PATHS, _coefficients, _path_level,
                           _prediction)


def _checked_mixture(mixture: Any) -> GaussianMixture:
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a refdiff.oracle.GaussianMixture, got "
                        f"{type(mixture).__name__}")
    return mixture


def _vp_x0_eps(mixture: GaussianMixture, xp: Any, x: Any, a: Any, b: Any, y: Any) -> Any:
    """(x̂_0, ε̂) at x = a·x_0 + b·ε: the VP oracle at x/√(a² + b²), ᾱ = a²/(a² + b²)."""
    c2 = a * a + b * b
    (inv_c,) = _xp.cast(xp, x, 1.0 / _xp.sqrt(xp, c2))
    return mixture.x0_eps(x * inv_c, a * a / c2, y)


def exact_prediction(mixture: GaussianMixture, x: Any, path: str, level: Any,
                       prediction_type: str = "sample", y: Any = None) -> Any:
    """The exact prediction of a type at x on a level of a path (marginal or class y).

    Parameters
    ----------
    mixture : GaussianMixture
    x : array, shape (B, d)
    path : {"vp", "ve", "flow"}
    level : float or array, shape () or (B,)
        ᾱ, σ or t (:func:`refdiff.path_coefficients`).
    prediction_type : {"sample", "epsilon", "v_prediction", "velocity", "score"}
        "sample" is x̂_0 = E[x_0 | x]; "score" is ∇_x log p(x) on the path, −ε̂/b.
    y : int or integer array, optional
        A class label (:meth:`GaussianMixture.x0_eps`).

    Returns
    -------
    array, shape, dtype and device of ``x``

    References
    ----------
    EDM, arXiv:2206.00364v2, Eq. 3; SDE, arXiv:2011.13456v2, Appendix B.

    Examples
    --------
    >>> import numpy as np
    >>> from refdiff.oracle import GaussianMixture
    >>> g = GaussianMixture.isotropic([1.0], [[0.0]], [1.0])
    >>> exact_prediction(g, np.array([[2.0]]), "ve", 1.0)  # D = x/(1 + σ²)
    array([[1.]])
    """
    mixture = _checked_mixture(mixture)
    xp = _xp.arrays("x", x)
    level = _path_level(xp, path, level, x)
    _xp.choice("prediction_type", prediction_type, PATH_PREDICTIONS + ("score",))
    a, b = _coefficients(xp, path, level)
    x0, eps = _vp_x0_eps(mixture, xp, x, a, b, y)
    if prediction_type == "score":
        (inv_b,) = _xp.cast(xp, x, 1.0 / b)
        return -inv_b * eps
    return _prediction(xp, x0, eps, a, b, prediction_type)


def exact_model(mixture: GaussianMixture, path: str = "ve",
                prediction_type: str = "sample") -> Callable[[Any, float, Any], Any]:
    """The oracle as a model of :func:`refdiff.sample_ode` / :func:`refdiff.sample_flow`:
    ``model(x_m, level, c)`` returns the exact prediction on ``path`` (c: a label or None).

    Examples
    --------
    >>> import numpy as np
    >>> from refdiff.oracle import GaussianMixture
    >>> g = GaussianMixture.isotropic([1.0], [[0.0]], [1.0])
    >>> exact_model(g, "flow", "velocity")(np.array([[1.0]]), 0.5, None)  # x̂_0 = ε̂ = 1
    array([[0.]])
    """
    mixture = _checked_mixture(mixture)
    _xp.choice("path", path, PATHS)
    _xp.choice("prediction_type", prediction_type, PATH_PREDICTIONS)

    def model(x: Any, level: Any, c: Any = None) -> Any:
        return exact_prediction(mixture, x, path, level, prediction_type, c)

    return model


def gaussian_ode_solution(mixture: GaussianMixture, x: Any, sigma: float,
                          sigma_next: float) -> Any:
    """x(σ') of the probability-flow ODE from x(σ) on the VE path, exactly, for a mixture
    of one component (module docstring).

    Parameters
    ----------
    mixture : GaussianMixture
        One component (K = 1); the solution of a mixture has no closed form.
    x : array, shape (B, d)
    sigma, sigma_next : float
        σ ≥ 0 and σ' ≥ 0, in either order (the ODE is solved backwards or forwards).

    Returns
    -------
    x_next : array, shape, dtype and device of ``x``

    References
    ----------
    EDM, arXiv:2206.00364v2, Eq. 4; SDE, arXiv:2011.13456v2, Eq. 13.

    Examples
    --------
    >>> import numpy as np
    >>> from refdiff.oracle import GaussianMixture
    >>> g = GaussianMixture.isotropic([1.0], [[0.0]], [1.0])
    >>> gaussian_ode_solution(g, np.array([[2.0]]), 1.0, 0.0)  # √(1/2)·2
    array([[1.41421356]])
    """
    mixture = _checked_mixture(mixture)
    if mixture.means.shape[0] != 1:
        raise ValueError(f"gaussian_ode_solution needs a mixture of one component, got "
                         f"{mixture.means.shape[0]}")
    xp = _xp.arrays("x", x)
    if x.ndim != 2 or x.shape[1] != mixture.dim:
        raise ValueError(f"x must have shape (B, {mixture.dim}), got {tuple(x.shape)}")
    s0 = _xp.number("sigma", sigma, lo=0.0)
    s1 = _xp.number("sigma_next", sigma_next, lo=0.0)
    dev = _xp.device(x)
    mu, U = (xp.asarray(p, dtype=x.dtype, device=dev)
             for p in (mixture.means[0], mixture.eigvecs[0]))
    lam64 = [float(v) for v in mixture.eigvals[0]]
    k = xp.asarray([math.sqrt((v + s1 * s1) / (v + s0 * s0)) for v in lam64], dtype=x.dtype,
                   device=dev)                                      # (d,), from float64
    proj = xp.matmul(x - mu, U)                                     # Uᵀ(x − μ), (B, d)
    return mu + xp.matmul(proj * k, xp.matrix_transpose(U))
