"""Classifier guidance: the gradient of a noisy classifier, folded into ε̂ or into the mean.

Symbols: ``grad_log_prob`` = g = ∇_{x_t} log p_φ(y | x_t), taken at x_t with the original
training timestep of the step (the same name everywhere: the array here, the callable in
:class:`refdiff.Guidance`); ``scale`` = s (the paper's gradient scale); ``variance`` = Σ, the
variance (an array or float, never a string option) actually used for the DDPM step.

Two forms, one per sampler:

- DDPM (CG Algorithm 1): μ̃ = μ + s·Σ·g, then x_prev ~ N(μ̃, Σ).
- DDIM (CG Algorithm 2): ε̂' = ε̂ − s·√(1−ᾱ_t)·g, then an ordinary DDIM step with ε̂'.

Because ε = −√(1−ᾱ)·∇ log p(x_t) for the exact noisy density, the DDIM form with the exact
noisy classifier on the unconditional model equals classifier-free guidance at the same scale.

References
----------
.. [CG] P. Dhariwal, A. Nichol, "Diffusion Models Beat GANs on Image Synthesis",
   arXiv:2105.05233v4, Algorithm 1, Algorithm 2 and Eqs. 12–14 (§4.2).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from refdiff import _xp
from refdiff._xp import cast, sqrt


# ----- bodies: math only ------------------------------------------------------------------

def _classifier_guided_eps(xp, eps: Any, grad_log_prob: Any, ab_t: Any, s: Any):
    if not _xp.is_array(s) and s == 0:
        return eps * 1.0                                            # Algorithm 2 at s = 0, exactly
    (coef,) = cast(xp, eps, s * sqrt(xp, 1.0 - ab_t))
    return eps - coef * grad_log_prob                               # CG Algorithm 2, Eq. 14


def _classifier_guided_mean(xp, mean: Any, variance: Any, grad_log_prob: Any, s: Any):
    if not _xp.is_array(s) and s == 0:
        return mean * 1.0                                           # Algorithm 1 at s = 0, exactly
    (coef,) = cast(xp, mean, s * variance)
    return mean + coef * grad_log_prob                              # CG Algorithm 1: μ + s·Σ·g


def _classifier_gradient(xp, log_prob: Callable[[Any], Any], x_t: Any,
                         grad_log_prob: Callable[[Any], Any] | None):
    """g from the analytic gradient or from autograd; the result is checked against x_t."""
    if grad_log_prob is not None:
        g = grad_log_prob(x_t)
    else:
        from refdiff.backends import get_backend

        g = get_backend(x_t).grad(lambda x: xp.sum(log_prob(x)), x_t)
    _xp.returned(xp, "x_t", x_t, grad=g)
    return g


# ----- public functions -------------------------------------------------------------------

def classifier_guided_eps(eps: Any, grad_log_prob: Any, alpha_bar_t: Any, scale: Any):
    """ε̂' = ε̂ − s·√(1−ᾱ_t)·∇_{x_t} log p_φ(y | x_t) (CG Algorithm 2).

    Parameters
    ----------
    eps : array, shape (B, ...)
        The model's ε̂ at x_t.
    grad_log_prob : array, shape of ``eps``
        g = ∇_{x_t} log p_φ(y | x_t), e.g. from :func:`classifier_gradient`.
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in [0, 1].
    scale : float or array, shape () or (B,)
        s. Scale 0 returns ``eps`` exactly.

    Returns
    -------
    array, shape, dtype and device of ``eps``

    References
    ----------
    CG, arXiv:2105.05233v4, Algorithm 2 and Eq. 14.
    """
    xp = _xp.arrays("eps", eps, grad_log_prob=grad_log_prob)
    s = _xp.any_real(xp, "scale", scale, eps)
    ab_t = _xp.level(xp, "alpha_bar_t", alpha_bar_t, eps)
    return _classifier_guided_eps(xp, eps, grad_log_prob, ab_t, s)


def classifier_guided_mean(mean: Any, variance: Any, grad_log_prob: Any, scale: Any):
    """μ̃ = μ + s·Σ·∇_{x_t} log p_φ(y | x_t) (CG Algorithm 1).

    Parameters
    ----------
    mean : array, shape (B, ...)
        μ of the reverse step, e.g. from :func:`refdiff.ddpm_mean_variance`.
    variance : float or array
        Σ of that step: a float, or an array of shape (), (B,), (B, 1, ..., 1) or the shape
        of ``mean``.
    grad_log_prob : array, shape of ``mean``
    scale : float or array, shape () or (B,)
        s. Scale 0 returns ``mean`` exactly.

    Returns
    -------
    array, shape, dtype and device of ``mean``

    References
    ----------
    CG, arXiv:2105.05233v4, Algorithm 1 and Eqs. 10–12.
    """
    xp = _xp.arrays("mean", mean, grad_log_prob=grad_log_prob)
    s = _xp.any_real(xp, "scale", scale, mean)
    if not _xp.is_array(s) and s == 0:
        return _classifier_guided_mean(xp, mean, None, grad_log_prob, s)  # Σ is not used
    if _xp.is_array(variance) and variance.ndim == mean.ndim and variance.ndim > 0:
        _xp.namespace(mean=mean, variance=variance)  # (B, 1, ..., 1) or the full shape
    else:
        variance = _xp.level(xp, "variance", variance, mean, lo=0.0, hi=math.inf)
    return _classifier_guided_mean(xp, mean, variance, grad_log_prob, s)


def classifier_gradient(log_prob: Callable[[Any], Any], x_t: Any, *,
                        grad_log_prob: Callable[[Any], Any] | None = None):
    """g = ∇_{x_t} Σ_b log p_φ(y_b | x_t[b]), through the backend of ``x_t``.

    Parameters
    ----------
    log_prob : callable
        ``log_prob(x_t) -> array`` of shape (B,) (or a scalar): log p_φ(y | x_t) of each
        sample, with the label and the training timestep bound by the caller. Samples are
        independent, so the gradient of the sum is the per-sample gradient.
    x_t : array, shape (B, ...)
    grad_log_prob : callable, optional
        ``grad_log_prob(x_t) -> array`` of the shape of ``x_t``: an analytic gradient. Needed
        on backends without automatic differentiation (NumPy, array-api-strict).

    Returns
    -------
    grad_log_prob : array, shape, dtype and device of ``x_t``

    Raises
    ------
    TypeError
        If the backend has no autograd and no ``grad_log_prob`` is given.

    Notes
    -----
    On torch the gradient is taken by autograd at a detached copy of ``x_t`` (the guidance
    direction is not itself differentiated, as in CG's released code).

    References
    ----------
    CG, arXiv:2105.05233v4, Algorithms 1–2 (∇_{x_t} log p_φ(y | x_t)).
    """
    xp = _xp.namespace(x_t=x_t)
    _xp.check_floating(xp, "x_t", x_t)
    return _classifier_gradient(xp, log_prob, x_t, grad_log_prob)
