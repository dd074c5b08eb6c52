"""Guidance distillation: one scale-conditioned network in place of CFG's two evaluations.

Symbols: ``scale`` = s, refdiff's CFG scale (ε̃ = ε_u + s·(ε_c − ε_u)); the paper's guidance
weight is w = s − 1, as in CFG (x̂^w = (1 + w)·x̂_c − w·x̂_u). ``teacher_uncond`` /
``eps_uncond`` / ``eps_cond`` = the teacher's predictions without / with the condition at (x_t, t)
(in any one space: ε, x̂_0 or v).

Stage one of Meng et al. trains a student f_η(x_t, t, c, w) to match the teacher's guided
prediction at a guidance weight drawn per sample from U[w_min, w_max], with w fed to the
student through a Fourier (sinusoidal) embedding, like the timestep. Sampling the student
then costs one network evaluation per step instead of two. (Stage two, progressive
distillation to fewer steps, is not part of refdiff.)

Convention: every function here takes the scale s. :func:`guidance_scale_embedding` embeds
the paper's w = s − 1 (so the plain conditional model, s = 1, is w = 0), multiplied by 1000
so that the usual timestep frequencies resolve it; diffusers' latent-consistency pipelines
embed w = s − 1 with the same factor.

References
----------
.. [GD] C. Meng, R. Rombach, R. Gao, D. Kingma, S. Ermon, J. Ho, T. Salimans, "On
   Distillation of Guided Diffusion Models", arXiv:2210.03142v3, §4.1 (stage one: the
   student x̂_η(z_t, w) regresses onto (1 + w)·x̂_{c,θ}(z_t) − w·x̂_θ(z_t), w ~ U[w_min, w_max],
   w given through a Fourier embedding).
.. [CFG] J. Ho, T. Salimans, arXiv:2207.12598v1, Eq. 6 (s = 1 + w).
.. [TF] A. Vaswani et al., "Attention Is All You Need", arXiv:1706.03762v7, §3.5 (sinusoidal
   embedding); DDPM, arXiv:2006.11239v2, §4 (the same embedding of the diffusion time t).
"""

from __future__ import annotations

import math
from typing import Any

from refdiff import _xp
from refdiff.classifier_free import cfg

SCALE_EMBEDDING_MULTIPLIER = 1000.0


def sinusoidal_embedding(values: Any, dim: int, *, max_period: float = 10000.0,
                         dtype: Any = None) -> Any:
    """The Transformer sinusoidal embedding of a batch of scalars, [sin(ω_k·v) | cos(ω_k·v)].

    .. math:: ω_k = P^{−k/h},\\ k = 0, …, h − 1,\\ h = \\mathrm{dim}/2,\\qquad
              e(v) = [\\sin(ω_0 v), …, \\sin(ω_{h−1} v), \\cos(ω_0 v), …, \\cos(ω_{h−1} v)]

    The frequencies are those of Vaswani et al. (ω_k = 1/P^{2k/dim}); the sines and cosines
    are concatenated rather than interleaved (a fixed permutation of the features).

    Parameters
    ----------
    values : array, shape (B,)
        Timesteps (integer) or any real values (floating).
    dim : int
        Even, ≥ 2.
    max_period : float
        P > 0: the longest period is 2π·P.
    dtype : dtype, optional
        Output dtype; default: the dtype of ``values`` if floating, else float64. The
        arguments ω_k·v are formed in float64 and cast last.

    Returns
    -------
    array, shape (B, dim), on the device of ``values``

    References
    ----------
    TF, arXiv:1706.03762v7, §3.5; DDPM, arXiv:2006.11239v2, §4.

    Examples
    --------
    >>> import numpy as np
    >>> sinusoidal_embedding(np.array([0.0]), 4)
    array([[0., 0., 1., 1.]])
    """
    xp = _xp.namespace(values=values)
    if values.ndim != 1:
        raise ValueError(f"values must have shape (B,), got {tuple(values.shape)}")
    _check_embedding(dim, max_period)
    floating = xp.isdtype(values.dtype, "real floating")
    if not floating and not xp.isdtype(values.dtype, "integral"):
        raise TypeError(f"values must be real (integer or floating), got {values.dtype}")
    out_dtype = dtype if dtype is not None else (values.dtype if floating else xp.float64)
    return _sinusoidal_embedding(xp, values, dim, float(max_period), out_dtype)


def _check_embedding(dim: Any, max_period: Any) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even int >= 2, got {dim!r}")
    if not (isinstance(max_period, (int, float)) and 0 < max_period < math.inf):
        raise ValueError(f"max_period must be a positive finite float, got {max_period!r}")


def _sinusoidal_embedding(xp: Any, values: Any, dim: int, max_period: float, out_dtype: Any) -> Any:
    half = dim // 2
    k = xp.arange(half, dtype=xp.float64, device=_xp.device(values))
    omega = xp.exp(k * (-math.log(max_period) / half))             # ω_k = P^(−k/h)
    args = xp.expand_dims(xp.astype(values, xp.float64), axis=-1) * omega  # ω_k·v, (B, half)
    return xp.astype(xp.concat([xp.sin(args), xp.cos(args)], axis=-1), out_dtype)


def guidance_scale_embedding(scale: Any, dim: int, *,
                             multiplier: float = SCALE_EMBEDDING_MULTIPLIER,
                             max_period: float = 10000.0, dtype: Any = None) -> Any:
    """The student's embedding of the guidance scale: sinusoidal_embedding((s − 1)·multiplier).

    Parameters
    ----------
    scale : floating array, shape (B,)
        s per sample (refdiff's convention); the paper's w = s − 1 is what is embedded.
    dim : int
    multiplier : float
        Stretches w onto the range the timestep frequencies resolve (default 1000).
    max_period, dtype
        See :func:`sinusoidal_embedding`.

    Returns
    -------
    array, shape (B, dim)

    References
    ----------
    GD, arXiv:2210.03142v3, §4.1 (Fourier embedding of w); TF, arXiv:1706.03762v7, §3.5.
    """
    xp = _xp.namespace(scale=scale)
    _xp.check_floating(xp, "scale", scale)
    if scale.ndim != 1:
        raise ValueError(f"scale must have shape (B,), got {tuple(scale.shape)}")
    _xp.check_values(xp, "scale", scale, lo=-math.inf, hi=math.inf)
    _check_embedding(dim, max_period)
    multiplier = _xp.number("multiplier", multiplier)
    w = scale - 1.0                                                 # GD §4.1: w = s − 1
    out_dtype = scale.dtype if dtype is None else dtype
    return _sinusoidal_embedding(xp, w * multiplier, dim, float(max_period), out_dtype)


def sample_guidance_scales(x0: Any, scale_min: float, scale_max: float, *, generator: Any) -> Any:
    """Draw one CFG scale per sample, s ~ U[s_min, s_max) (the paper's w ~ U[w_min, w_max]
    with s = 1 + w).

    Parameters
    ----------
    x0 : array, shape (B, ...)
        The batch; fixes B, the library and the device.
    scale_min, scale_max : float
        s_min ≤ s_max (e.g. 1 and 5, i.e. w in [0, 4]).
    generator : int or generator
        Seed or generator of the library of ``x0``.

    Returns
    -------
    scale : float64 array, shape (B,), on the device of ``x0``

    References
    ----------
    GD, arXiv:2210.03142v3, §4.1 (w ~ U[w_min, w_max]).
    """
    from refdiff.training import _backend_generator, _batch_size

    xp = _xp.namespace(x0=x0)
    if _xp.is_array(scale_min) or _xp.is_array(scale_max):
        raise ValueError(f"scale_min and scale_max must be floats, got {scale_min!r} and "
                         f"{scale_max!r}")
    lo, hi = _xp.number("scale_min", scale_min), _xp.number("scale_max", scale_max)
    if hi < lo:
        raise ValueError(f"scale_min and scale_max must be floats with scale_min <= scale_max, "
                         f"got {scale_min!r} and {scale_max!r}")
    backend, gen = _backend_generator(x0, generator)
    u = backend.uniform((_batch_size("x0", x0),), dtype=xp.float64, device=_xp.device(x0),
                        generator=gen)
    return lo + (hi - lo) * u


def guidance_distillation_target(eps_uncond: Any, eps_cond: Any, scale: Any) -> Any:
    """The stage-one target: the teacher's CFG prediction at the student's scale.

    .. math:: y = f_u + s\\,(f_c − f_u) = (1 + w)\\,f_c − w\\,f_u,\\quad w = s − 1

    CFG is affine at a fixed x_t, so the target is the same prediction whether the teacher
    and student speak ε, x̂_0 or v (the paper writes it on x̂); only the loss weighting
    changes with the space (‖Δε‖² = SNR·‖Δx̂_0‖², see :func:`refdiff.training.min_snr_weight`).

    Parameters
    ----------
    eps_uncond, eps_cond : arrays, shape (B, ...)
        The teacher at (x_t, t) with ∅ and with c; computed without gradient.
    scale : float or array, shape () or (B,)
        s per sample, e.g. from :func:`sample_guidance_scales`.

    Returns
    -------
    array, shape, dtype and device of ``eps_uncond``

    References
    ----------
    GD, arXiv:2210.03142v3, §4.1; CFG, arXiv:2207.12598v1, Eq. 6.
    """
    return cfg(eps_uncond, eps_cond, scale)
