"""Classifier guidance: the gradient of a noisy classifier, folded into ε̂ or into the mean.

Symbols: ``grad_log_prob`` = g = ∇_{x_t} log p_φ(y | x_t), taken at x_t with the original
training timestep of the step; ``scale`` = s (the paper's gradient scale); ``variance`` = Σ,
the variance actually used for the DDPM step.

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

_ANY = {"lo": -math.inf, "hi": math.inf}


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
    xp = _xp.namespace(eps=eps, grad_log_prob=grad_log_prob)
    _xp.check_like(xp, "eps", eps, grad_log_prob=grad_log_prob)
    s = _xp.scalar(xp, "scale", scale, eps, **_ANY)
    if not _xp.is_array(s) and s == 0:
        return eps * 1.0
    ab = _xp.scalar(xp, "alpha_bar_t", alpha_bar_t, eps)
    coef = _xp.cast_to(xp, s * _xp.sqrt(xp, 1.0 - ab), eps)
    return eps - coef * grad_log_prob


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

    References
    ----------
    CG, arXiv:2105.05233v4, Algorithm 1 and Eqs. 10–12.
    """
    xp = _xp.namespace(mean=mean, grad_log_prob=grad_log_prob)
    _xp.check_like(xp, "mean", mean, grad_log_prob=grad_log_prob)
    s = _xp.scalar(xp, "scale", scale, mean, **_ANY)
    if not _xp.is_array(s) and s == 0:
        return mean * 1.0
    if _xp.is_array(variance) and variance.ndim == mean.ndim and variance.ndim > 0:
        _xp.namespace(mean=mean, variance=variance)  # (B, 1, ..., 1) or the full shape
    else:
        variance = _xp.scalar(xp, "variance", variance, mean, lo=0.0, hi=math.inf)
    return mean + _xp.cast_to(xp, s * variance, mean) * grad_log_prob


def classifier_gradient(log_prob_fn: Callable[[Any], Any], x_t: Any, *,
                        grad_fn: Callable[[Any], Any] | None = None):
    """g = ∇_{x_t} Σ_b log p_φ(y_b | x_t[b]), through the backend of ``x_t``.

    Parameters
    ----------
    log_prob_fn : callable
        ``log_prob_fn(x_t) -> array`` of shape (B,) (or a scalar): log p_φ(y | x_t) of each
        sample, with the label and the training timestep bound by the caller. Samples are
        independent, so the gradient of the sum is the per-sample gradient.
    x_t : array, shape (B, ...)
    grad_fn : callable, optional
        ``grad_fn(x_t) -> array`` of the shape of ``x_t``: an analytic gradient. Needed on
        backends without automatic differentiation (NumPy, array-api-strict).

    Returns
    -------
    array, shape, dtype and device of ``x_t``

    Raises
    ------
    TypeError
        If the backend has no autograd and no ``grad_fn`` is given.

    Notes
    -----
    On torch the gradient is taken by autograd at a detached copy of ``x_t`` (the guidance
    direction is not itself differentiated, as in CG's released code).

    References
    ----------
    CG, arXiv:2105.05233v4, Algorithms 1–2 (∇_{x_t} log p_φ(y | x_t)).
    """
    from refdiff.backends import get_backend

    xp = _xp.namespace(x_t=x_t)
    _xp.check_floating(xp, "x_t", x_t)
    if grad_fn is not None:
        g = grad_fn(x_t)
    else:
        g = get_backend(x_t).grad(lambda x: xp.sum(log_prob_fn(x)), x_t)
    _xp.namespace(x_t=x_t, grad=g)
    _xp.check_like(xp, "x_t", x_t, grad=g)
    return g
