"""Classifier-free guidance and its common variants.

Symbols: ``eps_uncond`` = ε_u (the prediction without condition, or with the negative
condition), ``eps_cond`` = ε_c, ``eps_guided`` = ε̃ (the guided prediction), ``scale`` = s, the
paper's guidance weight w = s − 1, ``phi`` = φ (guidance rescale). The ``eps_*`` names hold
predictions in any one space (ε, x̂_0 or v); ``cond``/``uncond`` are conditions, never
predictions.

One canonical form, ε̃ = ε_u + s·(ε_c − ε_u): s = 0 gives ε_u and s = 1 gives ε_c bit for bit,
on every backend. Ho & Salimans write ε̃ = (1 + w)·ε_c − w·ε_u, which is the same line with
s = 1 + w (:func:`cfg_scale_from_w`). diffusers' ``guidance_scale`` is s. No scale is shifted
or gated: s in (0, 1) interpolates and s < 0 extrapolates away from the condition.

Plain CFG is affine in the prediction, so applying it to ε, to x̂_0 or to v gives the same
sampler step. :func:`guidance_rescale` is not affine: it acts in the space of the arrays it is
given, and the sampling loop says which space it passes.

References
----------
.. [CFG] J. Ho, T. Salimans, "Classifier-Free Diffusion Guidance", arXiv:2207.12598v1, Eq. 6.
.. [COMP] N. Liu, S. Li, Y. Du, A. Torralba, J. B. Tenenbaum, "Compositional Visual Generation
   with Composable Diffusion Models", arXiv:2206.01714v6, §3 (conjunction and negation of
   conditions: ε̃ = ε_u + Σ_i w_i·(ε_i − ε_u)).
.. [ZSNR] S. Lin, B. Liu, J. Li, X. Yang, arXiv:2305.08891v4, §3.4, Eqs. 15–16
   (guidance rescale).
"""

from __future__ import annotations

from typing import Any, Sequence

from refdiff import _xp
from refdiff._xp import cast


def cfg_scale_from_w(w: float) -> float:
    """The scale s of refdiff (and diffusers) from the paper's guidance weight w: s = 1 + w.

    Parameters
    ----------
    w : float
        The paper's guidance weight.

    Returns
    -------
    float
        s = 1 + w.

    References
    ----------
    CFG, arXiv:2207.12598v1, Eq. 6: ε̃ = (1 + w)·ε_c − w·ε_u.
    """
    return 1.0 + float(w)


def w_from_cfg_scale(scale: float) -> float:
    """The paper's guidance weight w from the scale s: w = s − 1 (inverse of
    :func:`cfg_scale_from_w`).

    Parameters
    ----------
    scale : float
        s.

    Returns
    -------
    float
        w = s − 1.
    """
    return float(scale) - 1.0


# ----- bodies: math only ------------------------------------------------------------------

def _lerp(xp: Any, a: Any, b: Any, s: Any) -> Any:
    """a + s·(b − a), exact at s = 0 (gives a) and s = 1 (gives b), bit for bit.

    Numerical choice: the two-sided form a + s·d for s < 1/2 and b − (1 − s)·d otherwise keeps
    the rounding error of the interior small on both halves, and the ends are returned
    outright, so a signed zero or a non-finite value in the other operand cannot leak in.
    """
    if not _xp.is_array(s):
        if s == 0:
            return a * 1.0  # a fresh array, equal to a bit for bit
        if s == 1:
            return b * 1.0
        return a + s * (b - a) if s < 0.5 else b - (1.0 - s) * (b - a)
    d = b - a
    inner = xp.where(s < 0.5, a + s * d, b - (1.0 - s) * d)
    return xp.where(s == 0, a, xp.where(s == 1, b, inner))


def _cfg(xp: Any, eps_uncond: Any, eps_cond: Any, s: Any) -> Any:
    (s,) = cast(xp, eps_uncond, s)
    return _lerp(xp, eps_uncond, eps_cond, s)                       # CFG Eq. 6, s = 1 + w


def _cfg_multi(xp: Any, eps_uncond: Any, eps_conds: Sequence[Any], scales: Sequence[Any]) -> Any:
    if len(eps_conds) == 1:
        return _cfg(xp, eps_uncond, eps_conds[0], scales[0])
    eps = eps_uncond * 1.0                                          # COMP §3: start from ε_u
    for e, s in zip(eps_conds, cast(xp, eps_uncond, *scales)):
        if _xp.is_array(s) or s != 0:
            eps = eps + s * (e - eps_uncond)                        # COMP §3: Σ_i s_i·(ε_i − ε_u)
    return eps


def _std_per_sample(xp: Any, x: Any, axes: tuple[int, ...]) -> Any:
    """σ per sample over ``axes``, computed as m·σ((x − x₀)/m) with x₀ the sample's first
    element and m = max|x − x₀|. Equal to σ(x) in exact arithmetic; exactly 0 for a constant
    sample on every backend (plain σ gives backend-dependent rounding noise there), and free
    of the underflow of squaring tiny values in float16/float32."""
    lead = (x.shape[0],) + (1,) * (x.ndim - 1)
    d = x - xp.reshape(xp.reshape(x, (x.shape[0], -1))[:, :1], lead)
    m = xp.max(xp.abs(d), axis=axes, keepdims=True)
    return xp.std(d / xp.where(m == 0, 1.0, m), axis=axes, keepdims=True) * m


def _guidance_rescale(xp: Any, eps_guided: Any, eps_cond: Any, phi: float) -> Any:
    if phi == 0 or eps_guided.shape[0] == 0:                        # nothing to rescale
        return eps_guided * 1.0                                     # Eq. 16 at φ = 0, exactly
    axes = tuple(range(1, eps_guided.ndim))
    std_g = _std_per_sample(xp, eps_guided, axes)
    std_c = _std_per_sample(xp, eps_cond, axes)
    ratio = xp.where(std_g == 0, 1.0, std_c / xp.where(std_g == 0, 1.0, std_g))  # Eq. 15
    return phi * (eps_guided * ratio) + (1.0 - phi) * eps_guided    # Eq. 16


# ----- public functions -------------------------------------------------------------------

def cfg(eps_uncond: Any, eps_cond: Any, scale: Any) -> Any:
    """Classifier-free guidance: ε̃ = ε_u + s·(ε_c − ε_u).

    Parameters
    ----------
    eps_uncond : array, shape (B, ...)
        Prediction without the condition (or with a negative condition: the same formula
        then steers away from it). Any parameterisation (ε, x̂_0 or v), as long as both
        arguments use the same one.
    eps_cond : array, shape of ``eps_uncond``
        Prediction with the condition.
    scale : float or array, shape () or (B,)
        s. 0 gives ``eps_uncond`` and 1 gives ``eps_cond`` exactly; any finite value is
        legal. The paper's w is s − 1.

    Returns
    -------
    eps_guided : array, shape, dtype and device of ``eps_uncond``

    Raises
    ------
    TypeError, ValueError
        For arrays of another library, device, dtype or shape (always, under tracing too),
        and for a non-finite ``scale``: that value check runs on Python floats and host
        arrays and is skipped for traced arrays (``jax.jit``, ``torch.compile``,
        ``torch.func``) and for arrays on an accelerator.

    Notes
    -----
    .. math:: \\tilde ε = ε_u + s\\,(ε_c − ε_u) = (1 + w)\\,ε_c − w\\,ε_u,\\quad s = 1 + w

    References
    ----------
    CFG, arXiv:2207.12598v1, Eq. 6.

    Examples
    --------
    >>> import numpy as np
    >>> cfg(np.array([0.0, 1.0]), np.array([1.0, 1.0]), 3.0)
    array([3., 1.])
    """
    xp = _xp.arrays("eps_uncond", eps_uncond, eps_cond=eps_cond)
    s = _xp.any_real(xp, "scale", scale, eps_uncond)
    return _cfg(xp, eps_uncond, eps_cond, s)


def cfg_multi(eps_uncond: Any, eps_conds: Sequence[Any], scales: Sequence[Any]) -> Any:
    """Guidance with several conditions: ε̃ = ε_u + Σ_i s_i·(ε_i − ε_u).

    A negative s_i steers away from condition i (the "NOT" of composable diffusion). With
    one condition this is :func:`cfg` (and as exact); with every s_i = 0 it returns ε_u.

    Parameters
    ----------
    eps_uncond : array, shape (B, ...)
    eps_conds : sequence of arrays, each of the shape of ``eps_uncond``
    scales : sequence of floats or (B,) arrays, one per condition

    Returns
    -------
    eps_guided : array, shape, dtype and device of ``eps_uncond``

    References
    ----------
    COMP, arXiv:2206.01714v6, §3 (conjunction with weights w_i; negation with w_i < 0).
    """
    for name, seq in (("eps_conds", eps_conds), ("scales", scales)):
        if not isinstance(seq, (list, tuple)):
            raise TypeError(f"{name} must be a list or tuple (one entry per condition), got "
                            f"{type(seq).__name__}")
    if len(eps_conds) != len(scales) or len(eps_conds) == 0:
        raise ValueError(f"eps_conds and scales must be non-empty and of equal length, got "
                         f"{len(eps_conds)} and {len(scales)}")
    named = {f"eps_conds[{i}]": e for i, e in enumerate(eps_conds)}
    xp = _xp.arrays("eps_uncond", eps_uncond, **named)
    scales = [_xp.any_real(xp, f"scales[{i}]", s, eps_uncond) for i, s in enumerate(scales)]
    return _cfg_multi(xp, eps_uncond, list(eps_conds), scales)


def guidance_rescale(eps_guided: Any, eps_cond: Any, phi: float) -> Any:
    """Rescale a guided prediction towards the standard deviation of the conditional one.

    .. math::
        ε_r = \\tilde ε\\,\\frac{σ(ε_c)}{σ(\\tilde ε)},\\qquad
        ε_{final} = φ\\,ε_r + (1 − φ)\\,\\tilde ε

    σ is the standard deviation per sample over all non-batch axes. Where σ(ε̃) = 0 the
    ratio is taken as 1 (nothing to rescale). σ is computed after subtracting each sample's
    first element, so a constant sample gives σ = 0 exactly on every backend rather than
    backend-dependent rounding noise. φ = 0 returns ``eps_guided`` exactly.

    Not affine: the result depends on the space of ``eps_guided`` and ``eps_cond`` (ε, x̂_0 or
    v). diffusers applies it to the model's output (ε or v, whichever the network predicts);
    :func:`refdiff.sample` does the same by default and takes the space as an option.

    Parameters
    ----------
    eps_guided : array, shape (B, ...)
        The CFG result ε̃.
    eps_cond : array, shape of ``eps_guided``
        The conditional prediction ε_c, in the same space.
    phi : float
        φ in [0, 1]; the paper uses 0.7.

    Returns
    -------
    array, shape, dtype and device of ``eps_guided``

    References
    ----------
    ZSNR, arXiv:2305.08891v4, §3.4, Eqs. 15–16.
    """
    xp = _xp.arrays("eps_guided", eps_guided, eps_cond=eps_cond)
    if eps_guided.ndim < 2:
        raise ValueError(f"eps_guided must have a batch axis and at least one more, got shape "
                         f"{tuple(eps_guided.shape)}")
    if _xp.is_array(phi):
        raise TypeError("phi must be a Python float")
    phi = _xp.number("phi", phi, lo=0.0, hi=1.0)
    return _guidance_rescale(xp, eps_guided, eps_cond, phi)
