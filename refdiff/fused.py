"""A guided step as one linear combination: CFG folded into DDIM or DDPM (the fast path).

Symbols: ``x_t`` = x_t, ``eps_uncond`` = ε_u, ``eps_cond`` = ε_c, ``scale`` = s,
``alpha_bar_t`` = ᾱ_t, ``alpha_bar_prev`` = ᾱ_prev, ``eta`` = η, ``noise`` = z ~ N(0, I),
β' = 1 − ᾱ_t/ᾱ_prev, β̃ = (1−ᾱ_prev)/(1−ᾱ_t)·β' (as in :mod:`refdiff.steps`).

The definition is the composition of two spec functions, ``ddim_step(x_t, cfg(eps_uncond,
eps_cond, scale), ...)`` (or ``ddpm_step``). Both are affine in (x_t, ε_u, ε_c, z) when x̂_0 is
not clipped or thresholded, so the composition collapses to

.. math:: x_{prev} = A\\,x_t + B_u\\,ε_u + B_c\\,ε_c + σ\\,z,

with A, B_u = (1 − s)·B, B_c = s·B and σ formed once per step from (ᾱ_t, ᾱ_prev, s, η) in
float64 on the host (Python floats) or in the dtype of the per-sample arrays, and cast once to
the dtype of x. Eager code then runs 5 elementwise array operations (:func:`_combine`)
instead of the composition's 8 (3 in CFG's lerp, 5 in the folded DDIM step; 7 and 10 with a
noise term), and never forms ε̃ or x̂_0. The two forms are equal in exact arithmetic;
they differ by rounding, bounded in tests/test_fused.py.

The coefficients (derived in :func:`guided_ddim_step` and :func:`guided_ddpm_step`):

- DDIM (DDIM Eq. 12 with x̂_0 = (x_t − √(1−ᾱ_t)·ε̃)/√ᾱ_t, σ of Eq. 16, d = √(1−ᾱ_prev−σ²)):
  A = √(ᾱ_prev/ᾱ_t), B = d − A·√(1−ᾱ_t) = −((ᾱ_prev − ᾱ_t)/ᾱ_t + σ²)/(d + A·√(1−ᾱ_t)).
- DDPM (DDPM Eq. 11 / Algorithm 2 on the respaced chain, α = 1 − β'):
  A = 1/√(1−β') = √(ᾱ_prev/ᾱ_t), B = −A·β'/√(1−ᾱ_t), σ² = β̃ or β'.

:mod:`refdiff.sampling` uses this path when no feature needs x̂_0 or ε̃ (:func:`_loop_fuses`),
and stacks the two CFG branches into one model call when asked (:func:`_batched_condition`).

References
----------
.. [DDIM] J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models",
   arXiv:2010.02502v4, Eq. 12 (the step) and Eq. 16 (σ with η).
.. [DDPM] J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models",
   arXiv:2006.11239v2, Eq. 11 and Algorithm 2 (the ancestral step), §3.2 (σ² = β̃ or β).
.. [CFG] J. Ho, T. Salimans, "Classifier-Free Diffusion Guidance", arXiv:2207.12598v1, Eq. 6.
"""

from __future__ import annotations

from typing import Any

from refdiff import _xp
from refdiff._xp import cast, sqrt
from refdiff.forward import _posterior_coefficients
from refdiff.steps import (_check_eta, _ddim_ratio, _ddim_sigma, _ddim_step, _ddpm_mean_variance,
                           _variance_inputs)

FIXED_VARIANCE_TYPES = ("fixed_small", "fixed_large")


# ----- bodies: math only ------------------------------------------------------------------

def _is_end(s: Any) -> bool:
    """True for a Python-float scale 0 or 1: CFG is then one branch, exactly."""
    return not _xp.is_array(s) and s in (0.0, 1.0)


def _combine(xp: Any, x_t: Any, eps_uncond: Any, eps_cond: Any, coefs: Any, noise: Any) -> Any:
    """A·x_t + B_u·ε_u + B_c·ε_c (+ σ·z): the coefficients cast once to the dtype of x_t."""
    a, b_u, b_c, sigma = cast(xp, x_t, *coefs)
    x_prev = a * x_t + b_u * eps_uncond + b_c * eps_cond
    if noise is None or (not _xp.is_array(sigma) and sigma == 0):  # no noise term at σ = 0
        return x_prev
    return x_prev + sigma * noise


def _guided_ddim_coefficients(xp: Any, ab_t: Any, ab_prev: Any, s: Any, eta: float) -> Any:
    """(A, B_u, B_c, σ) of the guided DDIM step, in the precision of ᾱ and s."""
    sigma, dir_coef = _ddim_sigma(xp, ab_t, ab_prev, eta)           # Eq. 16; d = √(1−ᾱ_prev−σ²)
    sigma2 = _ddim_ratio(ab_t, ab_prev, eta) * (1.0 - ab_prev)      # σ² without squaring σ
    a = sqrt(xp, ab_prev / ab_t)                                    # √ᾱ_prev · (1/√ᾱ_t) of x̂_0
    # B = d − A·√(1−ᾱ_t) = (d² − A²·(1−ᾱ_t))/(d + A·√(1−ᾱ_t)), and d² − A²·(1−ᾱ_t) =
    # −(ᾱ_prev − ᾱ_t)/ᾱ_t − σ²: two terms of one sign, so no cancellation when ᾱ_prev ≈ ᾱ_t.
    b = -((ab_prev - ab_t) / ab_t + sigma2) / (dir_coef + a * sqrt(xp, 1.0 - ab_t))
    return a, (1.0 - s) * b, s * b, sigma                           # ε̃ = (1−s)·ε_u + s·ε_c


def _guided_ddim_step(xp: Any, x_t: Any, eps_uncond: Any, eps_cond: Any, s: Any, ab_t: Any,
                      ab_prev: Any, eta: float, noise: Any) -> Any:
    if _is_end(s):  # one branch: the unguided spec step, bit for bit
        eps = eps_uncond if s == 0 else eps_cond
        return _ddim_step(xp, x_t, eps, ab_t, ab_prev, eta, noise, None, True, None)
    coefs = _guided_ddim_coefficients(xp, ab_t, ab_prev, s, eta)
    return _combine(xp, x_t, eps_uncond, eps_cond, coefs, noise if eta > 0 else None)  # Eq. 12


def _guided_ddpm_coefficients(xp: Any, ab_t: Any, ab_prev: Any, s: Any, variance_type: str,
                              zero_beta_tilde: float | None) -> Any:
    """(A, B_u, B_c, σ) of the guided DDPM step, in the precision of ᾱ and s."""
    _, _, beta_tilde, beta_step = _posterior_coefficients(xp, ab_t, ab_prev)  # σ² as ddpm_step
    if variance_type == "fixed_small":
        variance = beta_tilde                                       # DDPM §3.2: σ² = β̃
    elif zero_beta_tilde is not None:
        variance = _xp.where_one(xp, ab_prev, zero_beta_tilde, beta_step)
    else:
        variance = beta_step                                        # DDPM §3.2: σ² = β
    a = sqrt(xp, ab_prev / ab_t)                                    # Eq. 11: 1/√α_t, α_t = 1 − β'
    b = -a * ((ab_prev - ab_t) / ab_prev) / sqrt(xp, 1.0 - ab_t)    # Eq. 11: −β'/(√α_t·√(1−ᾱ_t))
    return a, (1.0 - s) * b, s * b, sqrt(xp, variance)              # CFG Eq. 6 folded in


def _guided_ddpm_step(xp: Any, x_t: Any, eps_uncond: Any, eps_cond: Any, s: Any, ab_t: Any,
                      ab_prev: Any, noise: Any, variance_type: str,
                      zero_beta_tilde: float | None) -> Any:
    if _is_end(s):  # one branch: the unguided spec step, bit for bit
        eps = eps_uncond if s == 0 else eps_cond
        mean, variance = _ddpm_mean_variance(xp, x_t, eps, ab_t, ab_prev, variance_type, None,
                                             None, None, zero_beta_tilde)
        return mean + xp.sqrt(variance) * noise                     # Algorithm 2, line 4
    coefs = _guided_ddpm_coefficients(xp, ab_t, ab_prev, s, variance_type, zero_beta_tilde)
    return _combine(xp, x_t, eps_uncond, eps_cond, coefs, noise)    # Algorithm 2, line 4


# ----- the sampling loop's fast path (called by refdiff.sampling) -------------------------

def _loop_fuses(run: Any, callback: Any) -> bool:
    """True when no feature of the run needs x̂_0 or ε̃, and CFG evaluates both branches.

    x̂_0 or ε̃ is needed by: a non-ε model (x̂_0 is its output or derived from it), guidance
    rescale (acts on ε̃), classifier guidance (shifts ε̃ or the mean), clipping and dynamic
    thresholding (act on x̂_0), learned variances (a model channel, not a fixed σ) and a
    callback (it receives x̂_0); APG and CFG++ are not CFG. A step whose scale is a float 0
    or 1 evaluates one branch and takes the spec path: no CFG to fuse.
    """
    cs = run.classifier_scale
    return (run.prediction_type == "epsilon" and run.rescale == 0 and run.clip_x0 is None
            and run.variance_type in FIXED_VARIANCE_TYPES and not run.learned
            and not (_xp.is_array(cs) or cs != 0) and callback is None
            and run.method == "cfg")


def _loop_step(run: Any, x: Any, eps_uncond: Any, eps_cond: Any, s: Any, ab_t: float,
               ab_prev: float, noise: Any) -> Any:
    """One step of the loop's fast path at scale s: guided DDIM or DDPM as one linear
    combination (the loop takes it at the steps where s is not a float 0 or 1)."""
    if run.sampler == "ddim":
        return _guided_ddim_step(run.xp, x, eps_uncond, eps_cond, s, ab_t, ab_prev, run.eta,
                                 noise)
    return _guided_ddpm_step(run.xp, x, eps_uncond, eps_cond, s, ab_t, ab_prev, noise,
                             run.variance_type, run.zero_beta_tilde)


def _batched_condition(xp: Any, x_T: Any, cond: Any, uncond: Any) -> Any:
    """The condition of a batched CFG call: [uncond; cond] along axis 0 (diffusers' order).

    Both must be arrays of the library and device of ``x_T``, of one dtype and one shape,
    with the batch size of ``x_T`` along axis 0.
    """
    for name, c in (("Guidance.uncond", uncond), ("Guidance.cond", cond)):
        if not _xp.is_array(c):
            raise TypeError(f"batch_cfg=True concatenates Guidance.uncond and Guidance.cond "
                            f"along axis 0 (diffusers' [uncond, cond] batch); both must be "
                            f"arrays with the batch size {x_T.shape[0]} of x_T along axis 0, "
                            f"got {name} = {type(c).__name__}; pass batch_cfg=False to call "
                            "the model once per branch")
        if c.ndim < 1 or c.shape[0] != x_T.shape[0]:
            raise ValueError(f"batch_cfg=True needs {name} with the batch size of x_T along "
                             f"axis 0: shape ({x_T.shape[0]}, ...), got {tuple(c.shape)}")
    _xp.namespace(x_T=x_T, **{"Guidance.uncond": uncond, "Guidance.cond": cond})
    if uncond.dtype != cond.dtype or tuple(uncond.shape) != tuple(cond.shape):
        raise ValueError(f"batch_cfg=True needs Guidance.uncond and Guidance.cond of one dtype "
                         f"and shape, got {uncond.dtype} {tuple(uncond.shape)} and "
                         f"{cond.dtype} {tuple(cond.shape)}")
    return xp.concat([uncond, cond], axis=0)                        # (2B, ...): uncond first


# ----- the checked prologue ---------------------------------------------------------------

def _guided_inputs(x_t: Any, eps_uncond: Any, eps_cond: Any, noise: Any, scale: Any,
                   alpha_bar_t: Any, alpha_bar_prev: Any) -> Any:
    """Namespace, (ᾱ_t, ᾱ_prev) and s of a guided step: the checks of ddim_step / ddpm_step
    (refdiff.steps: one library, device, dtype and shape; ᾱ ranges and order; ᾱ_t = 0
    refused) with two predictions in place of one, and the scale checked as cfg checks it."""
    xp = _xp.arrays("x_t", x_t, eps_uncond=eps_uncond, eps_cond=eps_cond, noise=noise,
                    optional=("noise",))
    ab_t, ab_prev = _xp.step_levels(xp, x_t, alpha_bar_t, alpha_bar_prev)
    if _xp.is_zero(xp, ab_t):  # as ddim_step without x0_hat, which the fused step has not
        raise ValueError("alpha_bar_t = 0 (zero terminal SNR): an epsilon prediction gives "
                         "no x0_hat there, so A = sqrt(alpha_bar_prev/alpha_bar_t) is "
                         "infinite; use ddim_step(x_t, cfg(...), ..., x0_hat=...) with a v- "
                         "or x_0-model")
    return xp, ab_t, ab_prev, _xp.any_real(xp, "scale", scale, x_t)


# ----- public functions -------------------------------------------------------------------

def guided_ddim_step(x_t: Any, eps_uncond: Any, eps_cond: Any, scale: Any, alpha_bar_t: Any,
                     alpha_bar_prev: Any, *, eta: float = 0.0, noise: Any = None) -> Any:
    """One CFG-guided DDIM step as one linear combination: A·x_t + B_u·ε_u + B_c·ε_c + σ·z.

    Equal in exact arithmetic to ``ddim_step(x_t, cfg(eps_uncond, eps_cond, scale),
    alpha_bar_t, alpha_bar_prev, eta=eta, noise=noise)``, which stays the definition.

    Parameters
    ----------
    x_t, eps_uncond, eps_cond : arrays, shape (B, ...)
        The current sample and the model's unconditional and conditional ε predictions.
    scale : float or array, shape () or (B,)
        CFG's s (ε̃ = ε_u + s·(ε_c − ε_u)); any finite value. The paper's w is s − 1.
    alpha_bar_t : float or array, shape () or (B,)
        ᾱ_t in (0, 1): ᾱ_t = 0 is refused, as by :func:`refdiff.ddim_step` without x0_hat.
    alpha_bar_prev : float or array, shape () or (B,)
        ᾱ_prev in (0, 1], ≥ ᾱ_t.
    eta : float
        η ≥ 0, checked as :func:`refdiff.ddim_step` checks it.
    noise : array, optional
        z, required when η > 0 and ignored when η = 0.

    Returns
    -------
    x_prev : array, shape, dtype and device of ``x_t``

    Notes
    -----
    Put ε̃ = (1 − s)·ε_u + s·ε_c (CFG Eq. 6) and x̂_0 = (x_t − √(1−ᾱ_t)·ε̃)/√ᾱ_t into DDIM
    Eq. 12, x_prev = √ᾱ_prev·x̂_0 + d·ε̃ + σ·z with d = √(1 − ᾱ_prev − σ²) and σ of Eq. 16:

    .. math::
        A = \\sqrt{\\bar α_{prev}/\\bar α_t},\\quad B = d − A\\sqrt{1−\\bar α_t}
          = −\\frac{(\\bar α_{prev} − \\bar α_t)/\\bar α_t + σ^2}{d + A\\sqrt{1−\\bar α_t}},
        \\quad B_u = (1−s)\\,B,\\quad B_c = s\\,B.

    The second form of B follows from d² − A²·(1−ᾱ_t) = −(ᾱ_prev − ᾱ_t)/ᾱ_t − σ² and has no
    cancellation. At ᾱ_prev = 1, d = σ = 0 and B = −√((1−ᾱ_t)/ᾱ_t): x_prev is x̂_0.

    What the fused form gives up: x̂_0 and ε̃ are never formed, so it has no clipping,
    thresholding, guidance rescale or classifier guidance (use the composition for those);
    and ε_c − ε_u is not formed either, so its rounding error scales with
    |s|·|B|·(|ε_u| + |ε_c|) where the composition's scales with |s|·|B|·|ε_c − ε_u|.
    A Python-float scale of exactly 0 or 1 is the unguided step bit for bit: it is computed
    as ``ddim_step`` on ε_u or ε_c (a branch, cheap, and ``cfg`` is exact there too); a
    per-sample scale array with 0 or 1 entries agrees with it to rounding only.

    References
    ----------
    DDIM, arXiv:2010.02502v4, Eqs. 12 and 16; CFG, arXiv:2207.12598v1, Eq. 6.

    Examples
    --------
    >>> import numpy as np
    >>> x = guided_ddim_step(np.ones(1), np.full(1, 0.5), np.ones(1), 3.0, 0.36, 0.64)
    >>> np.round(x, 12)  # A = 4/3, B = -7/15, B_u = 14/15, B_c = -7/5
    array([0.4])
    """
    xp, ab_t, ab_prev, s = _guided_inputs(x_t, eps_uncond, eps_cond, noise, scale,
                                          alpha_bar_t, alpha_bar_prev)
    eta = _check_eta(xp, eta, ab_t, ab_prev)
    if eta > 0 and noise is None:
        raise ValueError(f"noise is required when eta > 0 (got eta={eta} and noise=None)")
    return _guided_ddim_step(xp, x_t, eps_uncond, eps_cond, s, ab_t, ab_prev, eta, noise)


def guided_ddpm_step(x_t: Any, eps_uncond: Any, eps_cond: Any, scale: Any, alpha_bar_t: Any,
                     alpha_bar_prev: Any, noise: Any, *, variance_type: str = "fixed_small",
                     zero_beta_tilde: float | None = None) -> Any:
    """One CFG-guided ancestral DDPM step as one linear combination (fixed variances).

    Equal in exact arithmetic to ``ddpm_step(x_t, cfg(eps_uncond, eps_cond, scale),
    alpha_bar_t, alpha_bar_prev, noise, variance_type=variance_type,
    zero_beta_tilde=zero_beta_tilde)``, which stays the definition.

    Parameters
    ----------
    x_t, eps_uncond, eps_cond : arrays, shape (B, ...)
    scale : float or array, shape () or (B,)
        CFG's s; any finite value.
    alpha_bar_t, alpha_bar_prev : float or array, shape () or (B,)
        As in :func:`guided_ddim_step` (ᾱ_t = 0 refused).
    noise : array, shape of ``x_t``
        z ~ N(0, I). Required, as by :func:`refdiff.ddpm_step`: pass zeros for a step
        without noise (the sampling loop does on its last step).
    variance_type : {"fixed_small", "fixed_large"}
        σ² = β̃ or β'. The learned types need the model's variance channel: use
        :func:`refdiff.ddpm_step`.
    zero_beta_tilde : float in (0, 1], optional
        "fixed_large" only: σ² at a step to ᾱ_prev = 1 (see :func:`refdiff.ddpm_step`).

    Returns
    -------
    x_prev : array, shape, dtype and device of ``x_t``

    Notes
    -----
    DDPM Eq. 11 (Algorithm 2, line 4) on the respaced chain, α = 1 − β' = ᾱ_t/ᾱ_prev, at
    ε̃ = (1 − s)·ε_u + s·ε_c (CFG Eq. 6): x_prev = (x_t − β'/√(1−ᾱ_t)·ε̃)/√α + σ·z, so

    .. math::
        A = \\frac{1}{\\sqrt{1−β'}} = \\sqrt{\\bar α_{prev}/\\bar α_t},\\quad
        B = −\\frac{A\\,β'}{\\sqrt{1−\\bar α_t}},\\quad B_u = (1−s)\\,B,\\quad B_c = s\\,B.

    This is the posterior mean of DDPM Eq. 7 at x̂_0 (Eq. 15), which ``ddpm_step`` evaluates:
    c_0/√ᾱ_t + c_t = A and −c_0·√(1−ᾱ_t)/√ᾱ_t = B. β' is formed as (ᾱ_prev − ᾱ_t)/ᾱ_prev.
    σ = √σ² is formed on the host and cast; where it is a Python float 0 (σ² = β̃ at
    ᾱ_prev = 1) the noise term is left out rather than multiplied by zero. What the fused
    form gives up, and the exactness at s = 0 and s = 1: as :func:`guided_ddim_step`.

    References
    ----------
    DDPM, arXiv:2006.11239v2, Eq. 11, Algorithm 2 and §3.2; CFG, arXiv:2207.12598v1, Eq. 6.

    Examples
    --------
    >>> import numpy as np
    >>> x = guided_ddpm_step(np.ones(1), np.full(1, 0.5), np.ones(1), 3.0, 0.36, 0.64,
    ...                      np.zeros(1))
    >>> np.round(x, 12)  # A = 4/3, B = -35/48: 4/3 - 2·35/48
    array([-0.125])
    """
    if noise is None:
        raise ValueError("noise is required for guided_ddpm_step (pass zeros for a step "
                         "without noise, as the sampling loop does on its last step)")
    xp, ab_t, ab_prev, s = _guided_inputs(x_t, eps_uncond, eps_cond, noise, scale,
                                          alpha_bar_t, alpha_bar_prev)
    if variance_type in ("learned", "learned_range"):
        raise ValueError(f"guided_ddpm_step takes the fixed variance types "
                         f"{FIXED_VARIANCE_TYPES} only, got variance_type={variance_type!r}; "
                         "a learned variance needs the model's channel: use "
                         "ddpm_step(x_t, cfg(...), ..., var_values=...)")
    zero_beta_tilde = _variance_inputs(xp, x_t, variance_type, None, zero_beta_tilde)
    return _guided_ddpm_step(xp, x_t, eps_uncond, eps_cond, s, ab_t, ab_prev, noise,
                             variance_type, zero_beta_tilde)
