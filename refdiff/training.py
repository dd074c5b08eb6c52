"""The training side: timestep sampling, condition dropout, targets, losses and SNR weights
(the noisy classifier's objective lives with classifier guidance,
:func:`refdiff.classifier_guidance.noisy_classifier_loss`).

Symbols: ``x0`` = x_0, ``eps`` = ε (the forward-process noise), ``alpha_bar_t`` = ᾱ_t, SNR(t) = ᾱ_t/(1 − ᾱ_t),
``gamma`` = γ (min-SNR clamp), ``p`` = the probability of dropping the condition, ``null_cond``
= ∅ (the "no condition" label or embedding). Timesteps are the discrete training timesteps
t = 0 … T−1 of :mod:`refdiff.schedules` (DDPM's t = 1 … T, shifted by one).

Like the rest of refdiff, nothing here imports an array library: the namespace comes from the
arrays passed, and the only random draws (timesteps, dropout mask) come from the caller's
``generator`` (an int seed or a generator object of the arrays' library) through
:mod:`refdiff.backends`. Every function works on torch tensors with autograd, so a torch
training loop can call these losses directly.

Losses are per-sample means over the non-batch axes, ``(1/D)·‖·‖²``, a constant factor 1/D
away from the paper's squared norm (the minimiser is the same).

References
----------
.. [DDPM] J. Ho, A. Jain, P. Abbeel, arXiv:2006.11239v2, Algorithm 1 (training: t uniform,
   ε ~ N(0, I)) and Eq. 14 (the "simple" loss ‖ε − ε_θ(√ᾱ_t·x_0 + √(1−ᾱ_t)·ε, t)‖²).
.. [V] T. Salimans, J. Ho, arXiv:2202.00512v2, §4 (v = √ᾱ·ε − √(1−ᾱ)·x_0 as a target).
.. [MINSNR] T. Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy",
   arXiv:2303.09556v3, §3 (the weight min{SNR(t), γ} on the x_0 loss, γ = 5, and its
   equivalents min{SNR, γ}/SNR for ε- and min{SNR, γ}/(SNR + 1) for v-prediction).
.. [CFG] J. Ho, T. Salimans, arXiv:2207.12598v1, §3.2 and Algorithm 1 (c ← ∅ with
   probability p_uncond; 0.1 or 0.2 work best, §4.1).
.. [CG] P. Dhariwal, A. Nichol, arXiv:2105.05233v4, §4 (a classifier p_φ(y | x_t, t) trained
   with cross-entropy on noisy images x_t).
"""

from __future__ import annotations

import math
from typing import Any

from refdiff import _xp
from refdiff._xp import cast
from refdiff.forward import PREDICTION_TYPES, _prediction_from_x0_eps

WEIGHTINGS = ("none", "min_snr")
REDUCTIONS = ("mean", "none")


def _backend_generator(like: Any, generator: Any) -> Any:
    """The backend of ``like`` and the caller's generator (required: no hidden seeding)."""
    from refdiff.backends import get_backend

    if generator is None:
        raise TypeError("generator is required: pass an int seed or a generator of the library "
                        f"of the arrays ({type(like).__module__.split('.')[0]})")
    backend = get_backend(like)
    return backend, backend.generator(generator, _xp.device(like))


def _batch_size(name: str, a: Any) -> int:
    if a.ndim < 1 or a.shape[0] < 1:
        raise ValueError(f"{name} must have a non-empty batch axis, got shape {tuple(a.shape)}")
    return int(a.shape[0])


def sample_timesteps(x0: Any, num_train_timesteps: int, *, generator: Any) -> Any:
    """Draw one training timestep per sample, t ~ Uniform{0, …, T−1}.

    Parameters
    ----------
    x0 : array, shape (B, ...)
        The batch; fixes B, the library and the device.
    num_train_timesteps : int
        T.
    generator : int or generator
        Seed or generator of the library of ``x0``.

    Returns
    -------
    t : int64 array, shape (B,), on the device of ``x0``

    Notes
    -----
    t = ⌊u·T⌋ with u ~ U[0, 1) drawn in float64. No clip is needed: u ≤ 1 − 2⁻⁵³, and
    (1 − 2⁻⁵³)·T rounds to a float64 below T for every T < 2⁵³ (exactly T − T·2⁻⁵³ for a power
    of two, else to the neighbour below T), so t ≤ T − 1.

    References
    ----------
    DDPM, arXiv:2006.11239v2, Algorithm 1, line 3 (t ~ Uniform({1, …, T}); here shifted to 0 … T−1).
    """
    xp = _xp.namespace(x0=x0)
    T = _xp.count("num_train_timesteps", num_train_timesteps)
    backend, gen = _backend_generator(x0, generator)
    u = backend.uniform((_batch_size("x0", x0),), dtype=xp.float64, device=_xp.device(x0),
                        generator=gen)
    return xp.astype(xp.floor(u * T), xp.int64)                     # t = ⌊u·T⌋


def alpha_bar_at(schedule: Any, t: Any) -> Any:
    """ᾱ_t of a schedule gathered at an int array of timesteps (float64, on t's device).

    Parameters
    ----------
    schedule : Schedule
    t : integer array, shape (B,)
        Training timesteps in [0, T−1], e.g. from :func:`sample_timesteps`.

    Returns
    -------
    alpha_bar_t : float64 array, shape (B,); pass it to :func:`refdiff.q_sample` and the
        losses as is (they cast late, to the dtype of x).
    """
    from refdiff.schedules import check_schedule

    check_schedule("schedule", schedule)
    xp = _xp.namespace(t=t)
    if not xp.isdtype(t.dtype, "integral"):
        raise TypeError(f"t must have an integer dtype, got {t.dtype}")
    T = schedule.num_train_timesteps
    if _xp.readable(t) and bool(xp.any((t < 0) | (t >= T))):
        raise ValueError(f"t must lie in [0, {T - 1}]")
    table = xp.asarray(schedule.alphas_cumprod, dtype=xp.float64, device=_xp.device(t))
    return xp.take(table, t, axis=0)


def drop_condition(cond: Any, null_cond: Any, p: float, *, generator: Any) -> Any:
    """Replace each sample's condition by the null condition ∅ with probability p.

    Training with this makes one network both conditional and unconditional, which is what
    classifier-free guidance needs at sampling time.

    Parameters
    ----------
    cond : array, shape (B,) of labels or (B, ...) of embeddings
    null_cond : int, float or array
        ∅: for labels an int (e.g. the extra class index K); for embeddings a number, an
        array of shape ``cond.shape[1:]`` (e.g. a learned null embedding: on torch it keeps
        its gradient) or of the shape of ``cond``, in the dtype of ``cond``.
    p : float
        The dropout probability p_uncond in [0, 1]; 0 keeps every condition, 1 drops all.
    generator : int or generator
        Seed or generator of the library of ``cond`` (one uniform draw per sample).

    Returns
    -------
    cond_out : array, shape and dtype of ``cond``
    dropped : bool array, shape (B,)
        True where the null condition was put in.

    References
    ----------
    CFG, arXiv:2207.12598v1, §3.2 and Algorithm 1 (c ← ∅ with probability p_uncond).
    """
    xp = _xp.namespace(cond=cond, null_cond=null_cond)
    if _xp.is_array(p):
        raise TypeError("p must be a Python float")
    p = _xp.number("p", p, lo=0.0, hi=1.0)
    B = _batch_size("cond", cond)
    backend, gen = _backend_generator(cond, generator)
    dropped = backend.uniform((B,), dtype=xp.float64, device=_xp.device(cond), generator=gen) < p
    null = _null_array(xp, cond, null_cond)
    mask = xp.reshape(dropped, (B,) + (1,) * (cond.ndim - 1))
    return xp.where(mask, null, cond), dropped


def _null_array(xp: Any, cond: Any, null_cond: Any) -> Any:
    """∅ as an array that broadcasts against ``cond``, in its dtype and on its device."""
    integral = xp.isdtype(cond.dtype, "integral")
    if not _xp.is_array(null_cond):
        if isinstance(null_cond, bool) or not isinstance(null_cond, (int, float)) or (
                integral and not isinstance(null_cond, int)):
            kind = "an int" if integral else "a number or an array"
            raise TypeError(f"null_cond must be {kind} for cond of dtype {cond.dtype}, "
                            f"got {null_cond!r}")
        return xp.asarray(null_cond, dtype=cond.dtype, device=_xp.device(cond))
    if null_cond.dtype != cond.dtype:
        raise TypeError(f"null_cond has dtype {null_cond.dtype} but cond has dtype {cond.dtype}")
    if tuple(null_cond.shape) not in (tuple(cond.shape), tuple(cond.shape[1:]), ()):
        raise ValueError(f"null_cond must have shape (), {tuple(cond.shape[1:])} or "
                         f"{tuple(cond.shape)}, got {tuple(null_cond.shape)}")
    return null_cond


def _snr(xp: Any, ab: Any) -> Any:
    if not _xp.is_array(ab):
        return math.inf if ab == 1 else ab / (1.0 - ab)
    one_minus = 1.0 - ab
    safe = xp.where(one_minus == 0, xp.ones_like(one_minus), one_minus)
    return xp.where(one_minus == 0, xp.full_like(one_minus, math.inf), ab / safe)  # ᾱ/(1 − ᾱ)


def _min_snr_weight(xp: Any, ab: Any, gamma: float, prediction_type: str) -> Any:
    if prediction_type == "sample":                                 # min(SNR, γ)
        s = _snr(xp, ab)
        return min(s, gamma) if not _xp.is_array(s) else _clip_max(xp, s, gamma)
    if prediction_type == "v_prediction":                           # min(ᾱ, γ(1 − ᾱ))
        return min(ab, gamma * (1.0 - ab)) if not _xp.is_array(ab) else xp.minimum(
            ab, gamma * (1.0 - ab))
    if not _xp.is_array(ab):                                        # min(1, γ(1 − ᾱ)/ᾱ)
        return 1.0 if ab == 0 else min(1.0, gamma * (1.0 - ab) / ab)
    one = xp.ones_like(ab)
    return xp.where(ab == 0, one, _clip_max(xp, gamma * (1.0 - ab) / xp.where(ab == 0, one, ab),
                                            1.0))


def _clip_max(xp: Any, a: Any, hi: float) -> Any:
    return xp.where(a > hi, xp.full_like(a, hi), a)


def _alpha_bar_any_shape(alpha_bar_t: Any) -> Any:
    """ᾱ in [0, 1] as a float or an array of any shape, and its namespace (None for a float)."""
    if not _xp.is_array(alpha_bar_t):
        return None, _xp.number("alpha_bar_t", alpha_bar_t, lo=0.0, hi=1.0)
    xp = _xp.namespace(alpha_bar_t=alpha_bar_t)
    return xp, _xp.level(xp, "alpha_bar_t", alpha_bar_t, None)


def snr(alpha_bar_t: Any) -> Any:
    """The signal-to-noise ratio SNR(t) = ᾱ_t/(1 − ᾱ_t) (∞ at ᾱ = 1, 0 at ᾱ = 0).

    Parameters
    ----------
    alpha_bar_t : float or array of any shape, values in [0, 1]

    Returns
    -------
    float or array of the shape, dtype and device of ``alpha_bar_t``

    References
    ----------
    MINSNR, arXiv:2303.09556v3, §3 (SNR(t) = α_t²/σ_t², with α_t² = ᾱ_t, σ_t² = 1 − ᾱ_t).

    Examples
    --------
    >>> snr(0.75)
    3.0
    """
    xp, ab = _alpha_bar_any_shape(alpha_bar_t)
    return _snr(xp, ab)


def _check_gamma(gamma: Any) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (
            0 < gamma < math.inf):
        raise ValueError(f"gamma must be a positive finite float, got {gamma!r}")
    return float(gamma)


def min_snr_weight(alpha_bar_t: Any, gamma: float = 5.0, prediction_type: str = "epsilon") -> Any:
    """The min-SNR-γ loss weight for a parameterisation.

    .. math::
        w_{x_0} = \\min(\\mathrm{SNR}, γ),\\quad
        w_ε = \\frac{\\min(\\mathrm{SNR}, γ)}{\\mathrm{SNR}}
            = \\min\\!\\Big(1, \\frac{γ(1 − \\bar α)}{\\bar α}\\Big),\\quad
        w_v = \\frac{\\min(\\mathrm{SNR}, γ)}{\\mathrm{SNR} + 1}
            = \\min\\big(\\bar α, γ(1 − \\bar α)\\big)

    Each makes the weighted loss of its parameterisation equal to min(SNR, γ)·‖x̂_0 − x_0‖²,
    since ‖ε̂ − ε‖² = SNR·‖x̂_0 − x_0‖² and ‖v̂ − v‖² = (SNR + 1)·‖x̂_0 − x_0‖² at a fixed x_t.
    The right-hand forms need no division by SNR and give the limits at ᾱ = 0 (w_ε = 1) and
    ᾱ = 1 (w_ε = 0, w_{x_0} = γ).

    Parameters
    ----------
    alpha_bar_t : float or array, values in [0, 1]
    gamma : float
        γ > 0; the paper's default is 5.
    prediction_type : {"epsilon", "sample", "v_prediction"}

    Returns
    -------
    float or array of the shape, dtype and device of ``alpha_bar_t``

    References
    ----------
    MINSNR, arXiv:2303.09556v3, §3 (Min-SNR-γ, γ = 5, and the ε- and v-prediction forms).

    Examples
    --------
    >>> [min_snr_weight(0.75, 1.5, p) for p in ("epsilon", "sample", "v_prediction")]
    [0.5, 1.5, 0.375]
    """
    _xp.choice("prediction_type", prediction_type, PREDICTION_TYPES)
    gamma = _check_gamma(gamma)
    xp, ab = _alpha_bar_any_shape(alpha_bar_t)
    return _min_snr_weight(xp, ab, gamma, prediction_type)


def _per_sample_mse(xp: Any, prediction: Any, target: Any) -> Any:
    d = prediction - target
    if d.ndim == 1:
        return d * d
    return xp.mean(d * d, axis=tuple(range(1, d.ndim)))            # (1/D)·‖·‖² per sample


def per_sample_mse(prediction: Any, target: Any) -> Any:
    """(1/D)·‖prediction − target‖² per sample: shape (B,), dtype of ``prediction``."""
    xp = _xp.arrays("prediction", prediction, target=target)
    _batch_size("prediction", prediction)
    return _per_sample_mse(xp, prediction, target)


def diffusion_loss(model_output: Any, x0: Any, eps: Any, alpha_bar_t: Any,
                   prediction_type: str = "epsilon", *, weighting: str = "none",
                   gamma: float = 5.0, reduction: str = "mean") -> Any:
    """The denoising loss of one training batch, for ε, x_0 or v prediction.

    .. math::
        L = \\frac1B \\sum_b w_b \\, \\frac1D \\big\\| f_θ(x_t, t)_b − y_b \\big\\|^2,\\qquad
        y = ε,\\ x_0\\ \\text{or}\\ v = \\sqrt{\\bar α_t}\\,ε − \\sqrt{1 − \\bar α_t}\\,x_0

    with x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε the input the model saw. ``weighting="none"`` and ε
    is DDPM's simple loss (Eq. 14); ``"min_snr"`` uses :func:`min_snr_weight`.

    Parameters
    ----------
    model_output : array, shape (B, ...)
        f_θ(x_t, t), in the space of ``prediction_type``.
    x0, eps : arrays, shape, dtype and device of ``model_output``
        The clean batch and the ε used to make x_t.
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t of each sample (float64 is fine: cast late).
    prediction_type : {"epsilon", "sample", "v_prediction"}
    weighting : {"none", "min_snr"}
    gamma : float
        γ of min-SNR-γ.
    reduction : {"mean", "none"}
        The batch mean (a 0-d array) or the per-sample losses (B,).

    Returns
    -------
    array, shape () or (B,), dtype of ``model_output``

    References
    ----------
    DDPM, arXiv:2006.11239v2, Eq. 14; V, arXiv:2202.00512v2, §4; MINSNR, arXiv:2303.09556v3, §3.
    """
    xp = _xp.arrays("model_output", model_output, x0=x0, eps=eps)
    _batch_size("model_output", model_output)
    _xp.choice("prediction_type", prediction_type, PREDICTION_TYPES)
    _xp.choice("weighting", weighting, WEIGHTINGS)
    _xp.choice("reduction", reduction, REDUCTIONS)
    gamma = _check_gamma(gamma)
    ab = _xp.level(xp, "alpha_bar_t", alpha_bar_t, x0)
    target = _prediction_from_x0_eps(xp, x0, eps, ab, prediction_type)
    losses = _per_sample_mse(xp, model_output, target)              # DDPM Eq. 14, per sample
    if weighting == "min_snr":
        (w,) = cast(xp, losses, _min_snr_weight(xp, ab, gamma, prediction_type))
        losses = losses * (xp.reshape(w, (-1,)) if _xp.is_array(w) else w)
    return _reduce(xp, losses, reduction)


def _reduce(xp: Any, losses: Any, reduction: str) -> Any:
    return xp.mean(losses) if reduction == "mean" else losses
