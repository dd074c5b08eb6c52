"""Steps of the σ-space samplers (Euler, Heun, Euler-ancestral, DPM-Solver++(2M)) and of the
flow-matching Euler sampler, from noise levels given as values.

Symbols (k-diffusion's): ``x`` = x on the VE path (x = x_0 + σ·ε, :mod:`refdiff.paths`),
``denoised`` = D(x; σ) = x̂_0 (the model's prediction of x_0), ``sigma`` = σ (the current
level), ``sigma_next`` = σ' (the level the step goes to), d = (x − D)/σ (the derivative of the
probability-flow ODE dx/dσ), r = σ'/σ, ``noise`` = z ~ N(0, I); for the flow path ``x`` =
(1 − t)·x_0 + t·ε, ``velocity`` = u = ε − x_0, ``time`` = t, ``time_next`` = t' (the flow
time in [0, 1], not a training timestep).

Every first-order step here is DDIM on its path. Euler is x' = D + σ'·(x − D)/σ, the DDIM
η = 0 step after x_VE = x_VP/√ᾱ; Euler-ancestral with η = 1 is the DDIM η = 1 (DDPM
posterior) step on the same levels; the flow Euler step is DDIM on the flow path. The steps are
written as convex combinations r·x + (1 − r)·D with r computed from the levels in float64 and
cast once to x's dtype, so that no intermediate exceeds |x| + |D| (the form x + (σ' − σ)·d
cancels in x − D).

The last step. σ' = 0 is allowed everywhere: Euler then returns D; Heun takes no correction
(EDM Algorithm 1, line 8: the correction divides by σ'); DPM-Solver++(2M) falls back to its
first-order step, which returns D (its second-order coefficient h/(2·h_prev) is infinite).
Which steps are first order is otherwise the caller's choice (``first_order``), as is
diffusers' ``lower_order_final`` (:func:`refdiff.sample_ode`).

Multistep state: :func:`dpmpp_2m_step` takes the previous step's (D, σ) as
:class:`MultistepState` and returns the new one; ``None`` means there is no previous step.

References
----------
.. [EDM] T. Karras et al., arXiv:2206.00364v2, Algorithm 1 (Euler and Heun's 2nd-order
   correction for the probability-flow ODE), Eq. 4 and Table 1 (dx/dσ = (x − D(x; σ))/σ).
.. [KD] K. Crowson, k-diffusion, ``sampling.py``: ``get_ancestral_step`` (σ_up =
   min(σ', η·√(σ'²(σ² − σ'²)/σ²)), σ_down = √(σ'² − σ_up²)), ``sample_euler_ancestral``.
.. [DPMPP] C. Lu et al., "DPM-Solver++", arXiv:2211.01095v2, Algorithm 2 (multistep
   second order, data prediction): h_i = λ_i − λ_{i−1}, r_i = h_{i−1}/h_i, D_i = (1 +
   1/(2r_i))·x̂_0(i−1) − 1/(2r_i)·x̂_0(i−2), λ = −log σ on the VE path.
.. [FM] Y. Lipman et al., arXiv:2210.02747v2, Eq. 23; Euler on dx/dt = u.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from refdiff import _xp
from refdiff._xp import cast


class MultistepState(NamedTuple):
    """What a multistep solver keeps from its previous step: that step's D and σ."""

    denoised: Any
    sigma: Any


# ----- bodies: math only ------------------------------------------------------------------

def _combine(xp: Any, x: Any, denoised: Any, r: Any) -> Any:
    """r·x + (1 − r)·D, coefficients cast once."""
    r_, q_ = cast(xp, x, r, 1.0 - r)
    return r_ * x + q_ * denoised


def _euler(xp: Any, x: Any, denoised: Any, sigma: Any, sigma_next: Any) -> Any:
    return _combine(xp, x, denoised, sigma_next / sigma)            # x + (σ' − σ)·d


def _heun(xp: Any, x: Any, denoised: Any, sigma: Any, sigma_next: Any,
          denoised_next: Any) -> Any:
    x_e = _euler(xp, x, denoised, sigma, sigma_next)                # EDM Alg. 1, line 5
    k, half = cast(xp, x, 0.5 * (1.0 - sigma / sigma_next), 0.5)    # (σ' − σ)/(2σ')
    return half * (x + x_e) + k * (x_e - denoised_next)             # line 7: x + (σ'−σ)(d + d')/2


def _ancestral_sigmas(xp: Any, sigma: Any, sigma_next: Any, eta: float) -> tuple[Any, Any]:
    var_up = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2  # KD: DDPM's σ_up² in σ-space
    up = eta * _xp.sqrt(xp, var_up)
    up = xp.minimum(up, sigma_next) if _xp.is_array(up) else min(up, sigma_next)
    down2 = sigma_next**2 - up**2
    down2 = xp.clip(down2, min=0.0) if _xp.is_array(down2) else max(down2, 0.0)
    return _xp.sqrt(xp, down2), up


def _euler_ancestral(xp: Any, x: Any, denoised: Any, sigma: Any, sigma_next: Any, noise: Any,
                     eta: float) -> Any:
    down, up = _ancestral_sigmas(xp, sigma, sigma_next, eta)
    x_next = _euler(xp, x, denoised, sigma, down)                   # deterministic part, to σ_down
    if eta == 0:
        return x_next
    (up_,) = cast(xp, x, up)
    return x_next + up_ * noise                                     # renoise to σ' with σ_up·z


def _flow_euler(xp: Any, x: Any, velocity: Any, t: Any, t_next: Any) -> Any:
    (dt,) = cast(xp, x, t_next - t)
    return x + dt * velocity                                        # x' = x + (t' − t)·u


def _second_order_coefficient(xp: Any, sigma: Any, sigma_next: Any, sigma_prev: Any) -> Any:
    """c = 1/(2r) = h/(2·h_prev), h = log(σ/σ'), h_prev = log(σ_prev/σ); 0 where σ' = 0."""
    h_prev = _xp.log(xp, sigma_prev / sigma)
    if not _xp.is_array(sigma_next):
        return 0.0 if sigma_next == 0 else _xp.log(xp, sigma / sigma_next) / (2.0 * h_prev)
    safe = xp.where(sigma_next > 0, sigma_next, xp.ones_like(sigma_next))
    c = _xp.log(xp, sigma / safe) / (2.0 * h_prev)
    return xp.where(sigma_next > 0, c, 0.0 * c)


def _dpmpp_2m(xp: Any, x: Any, denoised: Any, sigma: Any, sigma_next: Any,
              state: MultistepState | None) -> Any:
    d = denoised
    if state is not None:                                           # Alg. 2: D_i, with r_i
        c = _second_order_coefficient(xp, sigma, sigma_next, state.sigma)
        (c_,) = cast(xp, x, c)
        d = denoised + c_ * (denoised - state.denoised)             # (1 + 1/(2r))·D − 1/(2r)·D_prev
    x_next = _combine(xp, x, d, sigma_next / sigma)                 # (σ'/σ)·x − (e^{−h} − 1)·D_i
    return x_next, MultistepState(denoised, sigma)


# ----- checked prologues --------------------------------------------------------------------

def _levels(xp: Any, x: Any, sigma: Any, sigma_next: Any) -> Any:
    """σ in (0, ∞) and σ' in [0, σ] (host values), shaped against x."""
    sigma = _xp.level(xp, "sigma", sigma, x, lo=0.0, hi=math.inf, lo_open=True, hi_open=True)
    sigma_next = _xp.level(xp, "sigma_next", sigma_next, x, lo=0.0, hi=math.inf, hi_open=True)
    _xp.check_order(xp, "sigma", sigma, "sigma_next", sigma_next)
    return sigma, sigma_next


def _eta(eta: Any) -> float:
    return _xp.number("eta", eta, lo=0.0)


def euler_step(x: Any, denoised: Any, sigma: Any, sigma_next: Any) -> Any:
    """One Euler step of the probability-flow ODE: x' = x + (σ' − σ)·(x − D)/σ.

    Parameters
    ----------
    x, denoised : arrays, shape (B, ...)
        x on the VE path at σ, and D(x; σ).
    sigma : float or array, shape () or (B,)
        σ > 0, finite.
    sigma_next : float or array, shape () or (B,)
        0 ≤ σ' ≤ σ.

    Returns
    -------
    x_next : array, shape, dtype and device of ``x``

    Notes
    -----
    Evaluated as r·x + (1 − r)·D with r = σ'/σ; this is DDIM's η = 0 step on the same
    levels (x_VP = √ᾱ·x_VE), and σ' = 0 returns D.

    References
    ----------
    EDM, arXiv:2206.00364v2, Algorithm 1, lines 4–5.

    Examples
    --------
    >>> import numpy as np
    >>> euler_step(np.array([2.0]), np.array([0.0]), 2.0, 1.0)
    array([1.])
    """
    xp = _xp.arrays("x", x, denoised=denoised)
    sigma, sigma_next = _levels(xp, x, sigma, sigma_next)
    return _euler(xp, x, denoised, sigma, sigma_next)


def heun_step(x: Any, denoised: Any, sigma: Any, sigma_next: Any, denoised_next: Any = None) -> Any:
    """One step of Heun's method: the Euler step, then EDM's 2nd-order correction.

    .. math::
        x_e = x + (σ' − σ)\\,d,\\quad d = \\frac{x − D(x; σ)}{σ},\\quad
        x' = x + (σ' − σ)\\,\\frac{d + d'}{2},\\quad d' = \\frac{x_e − D(x_e; σ')}{σ'}

    Parameters
    ----------
    x, denoised : arrays, shape (B, ...)
    sigma, sigma_next : float or array, shape () or (B,)
        σ > 0 and 0 ≤ σ' ≤ σ.
    denoised_next : array, optional
        D(x_e; σ') with x_e = :func:`euler_step` (x, denoised, σ, σ'). Omit it when σ' = 0:
        the step is then the Euler step (EDM Algorithm 1, line 8). Given with σ' = 0 it is
        refused (the correction divides by σ').

    Returns
    -------
    x_next : array, shape, dtype and device of ``x``

    References
    ----------
    EDM, arXiv:2206.00364v2, Algorithm 1, lines 5–8.

    Examples
    --------
    >>> import numpy as np
    >>> heun_step(np.array([2.0]), np.array([0.0]), 2.0, 1.0, np.array([0.0]))
    array([1.])
    """
    xp = _xp.arrays("x", x, denoised=denoised, denoised_next=denoised_next,
                    optional=("denoised_next",))
    sigma, sigma_next = _levels(xp, x, sigma, sigma_next)
    if denoised_next is None:
        if _xp.is_positive(xp, sigma_next):
            raise ValueError(f"denoised_next is required when sigma_next > 0 (got sigma_next="
                             f"{sigma_next}); it is D(x_e; sigma_next) at the Euler point x_e")
        return _euler(xp, x, denoised, sigma, sigma_next)
    if _xp.is_zero(xp, sigma_next):
        raise ValueError("sigma_next must be > 0 when denoised_next is given (Heun's "
                         "correction divides by sigma_next; the last step to 0 is Euler)")
    return _heun(xp, x, denoised, sigma, sigma_next, denoised_next)


def ancestral_sigmas(sigma: Any, sigma_next: Any, eta: float = 1.0) -> tuple[Any, Any]:
    """k-diffusion's split of an ancestral step: (σ_down, σ_up) with σ_down² + σ_up² = σ'².

    .. math:: σ_{up} = \\min\\Big(σ', η\\sqrt{σ'^2(σ^2 − σ'^2)/σ^2}\\Big),\\quad
              σ_{down} = \\sqrt{σ'^2 − σ_{up}^2}

    At η = 1, σ_up/√(1 + σ'²) is DDIM's η = 1 σ (DDPM's posterior standard deviation) on
    the levels ᾱ = 1/(1 + σ²), ᾱ' = 1/(1 + σ'²). η > 1 is allowed; σ_up is capped at σ'.

    References
    ----------
    KD, ``get_ancestral_step``; DDIM, arXiv:2010.02502v4, Eq. 16.

    Examples
    --------
    >>> [round(v, 12) for v in ancestral_sigmas(2.0, 1.0)]
    [0.5, 0.866025403784]
    """
    given = [v for v in (sigma, sigma_next) if _xp.is_array(v)]
    xp = _xp.namespace(sigma=sigma, sigma_next=sigma_next) if given else None
    sigma, sigma_next = _levels(xp, None, sigma, sigma_next)
    return _ancestral_sigmas(xp, sigma, sigma_next, _eta(eta))


def euler_ancestral_step(x: Any, denoised: Any, sigma: Any, sigma_next: Any, noise: Any = None, *,
                         eta: float = 1.0) -> Any:
    """One Euler-ancestral step: Euler to σ_down, then σ_up·z (:func:`ancestral_sigmas`).

    Parameters
    ----------
    x, denoised : arrays, shape (B, ...)
    sigma, sigma_next : float or array, shape () or (B,)
        σ > 0 and 0 ≤ σ' ≤ σ.
    noise : array, optional
        z, required when η > 0.
    eta : float
        η ≥ 0; 0 is the Euler step, 1 is DDPM's ancestral step.

    Returns
    -------
    x_next : array, shape, dtype and device of ``x``

    Notes
    -----
    x' = (σ_down/σ)·x + (1 − σ_down/σ)·D + σ_up·z. At η = 1 this is the DDIM η = 1 step on
    the same levels, after x_VP = √ᾱ·x_VE (tests/test_solvers.py checks it to float64
    rounding). At σ' = 0, σ_up = σ_down = 0 and the step returns D.

    References
    ----------
    KD, ``sample_euler_ancestral``; EDM, arXiv:2206.00364v2, Algorithm 1, line 5.

    Examples
    --------
    >>> import numpy as np
    >>> euler_ancestral_step(np.array([2.0]), np.array([0.0]), 2.0, 1.0, np.array([0.0]))
    array([0.5])
    """
    xp = _xp.arrays("x", x, denoised=denoised, noise=noise, optional=("noise",))
    sigma, sigma_next = _levels(xp, x, sigma, sigma_next)
    eta = _eta(eta)
    if eta > 0 and noise is None:
        raise ValueError(f"noise is required when eta > 0 (got eta={eta} and noise=None)")
    return _euler_ancestral(xp, x, denoised, sigma, sigma_next, noise, eta)


def flow_euler_step(x: Any, velocity: Any, time: Any, time_next: Any) -> Any:
    """One Euler step of the flow-matching ODE dx/dt = u: x' = x + (t' − t)·u.

    Parameters
    ----------
    x, velocity : arrays, shape (B, ...)
        x on the flow path at t, and the model's u = ε − x_0.
    time : float or array, shape () or (B,)
        The flow time t in (0, 1] (not a training timestep).
    time_next : float or array, shape () or (B,)
        0 ≤ t' ≤ t.

    Returns
    -------
    x_next : array, shape, dtype and device of ``x``

    Notes
    -----
    This is DDIM (η = 0) on the flow path: with x̂_0, ε̂ from u and x
    (:func:`refdiff.path_x0_eps`), x' = (1 − t')·x̂_0 + t'·ε̂; and it is :func:`euler_step` at
    σ = t/(1 − t), σ' = t'/(1 − t') after x_VE = x/(1 − t).

    References
    ----------
    FM, arXiv:2210.02747v2, Eq. 23; SD3, arXiv:2403.03206v1, §2 (the flow ODE).

    Examples
    --------
    >>> import numpy as np
    >>> flow_euler_step(np.array([1.0]), np.array([2.0]), 1.0, 0.5)
    array([0.])
    """
    xp = _xp.arrays("x", x, velocity=velocity)
    t = _xp.level(xp, "time", time, x, lo=0.0, hi=1.0, lo_open=True)
    t_next = _xp.level(xp, "time_next", time_next, x, lo=0.0, hi=1.0)
    _xp.check_order(xp, "time", t, "time_next", t_next)
    return _flow_euler(xp, x, velocity, t, t_next)


def dpmpp_2m_step(x: Any, denoised: Any, sigma: Any, sigma_next: Any,
                  state: MultistepState | None = None, *, first_order: bool = False) -> Any:
    """One step of DPM-Solver++(2M) in data-prediction form, with its state in and out.

    .. math::
        x' = \\frac{σ'}{σ}x + \\Big(1 − \\frac{σ'}{σ}\\Big)D_i,\\quad
        D_i = D + \\frac{h}{2h_{prev}}(D − D_{prev}),\\quad
        h = \\log\\frac{σ}{σ'},\\ h_{prev} = \\log\\frac{σ_{prev}}{σ}

    (1 − σ'/σ) is −(e^{−h} − 1), and h/(2h_prev) is 1/(2r) of Algorithm 2.

    Parameters
    ----------
    x, denoised : arrays, shape (B, ...)
    sigma, sigma_next : float or array, shape () or (B,)
        σ > 0 and 0 ≤ σ' < σ.
    state : MultistepState, optional
        (D, σ) of the previous step, σ_prev > σ; ``None`` on the first step.
    first_order : bool
        Take the first-order step (DPM-Solver++(1), which is DDIM) although a state is given:
        diffusers' ``lower_order_final``. The first-order step is also taken without a state
        and where σ' = 0 (where the coefficient h/(2h_prev) is infinite).

    Returns
    -------
    x_next : array, shape, dtype and device of ``x``
    state : MultistepState
        (denoised, sigma) for the next step.

    References
    ----------
    DPMPP, arXiv:2211.01095v2, Algorithm 2 (and Eq. 9, its first-order step).

    Examples
    --------
    >>> import numpy as np
    >>> x, s = dpmpp_2m_step(np.array([2.0]), np.array([0.0]), 2.0, 1.0)
    >>> x, s.sigma
    (array([1.]), 2.0)
    """
    xp = _xp.arrays("x", x, denoised=denoised)
    sigma, sigma_next = _levels(xp, x, sigma, sigma_next)
    first_order = _xp.flag("first_order", first_order)
    if state is not None and not first_order:
        state = _checked_state(xp, x, denoised, sigma, state)
    return _dpmpp_2m(xp, x, denoised, sigma, sigma_next, None if first_order else state)


def _checked_state(xp: Any, x: Any, denoised: Any, sigma: Any, state: Any) -> MultistepState:
    if not isinstance(state, MultistepState):
        raise TypeError(f"state must be a MultistepState or None, got {type(state).__name__}")
    _xp.arrays("denoised", denoised, **{"state.denoised": state.denoised})
    prev = _xp.level(xp, "state.sigma", state.sigma, x, lo=0.0, hi=math.inf, lo_open=True,
                     hi_open=True)
    _xp.check_order(xp, "state.sigma", prev, "sigma", sigma)
    if _xp.is_zero(xp, prev - sigma):
        raise ValueError("state.sigma must be > sigma (the previous step's level; h_prev "
                         "= log(state.sigma/sigma) must not be 0)")
    return MultistepState(state.denoised, prev)
