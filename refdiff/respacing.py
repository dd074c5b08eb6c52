"""Timestep lists exactly as guided-diffusion and CompVis build them ("respacing").

diffusers' spacings (``"leading"``, ``"trailing"``, ``"linspace"``, in
:func:`refdiff.inference_timesteps`) are valid for every n in 1 … T. The originals' own lists are
not: guided-diffusion's ``"ddimN"`` exists for a few N only, and CompVis' lists leave the table or
repeat a timestep for many n. The functions here reproduce each list element for element, float
rounding included, and refuse (ValueError) the cases where the original fails or would visit a
timestep twice. Each returns refdiff's convention: a strictly descending 1-D int64 array of
training timesteps in [0, T−1], in a host namespace (NumPy by default, or ``xp=``).

Symbols
-------
==========================  ======  =====================================================
name                        symbol  meaning
==========================  ======  =====================================================
``num_train_timesteps``     T       training timesteps t = 0 … T−1
``num_inference_steps``     n       steps the sampler takes (CompVis' ``num_ddim_timesteps``)
``section_counts``          c_j     steps taken in section j (guided-diffusion's name)
``size``                    m_j     training timesteps in section j: ⌊T/J⌋ or ⌊T/J⌋ + 1
stride                      r       spacing between taken timesteps (an int, or a float)
==========================  ======  =====================================================

Which original uses what
------------------------
- guided-diffusion / improved-diffusion, ``respace.py::space_timesteps(num_timesteps,
  section_counts)``, used through ``timestep_respacing`` (``"250"`` = one section of 250
  steps; ``"ddim25"`` = the integer stride of the DDIM paper): :func:`guided_diffusion_timesteps`.
- CompVis latent-diffusion / stable-diffusion, ``ldm/modules/diffusionmodules/util.py::
  make_ddim_timesteps`` (``ddim_discretize="uniform"`` or ``"quad"``), which shifts every
  timestep by +1 "to get the final alpha values right": :func:`compvis_timesteps`.

References
----------
.. [DDIM] J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models",
   arXiv:2010.02502v4, §D.2 (the "linear" and "quadratic" sub-sequences τ, the quadratic one
   for CIFAR10).
.. [IDDPM] A. Nichol, P. Dhariwal, "Improved Denoising Diffusion Probabilistic Models",
   arXiv:2102.09672v1, §4 (evenly strided sampling with fewer steps: "we round to the nearest
   integer") and its released code's ``space_timesteps``.
.. [CG] P. Dhariwal, A. Nichol, "Diffusion Models Beat GANs on Image Synthesis",
   arXiv:2105.05233v4 (guided-diffusion's released code: ``timestep_respacing``).
.. [LDM] R. Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
   arXiv:2112.10752v2 (released code: ``make_ddim_timesteps``).
"""

from __future__ import annotations

import math
from itertools import accumulate, repeat
from typing import Any

from refdiff import _xp
from refdiff.schedules import host_namespace

ORIGINAL_SPACINGS = ("guided_diffusion", "guided_diffusion_ddim", "compvis_uniform",
                     "compvis_quad")
COMPVIS_METHODS = ("uniform", "quad")


# ----- guided-diffusion: space_timesteps ----------------------------------------------------

def guided_diffusion_timesteps(num_train_timesteps: int, section_counts: Any, *,
                               xp: Any = None) -> Any:
    """guided-diffusion's respaced timesteps (``space_timesteps``), descending.

    Two forms of ``section_counts``:

    - ``"ddimN"``: the smallest integer stride r in 1 … T−1 with exactly N elements in
      range(0, T, r), i.e. ⌈T/r⌉ = N; the timesteps are 0, r, 2r, … Only some N have such a
      stride (at T = 1000: 62 values of N). N = 1 never does: guided-diffusion does not try the
      stride T.
    - a comma-separated string ``"10,15,20"`` or a sequence of ints: the T timesteps are cut
      into J = len(section_counts) contiguous sections, the first T mod J of size ⌊T/J⌋ + 1,
      the others of size ⌊T/J⌋. Section j (first timestep s_j, size m_j) takes c_j steps at
      s_j + round(x_k), k = 0 … c_j − 1, where x_0 = 0.0 and x_{k+1} = x_k ⊕ r, with the
      float stride r = (m_j − 1)/(c_j − 1) (1 when c_j ≤ 1) and ⊕ float64 addition.

    Rounding is Python's ``round`` of the accumulated float (half to even). The accumulation,
    not the exact quotient k·(m_j − 1)/(c_j − 1), is what the original rounds: at T = 1000 one
    section of N steps equals round(linspace(0, T − 1, N)) for 722 of the N in 1 … 1000 and is
    one step off it somewhere for the others. guided-diffusion's ``timestep_respacing="250"``
    is the one-section form ``[250]``.

    Parameters
    ----------
    num_train_timesteps : int
        T ≥ 1.
    section_counts : str or sequence of int
        ``"ddimN"``, ``"c_1,c_2,..."``, or ``[c_1, c_2, ...]``: each c_j in 0 … m_j, not all 0.
    xp : namespace, optional
        Host array namespace of the result (default NumPy via array-api-compat).

    Returns
    -------
    timesteps : int64 array, shape (Σ c_j,) or (N,)
        Strictly descending, each in [0, T−1].

    Raises
    ------
    TypeError
        If ``section_counts`` is neither a string nor a sequence of ints.
    ValueError
        If a count does not parse as an int, is negative or exceeds its section's size, if all
        counts are 0, or if no stride in 1 … T−1 gives exactly N timesteps (the message names
        the nearest N that exist).

    References
    ----------
    IDDPM, arXiv:2102.09672v1, §4, and its released ``respace.py::space_timesteps``; DDIM,
    arXiv:2010.02502v4, §D.2 (the integer-strided sub-sequence).

    Examples
    --------
    >>> import refdiff as rd
    >>> rd.guided_diffusion_timesteps(10, "ddim4").tolist()    # stride 3: 0, 3, 6, 9
    [9, 6, 3, 0]
    >>> rd.guided_diffusion_timesteps(10, "2,3").tolist()      # sections 0…4 and 5…9
    [9, 7, 5, 4, 0]
    >>> rd.guided_diffusion_timesteps(1000, [4]).tolist()      # 333, 666 from 333.0, 666.0
    [999, 666, 333, 0]
    """
    T = _xp.count("num_train_timesteps", num_train_timesteps)
    form, counts = _parse_section_counts(section_counts)
    xp = host_namespace() if xp is None else xp
    if form == "ddim":
        t = xp.arange(0, T, _ddim_stride(T, counts[0]), dtype=xp.int64)
    else:
        t = _section_steps(xp, T, counts)
    # ascending and unique already (sections in order, strides >= 1 inside each), so the
    # original's set, sorted, is this list; refdiff's order is descending
    return xp.flip(t)


def _parse_section_counts(section_counts: Any) -> tuple[str, list[int]]:
    """("ddim", [N]) or ("sections", [c_1, …]) from a string or a sequence of ints."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):  # guided-diffusion's test, case and all
            return "ddim", [_int_text(section_counts[len("ddim"):], section_counts)]
        counts = [_int_text(part, section_counts) for part in section_counts.split(",")]
    elif isinstance(section_counts, bytes) or not hasattr(section_counts, "__len__") or \
            getattr(section_counts, "ndim", 1) != 1:
        raise TypeError(f"section_counts must be a string ('ddim25', '10,15,20') or a sequence "
                        f"of ints ([250]), got {type(section_counts).__name__} {section_counts!r}")
    else:
        counts = [_xp.integer(f"section_counts[{j}]", c, lo=0)
                  for j, c in enumerate(section_counts)]
    if sum(counts) < 1:
        raise ValueError(f"section_counts must take at least one step, got {counts}")
    return "sections", counts


def _int_text(text: str, whole: str) -> int:
    """One count of a section_counts string, as a non-negative int (Python's ``int`` syntax)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"section_counts={whole!r}: {text!r} is not an int; expected 'ddimN' "
                         "or comma-separated ints such as '10,15,20'") from None
    if value < 0:
        raise ValueError(f"section_counts={whole!r}: counts must be >= 0, got {value}")
    return value


def _ddim_stride(T: int, N: int) -> int:
    """The smallest stride r in 1 … T−1 with ⌈T/r⌉ = N elements in range(0, T, r)."""
    # ⌈T/r⌉ is non-increasing in r and ⌈T/r⌉ ≤ N ⇔ r ≥ T/N, so the first stride that reaches
    # N elements or fewer is r = ⌈T/N⌉; it gives N exactly, or no stride does.
    r = -(-T // N) if N >= 1 else T
    if r > T - 1 or -(-T // r) != N:
        # the nearest counts that exist: the stride r gives fewer than N, r − 1 more
        below = [-(-T // r)] if r <= T - 1 else []
        above = [-(-T // (r - 1))] if r >= 2 else []
        raise ValueError(f"section_counts='ddim{N}': no integer stride in 1..{T - 1} gives "
                         f"exactly {N} timesteps out of num_train_timesteps={T} (guided-diffusion "
                         f"tries strides 1..T-1 only); the nearest counts that exist are "
                         f"{below + above or 'none'}")
    return r


def _section_steps(xp: Any, T: int, counts: list[int]) -> Any:
    """The timesteps of J contiguous sections, counts[j] of them in section j (int64)."""
    size_per, extra = divmod(T, len(counts))
    parts, start = [], 0
    for j, count in enumerate(counts):
        size = size_per + (1 if j < extra else 0)  # the first T mod J sections one longer
        if count > size:
            raise ValueError(f"section_counts[{j}] = {count} exceeds the {size} timesteps of "
                             f"section {j} (num_train_timesteps={T} cut into {len(counts)} "
                             "sections)")
        if count > 0:
            parts.append(start + _section_offsets(xp, size, count))
        start += size
    return xp.concat(parts)


def _section_offsets(xp: Any, size: int, count: int) -> Any:
    """round(x_k), k = 0 … count−1, for x_0 = 0.0 and x_{k+1} = x_k + r in float64."""
    stride = 1.0 if count == 1 else (size - 1) / (count - 1)
    # accumulated in Python floats, one IEEE addition per step as the original (never k·r)
    x = list(accumulate(repeat(stride, count - 1), initial=0.0))
    # the array API's round is half to even, as Python's round of a float
    return xp.astype(xp.round(xp.asarray(x, dtype=xp.float64)), xp.int64)


# ----- CompVis: make_ddim_timesteps ----------------------------------------------------------

def compvis_timesteps(num_train_timesteps: int, num_inference_steps: int,
                      method: str = "uniform", *, xp: Any = None) -> Any:
    """CompVis' DDIM timesteps (``make_ddim_timesteps``), descending.

    With c = ⌊T/n⌋:

    - ``"uniform"``: range(0, T, c) + 1. This has ⌈T/c⌉ elements, more than n whenever n does
      not divide T (T = 1000, n = 3: c = 333 gives 1, 334, 667, 1000: four elements).
    - ``"quad"``: ⌊(linspace(0, √(0.8·T), n))²⌋ + 1 (NumPy's ``linspace`` in float64, truncated
      to int), the DDIM paper's quadratic sub-sequence.

    The +1 is CompVis' (its sampler then steps to ᾱ_0 last: ``final_alpha_bar="alpha_bar_0"``
    in :func:`refdiff.sample`). Where it moves the largest timestep to T (uniform: whenever c
    divides T − 1, e.g. every n > T/2; quad: T ≤ 5 and n ≥ 2, or T = 1), the
    list leaves the table 0 … T−1 and CompVis fails indexing ``alphas_cumprod``: refused. Quad
    repeats a timestep once the squares near 0 come closer than 1 apart (n − 1 > √(0.8·T), so
    n ≥ 30 at T = 1000); CompVis would then visit a timestep twice: refused.

    Parameters
    ----------
    num_train_timesteps : int
        T ≥ 1.
    num_inference_steps : int
        n in 1 … T (CompVis' ``num_ddim_timesteps``).
    method : {"uniform", "quad"}
        CompVis' ``ddim_discr_method`` (``ddim_discretize`` of its sampler).
    xp : namespace, optional
        Host array namespace of the result (default NumPy via array-api-compat).

    Returns
    -------
    timesteps : int64 array, shape (⌈T/c⌉,) for "uniform", (n,) for "quad"
        Strictly descending, each in [1, T−1].

    Raises
    ------
    ValueError
        For n outside 1 … T, an unknown ``method``, a largest timestep equal to T, or a
        repeated timestep (quad).

    References
    ----------
    LDM, arXiv:2112.10752v2, released ``ldm/modules/diffusionmodules/util.py::
    make_ddim_timesteps``; DDIM, arXiv:2010.02502v4, §D.2 (linear and quadratic τ).

    Examples
    --------
    >>> import refdiff as rd
    >>> rd.compvis_timesteps(1000, 4).tolist()           # c = 250: 0, 250, 500, 750, then +1
    [751, 501, 251, 1]
    >>> rd.compvis_timesteps(10, 3, "quad").tolist()     # ⌊(0, √8/2, √8)²⌋ = 0, 2, 8; +1
    [9, 3, 1]
    """
    T = _xp.count("num_train_timesteps", num_train_timesteps)
    n = _xp.count("num_inference_steps", num_inference_steps)
    if n > T:
        raise ValueError(f"num_inference_steps must lie in 1..{T} (num_train_timesteps), got {n}")
    _xp.choice("method", method, COMPVIS_METHODS)
    xp = host_namespace() if xp is None else xp
    if method == "uniform":
        t = xp.arange(0, T, T // n, dtype=xp.int64)
    else:
        root = math.sqrt(T * 0.8)  # the original's np.sqrt(T * .8): float64, correctly rounded
        t = xp.astype(xp.floor(xp.linspace(0.0, root, n, dtype=xp.float64) ** 2), xp.int64)
    t = t + 1  # CompVis' shift "to get the final alpha values right"
    _check_compvis(xp, t, T, n, method)
    return xp.flip(t)


def _check_compvis(xp: Any, t: Any, T: int, n: int, method: str) -> None:
    """ValueError where the ascending list ``t`` leaves [0, T−1] or repeats a timestep."""
    where = (f"compvis_timesteps(num_train_timesteps={T}, num_inference_steps={n}, "
             f"method={method!r})")
    if int(t[-1]) > T - 1:
        why = (f"the stride {T // n} = T // n divides T - 1 = {T - 1}, so range(0, T, stride) "
               "ends at T - 1" if method == "uniform" else "floor(sqrt(0.8 * T)**2) >= T - 1")
        raise ValueError(f"{where}: the +1 shift puts the largest timestep at {int(t[-1])}, "
                         f"outside the table 0..{T - 1} ({why}); CompVis fails indexing "
                         "alphas_cumprod there: choose another num_inference_steps")
    if t.shape[0] > 1 and not bool(xp.all(t[1:] > t[:-1])):
        repeated = sorted({int(v) for v in t[1:][t[1:] == t[:-1]]})
        raise ValueError(f"{where}: timesteps {repeated[:6]} repeat (the quadratic spacing "
                         f"near t = 0 is below 1 once n - 1 > sqrt(0.8 * T) = "
                         f"{math.sqrt(0.8 * T):.4g}); CompVis would visit them twice")
