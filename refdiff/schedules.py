"""Noise schedules and inference timesteps, built on the host in float64.

Symbols: ``betas`` = β_t, ``alphas`` = α_t = 1 − β_t, ``alphas_cumprod`` = ᾱ_t = ∏_{s≤t} α_s,
for discrete training timesteps t = 0 … T−1 (T = ``num_train_timesteps``). Clean data sits "before
t = 0" and has ᾱ = 1. Tables are validated once, here, where they are built; the step functions
then receive ᾱ values, not indices.

The default host namespace is NumPy (through array-api-compat); pass ``xp=`` to build the
tables with any other array-API namespace (the tests use array-api-strict).

References
----------
.. [DDPM] J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models",
   arXiv:2006.11239v2, §4 (linear schedule β_1 = 1e-4 … β_T = 0.02, T = 1000).
.. [IDDPM] A. Nichol, P. Dhariwal, "Improved Denoising Diffusion Probabilistic Models",
   arXiv:2102.09672v1, Eq. 17 (cosine schedule) and §3.2.
.. [LDM] R. Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
   arXiv:2112.10752v2 (the "scaled linear" schedule of Stable Diffusion, from its released
   configuration).
.. [ZSNR] S. Lin, B. Liu, J. Li, X. Yang, "Common Diffusion Noise Schedules and Sample Steps
   are Flawed", arXiv:2305.08891v4, Algorithm 1 and Table 2 (timestep spacings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat

from refdiff import _xp

SPACINGS = ("leading", "trailing", "linspace")


def host_namespace() -> Any:
    """The default namespace for host tables: NumPy, wrapped by array-api-compat."""
    import array_api_compat.numpy as np_xp  # imported lazily: math modules stay backend-free

    return np_xp


@dataclass(frozen=True, eq=False)
class Schedule:
    """A validated discrete noise schedule (host float64 tables of length T).

    Attributes
    ----------
    betas : array, shape (T,), float64
        β_t, each in (0, 1]; β = 1 only at the last step (a zero-terminal-SNR schedule).
    alphas : array, shape (T,), float64
        α_t = 1 − β_t.
    alphas_cumprod : array, shape (T,), float64
        ᾱ_t = ∏_{s≤t} α_s, strictly decreasing in [0, 1).

    Build one with :meth:`from_betas` (which validates) or a schedule function.
    """

    betas: Any
    alphas: Any
    alphas_cumprod: Any

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps."""
        return int(self.betas.shape[0])

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t as a Python float (host float64), for an int t in 0 … T−1.

        Raises TypeError for a t that is not an int (2.7, "3", True) and ValueError outside
        0 … T−1.
        """
        t = _xp.integer("t", t, lo=0, hi=self.num_train_timesteps - 1)
        return float(self.alphas_cumprod[t])

    @classmethod
    def from_betas(cls, betas: Any, *, xp: Any = None) -> "Schedule":
        """Build and validate a schedule from β_t.

        Parameters
        ----------
        betas : array-like, shape (T,)
            β_t for t = 0 … T−1. Converted to float64 in ``xp``.
        xp : namespace, optional
            Host array namespace for the tables (default NumPy via array-api-compat).

        Raises
        ------
        TypeError
            If ``betas`` holds anything but real numbers (complex, bool, strings).
        ValueError
            If ``betas`` is not 1-D and non-empty, is not finite, has a value outside (0, 1]
            or a 1 anywhere but last, if β_0 is so small that ᾱ_0 rounds to 1, or if ᾱ is not
            strictly decreasing.
        """
        xp = host_namespace() if xp is None else xp
        betas = _real_array(xp, "betas", betas)
        if betas.ndim != 1 or betas.shape[0] < 1:
            raise ValueError(f"betas must be 1-D and non-empty, got shape {tuple(betas.shape)}")
        if not bool(xp.all(xp.isfinite(betas))):
            raise ValueError("betas must be finite, got NaN or infinity")
        if not bool(xp.all((betas > 0) & (betas <= 1))):
            raise ValueError(f"betas must lie in (0, 1], got min {float(xp.min(betas))} "
                             f"and max {float(xp.max(betas))}")
        if bool(xp.any(betas[:-1] == 1)):
            raise ValueError("betas may equal 1 only at the last step (zero terminal SNR)")
        alphas = 1.0 - betas
        alphas_cumprod = xp.cumulative_prod(alphas)
        if float(alphas_cumprod[0]) >= 1.0:
            raise ValueError(f"betas[0] = {float(betas[0])!r} is so small that alphas_cumprod[0] "
                             "rounds to 1 in float64; alphas_cumprod must lie in [0, 1)")
        if bool(xp.any(alphas_cumprod[1:] >= alphas_cumprod[:-1])):
            raise ValueError("alphas_cumprod must be strictly decreasing; some betas are so "
                             "small, or alphas_cumprod so close to 0, that it stalls")
        return cls(betas=betas, alphas=alphas, alphas_cumprod=alphas_cumprod)


def check_schedule(name: str, schedule: Any) -> Any:
    """TypeError unless ``schedule`` is a :class:`Schedule`."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"{name} must be a refdiff.Schedule (e.g. refdiff.linear_schedule(1000)), "
                        f"got {type(schedule).__name__}")
    return schedule


def _real_array(xp: Any, name: str, values: Any) -> Any:
    """``values`` as a float64 array of ``xp``; TypeError for complex, bool or non-numbers."""
    try:
        a = xp.asarray(values)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be real numbers, got {type(values).__name__}: {exc}") from None
    if not (xp.isdtype(a.dtype, "real floating") or xp.isdtype(a.dtype, "integral")) or \
            xp.isdtype(a.dtype, "bool"):
        raise TypeError(f"{name} must be real numbers, got dtype {a.dtype}")
    return xp.astype(a, xp.float64)


def _beta(name: str, value: Any) -> float:
    """A β end point: a float in (0, 1]."""
    return _xp.number(name, value, lo=0.0, hi=1.0, lo_open=True)


def _linspace(xp: Any, start: float, stop: float, n: int) -> Any:
    return xp.linspace(start, stop, n, dtype=xp.float64)


def linear_schedule(num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02, *, xp: Any = None) -> Schedule:
    """Linear β schedule, not rescaled with T (diffusers' ``"linear"``).

    .. math:: β_t = β_{start} + (β_{end} − β_{start})·t/(T−1)

    Parameters
    ----------
    num_train_timesteps : int
        T ≥ 1.
    beta_start, beta_end : float
        β_0 and β_{T−1}, each in (0, 1].
    xp : namespace, optional
        Host array namespace for the tables (default NumPy via array-api-compat).

    Returns
    -------
    Schedule
        Validated host float64 tables of length T.

    References
    ----------
    DDPM, arXiv:2006.11239v2, §4 (β from 1e-4 to 0.02 over T = 1000).
    """
    T = _xp.count("num_train_timesteps", num_train_timesteps)
    b0, b1 = _beta("beta_start", beta_start), _beta("beta_end", beta_end)
    xp = host_namespace() if xp is None else xp
    return Schedule.from_betas(_linspace(xp, b0, b1, T), xp=xp)


def guided_diffusion_linear_schedule(num_train_timesteps: int = 1000, *, xp: Any = None) -> Schedule:
    """Linear schedule rescaled by 1000/T (guided-diffusion / improved-diffusion ``"linear"``).

    β_start = 1e-4·1000/T and β_end = 0.02·1000/T, so that T ≠ 1000 keeps ᾱ_{T−1} near the
    T = 1000 value. Equal to :func:`linear_schedule` at T = 1000.

    Raises
    ------
    ValueError
        For T < 20, where β_end would exceed 1 (at T = 20, β_end = 1: the last ᾱ is 0, a
        zero-terminal-SNR table).

    Parameters
    ----------
    num_train_timesteps : int
        T ≥ 20.
    xp : namespace, optional
        Host array namespace for the tables.

    Returns
    -------
    Schedule
        Validated host float64 tables of length T.

    References
    ----------
    IDDPM, arXiv:2102.09672v1, §3.2 and its released code's ``get_named_beta_schedule``.
    """
    T = _xp.count("num_train_timesteps", num_train_timesteps)
    scale = 1000.0 / T
    if scale * 0.02 > 1.0:  # guided-diffusion would clip β_end to 1: a zero-terminal-SNR table
        raise ValueError(f"num_train_timesteps must be >= 20 for the rescaled linear schedule "
                         f"(beta_end = 0.02 * 1000 / T exceeds 1), got {T}")
    return linear_schedule(T, scale * 1e-4, scale * 0.02, xp=xp)


def scaled_linear_schedule(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                           beta_end: float = 0.012, *, xp: Any = None) -> Schedule:
    """Stable Diffusion's "scaled linear" schedule: linear in √β.

    .. math:: β_t = (\\sqrt{β_{start}} + (\\sqrt{β_{end}} − \\sqrt{β_{start}})·t/(T−1))^2

    Parameters
    ----------
    num_train_timesteps : int
        T ≥ 1.
    beta_start, beta_end : float
        β_0 and β_{T−1}, each in (0, 1] (linear in √β between them).
    xp : namespace, optional
        Host array namespace for the tables.

    Returns
    -------
    Schedule
        Validated host float64 tables of length T.

    References
    ----------
    LDM, arXiv:2112.10752v2 (released Stable Diffusion configuration).
    """
    T = _xp.count("num_train_timesteps", num_train_timesteps)
    b0, b1 = _beta("beta_start", beta_start), _beta("beta_end", beta_end)
    xp = host_namespace() if xp is None else xp
    return Schedule.from_betas(_linspace(xp, math.sqrt(b0), math.sqrt(b1), T) ** 2, xp=xp)


def cosine_schedule(num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999,
                    *, xp: Any = None) -> Schedule:
    """Cosine schedule of Improved DDPM.

    .. math::
        \\bar α(τ) = \\cos^2\\Big(\\frac{τ + s}{1 + s}·\\frac{π}{2}\\Big), \\qquad
        β_i = \\min\\big(1 − \\bar α((i+1)/T)/\\bar α(i/T),\\ β_{max}\\big)

    Parameters
    ----------
    num_train_timesteps : int
        T ≥ 1.
    s : float
        The offset s ≥ 0 of Eq. 17 (0.008 in the paper).
    max_beta : float
        The clip of β, in (0, 1] (0.999 in the paper).
    xp : namespace, optional
        Host array namespace for the tables.

    Returns
    -------
    Schedule
        Validated host float64 tables of length T.

    References
    ----------
    IDDPM, arXiv:2102.09672v1, Eq. 17 (and the clipping of β at 0.999 in §3.2).
    """
    T = _xp.count("num_train_timesteps", num_train_timesteps)
    s = _xp.number("s", s, lo=0.0)
    max_beta = _beta("max_beta", max_beta)
    xp = host_namespace() if xp is None else xp
    tau = xp.arange(T + 1, dtype=xp.float64) / T
    f = xp.cos((tau + s) / (1 + s) * (math.pi / 2)) ** 2
    betas = xp.clip(1.0 - f[1:] / f[:-1], max=max_beta)
    return Schedule.from_betas(betas, xp=xp)


def rescale_zero_terminal_snr(schedule: Schedule) -> Schedule:
    """Shift and scale √ᾱ so that ᾱ_{T−1} = 0 exactly and ᾱ_0 is unchanged.

    .. math::
        \\sqrt{\\bar α}' = (\\sqrt{\\bar α} − \\sqrt{\\bar α_{T−1}})·
        \\frac{\\sqrt{\\bar α_0}}{\\sqrt{\\bar α_0} − \\sqrt{\\bar α_{T−1}}}

    The last β becomes 1. ε-prediction cannot give x̂_0 at ᾱ = 0: the step functions refuse
    that combination; use v- or x_0-prediction (or start sampling one step later).

    Parameters
    ----------
    schedule : Schedule
        With T ≥ 2.

    Returns
    -------
    Schedule
        The rescaled, validated schedule (ᾱ_{T−1} = 0, ᾱ_0 unchanged).

    References
    ----------
    ZSNR, arXiv:2305.08891v4, Algorithm 1.
    """
    check_schedule("schedule", schedule)
    xp = array_api_compat.array_namespace(schedule.alphas_cumprod)
    if schedule.num_train_timesteps < 2:
        raise ValueError("rescale_zero_terminal_snr needs num_train_timesteps >= 2")
    sqrt_ab = xp.sqrt(schedule.alphas_cumprod)
    first, last = float(sqrt_ab[0]), float(sqrt_ab[-1])
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))  # shift to 0 at T−1, keep t = 0
    alphas_cumprod = sqrt_ab**2
    alphas = xp.concat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return Schedule.from_betas(1.0 - alphas, xp=xp)


def inference_timesteps(num_train_timesteps: int, num_inference_steps: int,
                        spacing: str = "leading", offset: int = 0, *, xp: Any = None) -> Any:
    """The training timesteps a sampler visits, descending (diffusers' spacing names, and the
    originals' own lists by name).

    With T = ``num_train_timesteps`` and n = ``num_inference_steps``, diffusers' spacings
    (:data:`SPACINGS`, valid for every n in 1 … T):

    - ``"leading"``: t_i = i·⌊T/n⌋ + offset, i = n−1 … 0.
    - ``"trailing"``: t_i = round(T·(n − i)/n) − 1, i = 0 … n−1 (always includes T − 1).
    - ``"linspace"``: round(linspace(0, T−1, n)) reversed (includes 0 and T − 1).

    Rounding is half to even (NumPy's). ``offset`` applies to ``"leading"`` only
    (diffusers' ``steps_offset``). Trailing rounds the exact quotient T·(n − i)/n: the integer
    T·(n − i) divided once by n lands exactly on every tie (T = 1000, n = 240, i = 195 gives
    187.5 → 188 → 187), whereas T − i·(T/n) drifts off ties, and a float-step ``arange`` yields
    n + 1 elements for some n (e.g. T = 1000, n = 61).

    The originals' lists (:data:`refdiff.ORIGINAL_SPACINGS`, :mod:`refdiff.respacing`), valid
    for some n only (all but ``"guided_diffusion"``) and never shifted by ``offset``:

    - ``"guided_diffusion"``: ``guided_diffusion_timesteps(T, [n])``, one section of n steps
      (guided-diffusion's ``timestep_respacing="n"``).
    - ``"guided_diffusion_ddim"``: ``guided_diffusion_timesteps(T, f"ddim{n}")``.
    - ``"compvis_uniform"``, ``"compvis_quad"``: ``compvis_timesteps(T, n, "uniform")`` or
      ``"quad"``; uniform has ⌈T/⌊T/n⌋⌉ elements, n or more.

    Parameters
    ----------
    num_train_timesteps : int
        T.
    num_inference_steps : int
        n in 1 … T.
    spacing : {"leading", "trailing", "linspace", "guided_diffusion", "guided_diffusion_ddim", \
"compvis_uniform", "compvis_quad"}
    offset : int
        ≥ 0, added to every ``"leading"`` timestep; must be 0 for the originals' lists.
    xp : namespace, optional
        Host array namespace of the result.

    Returns
    -------
    timesteps : int64 array, shape (n,)
        Descending, unique, each in [0, T−1] (host namespace, NumPy by default); shape
        (⌈T/⌊T/n⌋⌉,) for ``"compvis_uniform"``.

    Raises
    ------
    ValueError
        For n outside 1 … T, an unknown ``spacing``, an ``offset`` that leaves [0, T−1] or is
        given with an original's list, or an n for which the original's list does not exist
        (see :func:`refdiff.guided_diffusion_timesteps`, :func:`refdiff.compvis_timesteps`).

    References
    ----------
    ZSNR, arXiv:2305.08891v4, Table 2 (the three spacings); the originals' lists:
    :mod:`refdiff.respacing`.
    """
    from refdiff import respacing  # lazily: respacing builds on this module's host_namespace

    T = _xp.count("num_train_timesteps", num_train_timesteps)
    n = _xp.count("num_inference_steps", num_inference_steps)
    if n > T:
        raise ValueError(f"num_inference_steps must lie in 1..{T} (num_train_timesteps), got {n}")
    if spacing not in SPACINGS + respacing.ORIGINAL_SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(map(repr, SPACINGS))}; got "
                         f"{spacing!r} (or one of the originals' lists: "
                         f"{', '.join(map(repr, respacing.ORIGINAL_SPACINGS))})")
    offset = _xp.integer("offset", offset, lo=0)
    if spacing in respacing.ORIGINAL_SPACINGS:
        if offset != 0:
            raise ValueError(f"offset (diffusers' steps_offset) applies to the diffusers "
                             f"spacings only, got offset={offset} with spacing={spacing!r}")
        if spacing == "guided_diffusion":
            return respacing.guided_diffusion_timesteps(T, [n], xp=xp)
        if spacing == "guided_diffusion_ddim":
            return respacing.guided_diffusion_timesteps(T, f"ddim{n}", xp=xp)
        return respacing.compvis_timesteps(T, n, spacing[len("compvis_"):], xp=xp)
    xp = host_namespace() if xp is None else xp
    i = xp.arange(n, dtype=xp.float64)
    if spacing == "leading":
        t = xp.flip(i * (T // n) + offset)
    elif spacing == "trailing":
        t = xp.round((T * (n - i)) / n) - 1
    else:
        t = xp.flip(xp.round(xp.linspace(0.0, T - 1.0, n, dtype=xp.float64)))
    t = xp.astype(t, xp.int64)
    if spacing == "leading" and int(t[0]) > T - 1:
        raise ValueError(f"offset must keep every timestep in [0, {T - 1}], got {offset} "
                         f"(largest timestep {int(t[0])})")
    return t
