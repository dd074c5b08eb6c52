"""Lists of noise levels for the σ-space and flow samplers: Karras (EDM) σ's, the σ's of a VP
table at chosen timesteps, flow times with SD3's shift or FLUX's resolution-dependent shift.

Symbols: σ = the VE noise level (x = x_0 + σ·ε, :mod:`refdiff.paths`), t = the flow time
(x = (1 − t)·x_0 + t·ε), n = the number of steps, ρ = EDM's exponent, s = the SD3 shift,
μ = the exponential shift's parameter.

Every list is built on the host in float64, descending, with n + 1 entries: the n levels a
sampler evaluates its model at, then the level its last step goes to. That final level is
a named convention (:data:`FINAL_LEVELS`):

- ``"zero"``: σ = 0 (t = 0), the clean data (k-diffusion, EDM, diffusers' default
  ``final_sigmas_type="zero"``);
- ``"sigma_min"``: the smallest level of the schedule the list is drawn from (diffusers'
  ``final_sigmas_type="sigma_min"``: the σ of the training table's first timestep). When
  the list already ends there, the last step goes from σ_min to σ_min.

References
----------
.. [EDM] T. Karras et al., arXiv:2206.00364v2, Eq. 5 (σ_i with ρ = 7) and Table 1 (σ_N = 0).
.. [SD3] P. Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image
   Synthesis", arXiv:2403.03206v1, §5.3.2, Eq. 23 (t_m = √(m/n)·t_n/(1 + (√(m/n) − 1)·t_n),
   the shift s = √(m/n)).
.. [FLUX] diffusers (checked against 0.42.1), ``FlowMatchEulerDiscreteScheduler.time_shift``
   with ``use_dynamic_shifting=True`` and ``pipelines/flux/pipeline_flux.calculate_shift``
   (μ linear in the image's sequence length).
"""

from __future__ import annotations

import math
from typing import Any

from refdiff import _xp
from refdiff.schedules import Schedule, check_schedule, host_namespace

FINAL_LEVELS = ("zero", "sigma_min")


def _finish(xp: Any, levels: list[float], final: str, smallest: float) -> Any:
    """The n levels and the final one (0 or the schedule's smallest), as a float64 array."""
    _xp.choice("final", final, FINAL_LEVELS)
    xp = host_namespace() if xp is None else xp
    return xp.asarray(levels + [0.0 if final == "zero" else smallest], dtype=xp.float64)


def _linspace(start: float, stop: float, n: int) -> list[float]:
    """n evenly spaced floats from start to stop, both included (start for n = 1)."""
    if n == 1:
        return [start]
    return [start + i / (n - 1) * (stop - start) for i in range(n)]


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, *,
                  final: str = "zero", xp: Any = None) -> Any:
    """EDM's σ list: σ_i = (σ_max^{1/ρ} + i/(n − 1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.

    Parameters
    ----------
    n : int
        Number of steps, ≥ 1 (n = 1 gives σ_max alone).
    sigma_min, sigma_max : float
        0 < σ_min < σ_max. EDM uses 0.002 and 80; for a VP table, σ of its first and last
        timestep (diffusers' ``use_karras_sigmas``).
    rho : float
        ρ > 0; EDM's 7.
    final : {"zero", "sigma_min"}
        The level the last step goes to: 0 (EDM's σ_N = 0) or σ_min.
    xp : namespace, optional
        Host namespace of the result (NumPy by default).

    Returns
    -------
    sigmas : float64 array, shape (n + 1,)
        Descending from σ_max; σ_{n−1} = σ_min.

    References
    ----------
    EDM, arXiv:2206.00364v2, Eq. 5 and Table 1.

    Examples
    --------
    >>> [round(float(s), 4) for s in karras_sigmas(3, 0.002, 80.0)]
    [80.0, 2.5152, 0.002, 0.0]
    """
    n = _xp.count("n", n)
    lo = _xp.number("sigma_min", sigma_min, lo=0.0, lo_open=True)
    hi = _xp.number("sigma_max", sigma_max, lo=lo, lo_open=True)
    rho = _xp.number("rho", rho, lo=0.0, lo_open=True)
    ramp = _linspace(hi ** (1.0 / rho), lo ** (1.0 / rho), n)      # EDM Eq. 5, inside (·)^ρ
    sig = [v ** rho for v in ramp]
    sig[0], sig[-1] = hi, (lo if n > 1 else hi)                    # the ends exactly
    return _finish(xp, sig, final, lo)


def vp_sigmas(schedule: Schedule, timesteps: Any, *, final: str = "zero", xp: Any = None) -> Any:
    """σ_i = √((1 − ᾱ_{t_i})/ᾱ_{t_i}) of a VP table at the listed timesteps, then the final.

    Parameters
    ----------
    schedule : Schedule
    timesteps : sequence of int
        Training timesteps, strictly descending, in [0, T − 1] (e.g.
        :func:`refdiff.inference_timesteps`).
    final : {"zero", "sigma_min"}
        0, or σ of the table's first timestep t = 0 (diffusers' "sigma_min").
    xp : namespace, optional

    Returns
    -------
    sigmas : float64 array, shape (n + 1,)

    Notes
    -----
    ᾱ_t = 0 (a zero-terminal-SNR table's last timestep) gives σ = ∞; the σ-space steps
    refuse it (ε-prediction cannot be inverted there).

    References
    ----------
    EDM, arXiv:2206.00364v2, Table 1 (VP: σ(t) = √(e^{...} − 1), i.e. √((1 − ᾱ)/ᾱ)).

    Examples
    --------
    >>> import refdiff as rd
    >>> [round(float(s), 3) for s in vp_sigmas(rd.linear_schedule(1000), [999, 499])]
    [157.407, 3.424, 0.0]
    """
    check_schedule("schedule", schedule)
    T = schedule.num_train_timesteps
    ts = [_xp.integer("timesteps", t, lo=0, hi=T - 1) for t in timesteps]
    if not ts or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be a non-empty, strictly descending list, got {ts}")
    sig = [_sigma_of(schedule.alpha_bar(t)) for t in ts]
    return _finish(xp, sig, final, _sigma_of(schedule.alpha_bar(0)))


def _sigma_of(alpha_bar: float) -> float:
    return math.inf if alpha_bar == 0 else math.sqrt((1.0 - alpha_bar) / alpha_bar)


def time_shift(t: Any, shift: float) -> Any:
    """SD3's shift of the flow time: t' = s·t/(1 + (s − 1)·t).

    It multiplies the noise-to-signal ratio by s: t'/(1 − t') = s·t/(1 − t). s = 1 is the
    identity; s > 1 spends more steps at high noise. Applying it twice is the shift s².

    Parameters
    ----------
    t : float or array
        Flow times in [0, 1] (host float64 or any array; arrays keep their dtype).
    shift : float
        s > 0 (SD3 uses 3.0; diffusers' ``shift``).

    Returns
    -------
    t_shifted : float or array

    References
    ----------
    SD3, arXiv:2403.03206v1, §5.3.2, Eq. 23.

    Examples
    --------
    >>> time_shift(0.5, 3.0)
    0.75
    """
    s = _xp.number("shift", shift, lo=0.0, lo_open=True)
    return s * t / (1.0 + (s - 1.0) * t)


def exponential_time_shift(t: Any, mu: float, exponent: float = 1.0) -> Any:
    """FLUX's shift: t' = e^μ/(e^μ + (1/t − 1)^e), which multiplies t/(1 − t) by e^μ when e = 1.

    ``exponent`` e is diffusers' ``sigma`` argument of ``time_shift`` (1.0 in every pipeline).
    t = 0 gives 0 and t = 1 gives 1. With e = 1 it equals :func:`time_shift` at s = e^μ.

    References
    ----------
    FLUX (diffusers ``FlowMatchEulerDiscreteScheduler._time_shift_exponential``).

    Examples
    --------
    >>> round(exponential_time_shift(0.5, math.log(3.0)), 12)
    0.75
    """
    mu = _xp.number("mu", mu)
    e = _xp.number("exponent", exponent, lo=0.0, lo_open=True)
    if _xp.is_array(t):
        xp = _xp.namespace(t=t)
        inner = xp.where(t > 0, 1.0 / xp.where(t > 0, t, xp.ones_like(t)) - 1.0,
                         xp.full_like(t, math.inf))
        return math.exp(mu) / (math.exp(mu) + inner ** e)
    return 0.0 if t == 0 else math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0) ** e)


def dynamic_shift(image_seq_len: int, *, base_seq_len: int = 256, max_seq_len: int = 4096,
                  base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's μ, linear in the number of image tokens: μ(base_seq_len) = base_shift and
    μ(max_seq_len) = max_shift (extrapolated beyond them).

    Examples
    --------
    >>> dynamic_shift(4096)
    1.15
    """
    L = _xp.count("image_seq_len", image_seq_len)
    lo = _xp.count("base_seq_len", base_seq_len)
    hi = _xp.integer("max_seq_len", max_seq_len, lo=lo + 1)
    b0, b1 = _xp.number("base_shift", base_shift), _xp.number("max_shift", max_shift)
    slope = (b1 - b0) / (hi - lo)
    return b0 + slope * (L - lo)


def flow_times(n: int, *, shift: float = 1.0, mu: float | None = None, t_max: float = 1.0,
               t_min: float = 1e-3, final: str = "zero", xp: Any = None) -> Any:
    """Flow times t_i = shift(linspace(t_max, t_min, n)_i), then the final level.

    Parameters
    ----------
    n : int
        ≥ 1.
    shift : float
        SD3's s > 0 (:func:`time_shift`), applied once to every listed time.
    mu : float, optional
        FLUX's μ (:func:`dynamic_shift`); when given, :func:`exponential_time_shift` is used
        instead of ``shift`` (which must then be 1).
    t_max, t_min : float
        The unshifted ends, 0 < t_min ≤ t_max ≤ 1. ``t_min = 1/T`` is the smallest level of
        a T-step training table (T = 1000: 1e-3). diffusers and SD3's reference code take
        the *shifted* table's smallest level as the linspace's end and shift again, which
        here is ``t_min=time_shift(1/T, s)``; only the last level differs.
    final : {"zero", "sigma_min"}
        0, or the shifted t_min.
    xp : namespace, optional

    Returns
    -------
    times : float64 array, shape (n + 1,)

    References
    ----------
    SD3, arXiv:2403.03206v1, §5.3.2, Eq. 23; FLUX (module docstring).

    Examples
    --------
    >>> [round(float(t), 4) for t in flow_times(3, shift=3.0, t_min=0.5)]
    [1.0, 0.9, 0.75, 0.0]
    """
    n = _xp.count("n", n)
    shift = _xp.number("shift", shift, lo=0.0, lo_open=True)
    t_max = _xp.number("t_max", t_max, lo=0.0, hi=1.0, lo_open=True)
    t_min = _xp.number("t_min", t_min, lo=0.0, hi=t_max, lo_open=True)
    if mu is not None and shift != 1.0:
        raise ValueError(f"give shift or mu, not both (got shift={shift}, mu={mu})")

    def shifted(t: float) -> float:
        return exponential_time_shift(t, mu) if mu is not None else time_shift(t, shift)

    times = [shifted(t) for t in _linspace(t_max, t_min, n)]
    return _finish(xp, times, final, shifted(t_min))
