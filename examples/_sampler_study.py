"""The measurements of examples/sampler_accuracy.py: the runs, their model-call counts, the
references they are scored against, SW2 with its noise floor, per-sample errors and the
empirical orders.

Symbols: ``gm`` a :class:`refdiff.oracle.GaussianMixture` (2-D); ``z`` the starting noise,
shape (B, 2), the same for every sampler (x = σ_max·z on the VE path, x = z at flow time 1);
``y`` target labels (``None``: unguided, the whole mixture); NFE = the number of evaluations
of the (guided) denoiser D, each of which is one model call unguided and two under CFG
(the unconditional and the conditional branch).

References
----------
EDM: Karras et al., arXiv:2206.00364v2, Eq. 5 (Karras σ's) and Algorithm 1 (Heun, 2n − 1
evaluations when σ_n = 0). DPM-Solver++(2M): Lu et al., arXiv:2211.01095v2, Algorithm 2.
Flow matching: Lipman et al., arXiv:2210.02747v2; SD3 shift: Esser et al.,
arXiv:2403.03206v1, Eq. 23. CFG: Ho & Salimans, arXiv:2207.12598v1. Sliced Wasserstein:
Bonneel et al., J. Math. Imaging Vis. 51 (2015), §2. Richardson extrapolation: Hairer,
Nørsett & Wanner, Solving ODEs I (2nd ed.), §II.4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import refdiff as rd
from refdiff.oracle import GaussianMixture
from refdiff.oracle_paths import exact_model, gaussian_ode_solution
from _study_metrics import COVARIANCES, MEANS, directions, sliced_w2_sorted, sorted_projections

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0       # karras_sigmas(n, 0.002, 80), final σ = 0
SCALE = 3.0                               # the CFG scale s of the guided runs
SAMPLERS = ("euler", "heun", "euler_ancestral", "dpmpp_2m", "flow_s1", "flow_s3")
DETERMINISTIC = ("euler", "heun", "dpmpp_2m", "flow_s1", "flow_s3")
NAMES = {"euler": "Euler", "heun": "Heun", "euler_ancestral": "Euler-ancestral η=1",
         "dpmpp_2m": "DPM++(2M)", "flow_s1": "flow Euler, shift 1",
         "flow_s3": "flow Euler, shift 3"}
SHIFTS = {"flow_s1": 1.0, "flow_s3": 3.0}
Z_SEED, ANCESTRAL_SEED, EXACT_SEED, POOL_SEED = 2024, 7, 12345, 99


@dataclass(frozen=True)
class Config:
    """Sizes of one run of the study (full or quick)."""

    n: int              # samples per sampler run (the same z for all)
    n_exact: int        # exact draws of the unguided reference
    n_pool: int         # samples of each converged-ODE reference
    n_err: int          # the first n_err samples score the per-sample error
    grid: tuple         # the NFE grid
    fit_from: int       # orders are fit on the grid points ≥ this
    conv_steps: int     # Heun steps of the converged-ODE references
    ref_steps: int      # Heun steps of the per-sample reference of the mixture (σ-space)
    flow_ref_steps: int  # flow Euler steps M of the flow reference 2·F(M) − F(M/2)
    fresh: int = 6      # fresh exact sets (or reference partitions) for a floor


FULL = Config(2000, 20000, 12000, 500, (4, 6, 8, 12, 16, 24, 32, 48, 64, 100), 24, 128,
              1024, 2048, fresh=20)
QUICK = Config(300, 3000, 1500, 100, (4, 8, 16, 32, 64), 16, 32, 256, 512, fresh=4)


def gaussian() -> GaussianMixture:
    """One anisotropic Gaussian (the study mixture's component 2): its PF-ODE has a closed
    form, :func:`refdiff.oracle_paths.gaussian_ode_solution`."""
    return GaussianMixture.full([1.0], [MEANS[2]], [COVARIANCES[2]])


def start_noise(n: int) -> np.ndarray:
    """z, shape (n, 2): the starting noise of every sampler run."""
    return np.random.default_rng(Z_SEED).standard_normal((n, 2))


def labels(n: int, guided: bool) -> np.ndarray | None:
    """The target classes of a run, y = i mod 3 (None unguided)."""
    return np.arange(n) % 3 if guided else None


# ----- the runs ---------------------------------------------------------------------------

class Counted:
    """A model that counts its calls."""

    def __init__(self, model: Callable) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: Any, level: float, c: Any) -> Any:
        self.calls += 1
        return self.model(x, level, c)


def steps_for(sampler: str, nfe: int) -> int:
    """Steps whose NFE is at most ``nfe``: Heun's n steps to σ = 0 take 2n − 1 evaluations
    (EDM Algorithm 1: no correction on the last step), the others' n take n."""
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def nfe_of(sampler: str, steps: int) -> int:
    """The denoiser evaluations of ``steps`` steps (the inverse of :func:`steps_for`)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def run(gm: GaussianMixture, sampler: str, steps: int, z: np.ndarray,
        y: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(samples, model calls) of one sampler with the exact model, from σ_max·z (σ-space)
    or z (flow); ``y``: CFG at s = SCALE towards class y, the whole mixture unconditional.
    The calls are checked against the NFE formula (×2 under CFG)."""
    g = None if y is None else rd.Guidance(cond=y, scale=SCALE)
    if sampler in SHIFTS:
        model = Counted(exact_model(gm, "flow", "velocity"))
        x = rd.sample_flow(model, z, rd.flow_times(steps, shift=SHIFTS[sampler]), guidance=g)
    else:
        model = Counted(exact_model(gm, "ve", "sample"))
        extra = {"generator": ANCESTRAL_SEED} if sampler == "euler_ancestral" else {}
        x = rd.sample_ode(model, SIGMA_MAX * z, rd.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX),
                          solver=sampler, guidance=g, **extra)
    expected = nfe_of(sampler, steps) * (1 if y is None else 2)
    if model.calls != expected:
        raise RuntimeError(f"{sampler} with {steps} steps called the model {model.calls} "
                           f"times, expected {expected}")
    return np.asarray(x), model.calls


def flow_reference(gm: GaussianMixture, z: np.ndarray, steps: int) -> np.ndarray:
    """The flow ODE's end from t = 1: Richardson's 2·F(M) − F(M/2) of flow Euler (first
    order, so the O(1/M) terms cancel; the last step, 10⁻³ to 0, is the same in both and its
    O(10⁻⁶) error stays)."""
    return 2.0 * run(gm, "flow_s1", steps, z)[0] - run(gm, "flow_s1", steps // 2, z)[0]


def gaussian_exact(g: GaussianMixture, z: np.ndarray, flow: bool) -> np.ndarray:
    """The exact PF-ODE end of one Gaussian N(μ, U diag(λ) Uᵀ): from x = σ_max·z at σ_max
    (:func:`gaussian_ode_solution`), or, for the flow from t = 1, its limit σ → ∞ with
    x_VE = (1 + σ)·z: μ + U diag(√λ) Uᵀ z."""
    if not flow:
        return gaussian_ode_solution(g, SIGMA_MAX * z, SIGMA_MAX, 0.0)
    U, lam = g.eigvecs[0], g.eigvals[0]
    return g.means[0] + (z @ U) * np.sqrt(lam) @ U.T


# ----- SW2 against a reference, and its noise floor -----------------------------------------

THETA = directions(2)


@dataclass
class Reference:
    """A reference sample per class (key None: unguided), as sorted projections, and the
    SW2 of a sample of the run's size from the same law to it: its mean (the floor), its
    standard deviation, and (exact data only) between two run-sized sets."""

    name: str
    proj: dict
    floor: float = 0.0
    floor_sd: float = 0.0
    pair: float = math.nan


def by_class(x: np.ndarray, y: np.ndarray | None) -> dict:
    return {None: x} if y is None else {c: x[y == c] for c in np.unique(y)}


def sw2(ref: Reference, x: np.ndarray, y: np.ndarray | None = None) -> float:
    """SW2 of samples x (targets y) to the reference, averaged over the classes."""
    return float(np.mean([sliced_w2_sorted(sorted_projections(xc, THETA), ref.proj[c])
                          for c, xc in by_class(x, y).items()]))


def _stats(values: list) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1))


def exact_reference(gm: GaussianMixture, cfg: Config) -> Reference:
    """``n_exact`` exact draws of the mixture; floor: ``fresh`` fresh exact sets of n
    against it; pair: two fresh sets of n against each other."""
    ref = Reference("exact data", {None: sorted_projections(
        gm.sample(cfg.n_exact, generator=EXACT_SEED)[0], THETA)})
    sets = [gm.sample(cfg.n, generator=EXACT_SEED + 1 + r)[0] for r in range(2 * cfg.fresh)]
    ref.floor, ref.floor_sd = _stats([sw2(ref, a) for a in sets[:cfg.fresh]])
    ref.pair = float(np.mean([sliced_w2_sorted(sorted_projections(a, THETA),
                                               sorted_projections(b, THETA))
                              for a, b in zip(sets[:cfg.fresh], sets[cfg.fresh:])]))
    return ref


def converged_reference(gm: GaussianMixture, cfg: Config, guided: bool) -> tuple:
    """(Reference, pool): Heun with ``conv_steps`` steps from independent noise, n_pool
    samples (guided: y = i mod 3, CFG s = SCALE). Floor: ``fresh`` random partitions of the
    pool into a run-sized set (per class as in a run) and the rest, SW2 of one to the
    other (a reference of n_pool − n, slightly smaller than the one the runs meet)."""
    z = np.random.default_rng(POOL_SEED + guided).standard_normal((cfg.n_pool, 2))
    y = labels(cfg.n_pool, guided)
    pool = run(gm, "heun", cfg.conv_steps, z, y)[0]
    name = "converged guided ODE" if guided else "converged ODE"
    ref = Reference(name, {c: sorted_projections(xc, THETA) for c, xc in by_class(pool, y).items()})
    held = {c: len(v) for c, v in by_class(np.zeros((cfg.n, 1)), labels(cfg.n, guided)).items()}
    vals = []
    for r in range(cfg.fresh):
        rng = np.random.default_rng(POOL_SEED + 10 + r)
        per = []
        for c, xc in by_class(pool, y).items():
            xc = xc[rng.permutation(len(xc))]
            per.append(sliced_w2_sorted(sorted_projections(xc[:held[c]], THETA),
                                        sorted_projections(xc[held[c]:], THETA)))
        vals.append(float(np.mean(per)))
    ref.floor, ref.floor_sd = _stats(vals)
    return ref, pool


# ----- errors and orders --------------------------------------------------------------------

def mean_error(x: np.ndarray, ref: np.ndarray) -> float:
    """The mean over samples of ‖x − x_ref‖."""
    return float(np.mean(np.linalg.norm(x - ref, axis=1)))


def order(points: list, fit_from: int) -> float:
    """−slope of the least-squares line through (log NFE, log error) over the points whose
    grid NFE is ≥ fit_from: points = [(grid NFE, NFE, error), ...]."""
    use = [(n, e) for g, n, e in points if g >= fit_from]
    slope = np.polyfit(np.log([n for n, _ in use]), np.log([e for _, e in use]), 1)[0]
    return float(-slope)


def nfe_to_threshold(points: list, threshold: float) -> int | None:
    """The smallest NFE from which every larger grid point has SW2 ≤ threshold (None: not
    reached in the grid); points = [(NFE, SW2), ...] in grid order."""
    hit = None
    for nfe, value in reversed(points):
        if value > threshold:
            break
        hit = nfe
    return hit


