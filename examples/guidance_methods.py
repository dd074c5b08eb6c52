"""Guidance methods on the exact oracle: CFG, the guidance interval, scale schedules, APG,
CFG++ and autoguidance, each measured against the true p(x_0 | y).

The model is the exact ε of a labelled 2-D Gaussian mixture (:mod:`refdiff.oracle`), so an
unguided conditional run samples p(x_0 | y) up to discretisation, and every deviation a
guidance method causes is the method's own. Every method runs from the same x_T (and, for
DDPM, the same step noise: one integer seed), with DDIM 50 steps (η = 0) and DDPM 250 steps
on ``linear_schedule(1000)``; the three classes are the targets of one batch (y = i mod 3),
the unconditional branch is the whole mixture (``uncond=None``).

Metrics, against the truth p(x_0 | y) of each target class (averaged over the classes):

- accuracy: the fraction of samples whose Bayes class argmax_c p(c | x_0) (the oracle's
  ``log_prob_class`` at ᾱ = 1) is their target; the truth itself scores P(correct Bayes
  classification) < 1, since the classes overlap;
- SW2: the sliced Wasserstein-2 distance to a large exact sample of p(x_0 | y);
- spread: √(tr Cov(samples) / tr Cov_true), the within-class spread relative to the truth;
- low-density: the fraction of samples with log p(x_0 | y) below the truth's 1st percentile
  (the truth scores ≈ 0.01).

Two autoguidance experiments (Karras et al., arXiv:2406.02507v3, Eq. 3 and §3): the exact
model guided by the same mixture with variances inflated k-fold; and the fair test, a main
model that is itself imperfect (variances × k1) guided by a worse one (× k0 > k1), scored
against the true mixture.

The mixture, the metrics and the truth are in ``_study_metrics.py``; the findings, written
from the measured numbers, in ``_study_findings.py``; the tables, the page and the figures in
``_study_report.py``.

    python examples/guidance_methods.py [--quick] [--out DIR | --write-docs]

Writes guidance_methods.md and guidance_<method>.png to DIR (default: the current
directory); ``--write-docs`` writes them to docs/ (a full run: it refuses ``--quick``).

References
----------
CFG: Ho & Salimans, arXiv:2207.12598v1. Guidance interval: Kynkäänniemi et al.,
arXiv:2404.07724v2, Eq. 6. Schedules: Wang et al., arXiv:2404.13040. APG: Sadat et al.,
arXiv:2410.02416v1, Algorithm 1. CFG++: Chung et al., arXiv:2406.08070v1, Algorithm 1.
Autoguidance: Karras et al., arXiv:2406.02507v3, Eq. 3. Sliced Wasserstein: Bonneel et al.,
J. Math. Imaging Vis. 51 (2015), §2.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any, Callable

import numpy as np

import refdiff as rd
from _output import machine, parse_args
from _study_findings import Experiment, findings
from _study_metrics import (K_GUIDES, K_MAIN, Truth, eps_model, first_order_autoguidance,
                            make_truth, metrics, study_mixture)
from _study_report import Run, figure, page

# The σ intervals of the guidance-interval experiment: the SDXL interval of the paper, a
# narrower one, and its complement at high noise.
INTERVALS = {"(0.28, 5.42]": (0.28, 5.42), "(0.28, 2.9]": (0.28, 2.9),
             "(5.42, inf)": (5.42, math.inf)}
R_APG = 1.0  # APG's norm threshold r (see apg_gaps)

G = rd.Guidance


# ----- the experiments -------------------------------------------------------------------

def _cfg(pick: Callable, y: np.ndarray, exact: Any) -> Experiment:
    return Experiment(
        "cfg", "CFG", "s",
        "ε̃ = ε_u + s(ε_c − ε_u), ε_u of the whole mixture; s = 1 is the conditional "
        "sampler, which the exact model makes a sampler of p(x | y).",
        {"CFG": [(s, G(cond=y, scale=s)) for s in pick([1.0, 1.5, 2.0, 3.0, 5.0, 8.0],
                                                       [1.0, 3.0])]}, model=exact)


def _interval(mid_s: list, y: np.ndarray, exact: Any) -> Experiment:
    sched = rd.ScaleSchedule
    return Experiment(
        "interval", "guidance interval", "s",
        "s inside the σ interval, 1 (the conditional branch only) outside "
        "(`ScaleSchedule(\"interval\", ...)`); (0.28, 5.42] is the SDXL interval of the "
        "guidance-interval paper, (0.28, 2.9] a narrower one, (5.42, ∞) its complement at "
        "high noise.",
        {f"interval {k}": [(s, G(cond=y, scale=sched("interval", s, sigma_lo=lo, sigma_hi=hi)))
                           for s in mid_s] for k, (lo, hi) in INTERVALS.items()}, model=exact)


def _schedule(mid_s: list, y: np.ndarray, exact: Any) -> Experiment:
    return Experiment(
        "schedule", "scale schedules (mean s)", "s",
        "w = s − 1 ramps from 0 to 2w over the run, linearly or along a half cosine, so the "
        "mean scale is s: compare with CFG at the same s.",
        {kind: [(s, G(cond=y, scale=rd.ScaleSchedule(kind, s))) for s in mid_s]
         for kind in ("linear", "cosine")}, model=exact)


def _apg(mid_s: list, y: np.ndarray, exact: Any, gaps: list) -> Experiment:
    def apg(s, eta, beta):
        return G(cond=y, scale=s, method="apg",
                 apg=rd.APG(eta=eta, norm_threshold=R_APG, momentum=beta))
    return Experiment(
        "apg", f"APG in x̂_0, r = {R_APG:g}", "s",
        f"Projection in x̂_0 (the paper's space), r = {R_APG:g}: at high noise ‖Δ‖ is the "
        "distance of the class mean to the mixture mean, " + ", ".join(f"{v:.2f}" for v in gaps)
        + " for the three classes, so r caps the early guidance. η = 1, β = 0 is CFG with the "
          "norm cap only.",
        {f"APG η={eta:g} β={beta:g}": [(s, apg(s, eta, beta)) for s in mid_s]
         for eta in (0.0, 1.0) for beta in (0.0, -0.5)}, model=exact)


def _cfgpp(pick: Callable, y: np.ndarray, exact: Any, seff: tuple) -> Experiment:
    return Experiment(
        "cfgpp", "CFG++ (DDIM only)", "λ",
        f"λ ∈ [0, 1]; DDIM only (CFG++'s Algorithm 1). Equivalent CFG-DDIM scale per step: "
        f"λ·σ_t/(σ_t − σ_prev), from {seff[0]:.2f}·λ to {seff[1]:.2f}·λ on these {seff[2]} "
        f"steps.",
        {"CFG++": [(lam, G(cond=y, scale=lam, method="cfg++"))
                   for lam in pick([0.2, 0.4, 0.6, 0.8, 1.0], [0.4, 1.0])]},
        samplers=("ddim",), model=exact)


def _autoguided(y: np.ndarray, ws: list, k: float, schedule: Any) -> list:
    """(w, Guidance) per w: the conditional model guided by the mixture with every
    covariance × k."""
    guide = eps_model(study_mixture(k), schedule)
    return [(w, G(cond=y, uncond=y, scale=w, guiding_model=guide)) for w in ws]


def _autoguidance(pick: Callable, y: np.ndarray, exact: Any, schedule: Any) -> Experiment:
    ws = pick([1.5, 2.0, 3.0], [2.0])
    return Experiment(
        "autoguidance", "autoguidance of the exact model", "w",
        "Guidance(cond=y, uncond=y, scale=w, guiding_model=the mixture with every covariance "
        "× k): the main model is exact.",
        {f"guide × {k:g}": _autoguided(y, ws, k, schedule)
         for k in pick([1.5, 2.0, 4.0], [2.0])}, model=exact)


def _autoguidance_imperfect(pick: Callable, y: np.ndarray, schedule: Any) -> Experiment:
    """The main model with covariances × K_MAIN, guided by worse ones (× K_GUIDES); the w
    grid brackets the first-order optimum of every guide."""
    ws = pick([1.25, 1.5, 2.0, 2.5, 3.0, 3.5], [1.5])
    variants = {"unguided (w = 1)": [(1.0, G(cond=y, scale=1.0))],
                "CFG": [(s, G(cond=y, scale=s)) for s in pick([1.5, 2.0], [1.5])]}
    for k0 in pick(K_GUIDES, K_GUIDES[:1]):
        variants[f"auto, guide × {k0:g}"] = _autoguided(y, ws, k0, schedule)
    w_pred = ", ".join(f"{first_order_autoguidance(K_MAIN, k0):.2f} for k0 = {k0:g}"
                       for k0 in K_GUIDES)
    return Experiment(
        "autoguidance_imperfect",
        f"autoguidance of an imperfect model (main × {K_MAIN:g})", "w or s",
        f"The main model is the mixture with covariances × {K_MAIN:g} (an imperfect model: too "
        "wide), the guide the same with × k0 (the same error, stronger); metrics against the "
        "true mixture. A first-order reading at ᾱ → 1 for one Gaussian component: precisions "
        f"combine as w/k1 − (w − 1)/k0, which is 1 (the truth) at w = {w_pred}. CFG here is "
        "the main model's own conditional vs unconditional.",
        variants, model=eps_model(study_mixture(K_MAIN), schedule))


def experiments(quick: bool, schedule: Any, y: np.ndarray, gaps: list,
                cfgpp_seff: tuple) -> list[Experiment]:
    """The seven experiments, with the full grids or (``quick``) a point or two of each."""
    exact = eps_model(study_mixture(), schedule)
    pick = (lambda full, q: q) if quick else (lambda full, q: full)
    mid_s = pick([3.0, 8.0], [3.0])
    return [_cfg(pick, y, exact), _interval(mid_s, y, exact), _schedule(mid_s, y, exact),
            _apg(mid_s, y, exact, gaps), _cfgpp(pick, y, exact, cfgpp_seff),
            _autoguidance(pick, y, exact, schedule), _autoguidance_imperfect(pick, y, schedule)]


def run_all(exps: list[Experiment], truth: Truth, schedule: Any, x_T: np.ndarray,
            y: np.ndarray, steps: dict, log: Callable[[str], None]) -> None:
    """Every (variant, parameter, sampler) from the same x_T and the same step-noise seed."""
    for e in exps:
        for label, grid in e.variants.items():
            for p, g in grid:
                for sampler in e.samplers:
                    x0 = rd.sample(e.model, x_T, schedule, sampler=sampler,
                                   num_inference_steps=steps[sampler], guidance=g, generator=7)
                    m = metrics(truth, np.asarray(x0), y)
                    e.rows.append({"variant": label, "param": p, "sampler": sampler, "x": x0,
                                   **m})
                    log(f"{e.key:>22} {label:>24} {e.param}={p:<5g} {sampler}: "
                        f"acc {m['acc']:.3f}  SW2 {m['sw2']:.3f}  spread {m['spread']:.3f}  "
                        f"low {m['low']:.3f}")




# ----- the run's facts -------------------------------------------------------------------

def apg_gaps(gm: Any) -> list[float]:
    """‖E[x_0 | y] − E[x_0]‖ per class: ‖Δ‖ at high noise (the class mean's distance to the
    mixture mean); APG's r below it caps the early, strongest guidance."""
    m_all = gm.weights @ gm.means
    gaps = []
    for c in range(gm.num_classes):
        sel = gm.labels == c
        gaps.append(float(np.linalg.norm(gm.weights[sel] @ gm.means[sel] / gm.weights[sel].sum()
                                         - m_all)))
    return gaps


def ddim_sigmas(schedule: Any, steps: int) -> tuple[Any, list, tuple]:
    """The DDIM timesteps, their σ (0 appended for the end) and CFG++'s equivalent CFG
    scale per step, σ_t/(σ_t − σ_prev): (its min, its max, the number of steps)."""
    ts = rd.inference_timesteps(1000, steps, "leading")
    sig = [rd.sigma_from_alpha_bar(schedule.alpha_bar(int(t))) for t in ts] + [0.0]
    seff = [a / (a - b) for a, b in zip(sig[:-1], sig[1:])]
    return ts, sig, (min(seff), max(seff), len(ts))


# ----- main ------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="few samples, steps and grid points (tests; not the study)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", "--out-dir", dest="out_dir", default=".", metavar="DIR",
                       help="where guidance_methods.md and guidance_*.png go (default: the "
                            "current directory)")
    where.add_argument("--write-docs", action="store_true",
                       help="write docs/guidance_methods.md and docs/guidance_*.png (a full "
                            "run: refuses --quick)")
    return p


def _log_truth(truth: Truth, run: Run, schedule: Any, log: Callable[[str], None]) -> None:
    per = run.n // 3
    log(f"truth: Bayes accuracy {truth.bayes_accuracy:.3f}; SW2 floor ({per} exact draws "
        f"per class vs {run.n_ref}) {truth.floor:.3f}, between two exact samples of {per} "
        f"{truth.floor_pair:.3f}; low-density fraction of an exact sample {truth.low_truth:.3f}")
    log(f"sigma of the linear schedule: {run.sig[0]:.1f} at t={run.ts[0]} (first DDIM step), "
        f"{rd.sigma_from_alpha_bar(schedule.alpha_bar(999)):.1f} at t=999")


def main(argv=None) -> int:
    t_start = time.perf_counter()
    args = parse_args(_parser(), argv)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    quick = args.quick
    n, n_ref = (150, 1500) if quick else (1500, 20000)
    steps = {"ddim": 10, "ddpm": 25} if quick else {"ddim": 50, "ddpm": 250}
    schedule = rd.linear_schedule(1000)
    gm = study_mixture()
    truth = make_truth(gm, n_ref, n)
    y = np.arange(n) % gm.num_classes
    x_T = np.random.default_rng(2024).standard_normal((n, gm.dim))
    ts, sig, seff = ddim_sigmas(schedule, steps["ddim"])
    steps_in = {k: sum(lo < s <= hi for s in sig[:-1]) for k, (lo, hi) in INTERVALS.items()}
    run = Run(f"python examples/guidance_methods.py {argv_text}".strip(), machine(), quick,
              n, n_ref, steps, sig, ts, steps_in, R_APG, seff)
    _log_truth(truth, run, schedule, print)
    exps = experiments(quick, schedule, y, apg_gaps(gm), seff)
    run_all(exps, truth, schedule, x_T, y, steps, print)
    by_key = {e.key: e for e in exps}
    figures = {e.key: figure(e, truth, y, str(args.out_dir / f"guidance_{e.key}.png"), quick)
               for e in exps}
    run.wall = time.perf_counter() - t_start
    path = args.out_dir / "guidance_methods.md"
    path.write_text(page(by_key, truth, run, figures))
    print("\n".join(findings(by_key, truth, seff, R_APG, quick)))
    print(f"report: {path}")
    for f in figures.values():
        print(f"figure: {f if f else 'skipped (matplotlib missing)'}")
    print(f"wall time {run.wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
