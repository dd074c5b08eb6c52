"""The page of examples/guidance_methods.py: a table per method, the summary at matched
accuracy, the page around them (the run, the data, the noise floors) and a figure per
method (the exact p(x | y), three runs, the metrics against the parameter).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from refdiff._plotting import pyplot, save
from refdiff.oracle import GaussianMixture
from _study_findings import (ACC_MIN, SAMPLERS, Experiment, closest, findings, method_rows,
                             row_of)
from _study_metrics import FRESH_RUNS, WEIGHTS, Truth, log_prob_given, resolution


@dataclass
class Run:
    """What the page says about the run besides its rows: the command and machine, the
    sizes, the steps per sampler, the σ of the DDIM steps (with 0 appended) and the number
    of them in each guidance interval, APG's r and CFG++'s per-step scale range."""

    command: str
    machine: str
    quick: bool
    n: int
    n_ref: int
    steps: dict
    sig: list
    ts: Any
    steps_in: dict
    r_apg: float
    cfgpp_seff: tuple
    wall: float = 0.0


# ----- the tables ------------------------------------------------------------------------

def table(e: Experiment, steps: dict) -> str:
    """One markdown table: a row per (variant, parameter), the four metrics per sampler."""
    cols = [f"{s.upper()} {steps[s]}: {m}" for s in e.samplers
            for m in ("acc", "SW2", "spread", "low")]
    lines = [f"| variant | {e.param} | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for label, grid in e.variants.items():
        for p, _ in grid:
            cells = []
            for s in e.samplers:
                r = row_of(e, label, p, s)
                cells += [f"{r['acc']:.3f}", f"{r['sw2']:.3f}", f"{r['spread']:.3f}",
                          f"{r['low']:.3f}"]
            lines.append(f"| {label} | {p:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _summary_cells(r: dict | None) -> list[str]:
    if r is None:
        return ["none", "", "", "", ""]
    return [f"{r['variant']}, {r['param']:g}", f"{r['acc']:.3f}", f"{r['sw2']:.3f}",
            f"{r['spread']:.3f}", f"{r['low']:.3f}"]


def summary(exps: dict, steps: dict) -> str:
    """Per method and sampler: the run closest to p(x | y), and the closest among the runs
    with accuracy ≥ ACC_MIN (guidance's purpose: a comparison at matched accuracy)."""
    lines = [f"| method | sampler | closest run | acc | SW2 | spread | low | closest with acc ≥ "
             f"{ACC_MIN:g} | acc | SW2 | spread | low |", "|---|---|" + "---|" * 10]
    for name, rows in method_rows(exps):
        for smp in SAMPLERS:
            if any(r["sampler"] == smp for r in rows):
                cells = _summary_cells(closest(rows, smp)) + _summary_cells(
                    closest(rows, smp, ACC_MIN))
                lines.append(f"| {name} | {smp.upper()} {steps[smp]} | " + " | ".join(cells)
                             + " |")
    return "\n".join(lines)


# ----- the page --------------------------------------------------------------------------

def _intro(run: Run) -> list[str]:
    return [
        "# Guidance methods against the exact p(x | y)",
        "",
        f"This page is the output of `{run.command}`"
        f"{' (quick mode: not the study)' if run.quick else ''}, run on {run.machine}, in "
        f"{run.wall:.1f} s of wall time measured by the script. Every "
        f"method samples a 2-D labelled Gaussian mixture whose model is the exact ε of "
        f"refdiff.oracle, from the same x_T ({run.n} samples, the three classes as targets in "
        f"turn) and the same DDPM step noise, with DDIM {run.steps['ddim']} steps (η = 0) and "
        f"DDPM {run.steps['ddpm']} steps on `linear_schedule(1000)`; every metric is against "
        f"the true p(x_0 | y), from {run.n_ref} exact draws per class. Nothing here is learned: "
        f"what moves a metric away from the truth's own value is the guidance method, plus "
        f"discretisation.",
        "",
        "## The data, the metrics and their noise floors",
        "",
        "Five components, three classes (class 0: two components; class 1: one; class 2: two, "
        "one of them wide and flat), anisotropic full covariances; the weights "
        f"{WEIGHTS}. The classes overlap, so even exact samples are not all classified as "
        "their class.",
        "",
        "- **acc**: the fraction of samples whose Bayes class argmax_c p(c | x_0) under the "
        "true mixture (the oracle's `log_prob_class` at ᾱ = 1) is their target.",
        "- **SW2**: the sliced Wasserstein-2 distance to the exact sample of p(x_0 | y), 200 "
        "fixed random directions, exact 1-D W2 of the sorted projections, averaged over the "
        "classes.",
        "- **spread**: √(tr Cov(samples) / tr Cov_true) per class (the exact class "
        "covariance), averaged: 1 for the truth, below 1 when samples concentrate.",
        "- **low**: the fraction of samples with log p(x_0 | y) below the 1st percentile of "
        "the exact sample's log p(x_0 | y): ≈ 0.01 for the truth.",
        "",
    ]


def _floors(truth: Truth, run: Run) -> list[str]:
    """The truth's own scores, and the noise levels against the data's scale."""
    gm, per, sig = truth.gm, run.n // 3, run.sig
    apart = [float(np.linalg.norm(gm.means[i] - gm.means[j])) for i in range(len(gm.labels))
             for j in range(i) if gm.labels[i] != gm.labels[j]]
    return [
        f"The truth's own scores (exact draws of the run's size, {per} per class): acc "
        f"{truth.bayes_accuracy:.3f} (the Bayes rate P(correct), from the reference), SW2 "
        f"{truth.floor:.3f} (the mean over {FRESH_RUNS} fresh exact runs against the "
        f"reference: the noise floor of every SW2 below; they range from "
        f"{truth.floor_range[0]:.3f} to {truth.floor_range[1]:.3f}, standard deviation "
        f"{truth.floor_sd:.3f}, so the findings take SW2 differences below 2√2 of it, "
        f"{resolution(truth):.3f}, as unresolved; between two exact samples of {per} per "
        f"class: {truth.floor_pair:.3f}), spread 1, low {truth.low_truth:.3f}.",
        "",
        f"Noise levels: σ = √((1 − ᾱ)/ᾱ) of `linear_schedule(1000)` runs from 0.01 at t = 0 "
        f"to {sig[0]:.0f} at the first DDIM step (t = {run.ts[0]}) and 157 at t = 999, far "
        f"above the data's scale (component means of different classes {min(apart):.1f} to "
        f"{max(apart):.1f} apart, component standard deviations "
        f"{float(np.sqrt(gm.eigvals.min())):.2f} to {float(np.sqrt(gm.eigvals.max())):.2f}): "
        f"most steps of a run are at σ far above the distances between the classes. Of the "
        f"{len(run.ts)} DDIM steps, "
        + ", ".join(f"{v} lie in {k}" for k, v in run.steps_in.items()) + ".",
        "",
    ]


def page(exps: dict, truth: Truth, run: Run, figures: dict) -> str:
    """The markdown page: the run, the data and floors, a section per method (its note,
    table and figure), the summary and the findings."""
    lines = _intro(run) + _floors(truth, run)
    for key, e in exps.items():
        lines += [f"## {e.title}", "", e.note, "", table(e, run.steps), ""]
        if figures.get(key):
            lines += [f"![{e.title}]({os.path.basename(figures[key])})", ""]
    lines += ["## Summary: the run closest to p(x | y) per method", "",
              f"Least SW2 over each method's grid, and least SW2 among its runs with accuracy "
              f"≥ {ACC_MIN:g} (a comparison at matched accuracy, which is what guidance is "
              f"for).", "", summary(exps, run.steps), ""]
    lines += ["## Findings (numbers from the tables above)", ""]
    lines += [f"- {s}" for s in findings(exps, truth, run.cfgpp_seff, run.r_apg, run.quick)]
    return "\n".join(lines) + "\n"


# ----- the figures -----------------------------------------------------------------------

_GRID: dict = {}
_LIM = (-4.0, 4.0)
_COLOURS = ["tab:blue", "tab:orange", "tab:green"]
_METRIC_NAMES = {"acc": "class accuracy", "sw2": "sliced W2 to p(x | y)",
                 "spread": "spread / truth", "low": "fraction below truth's 1st pct"}


def _density_grid(gm: GaussianMixture, num: int = 80) -> Any:
    """(X, Y, [p(x | y) on the grid per class]), computed once per mixture."""
    if (id(gm), num) not in _GRID:
        g = np.linspace(*_LIM, num)
        X, Y = np.meshgrid(g, g)
        pts = np.stack([X.ravel(), Y.ravel()], axis=1)
        _GRID[id(gm), num] = (X, Y, [np.exp(log_prob_given(gm, pts, c)).reshape(X.shape)
                                for c in range(gm.num_classes)])
    return _GRID[id(gm), num]


def _picks(e: Experiment) -> list[tuple[str, float]]:
    """Three (variant, parameter) runs to show: the largest parameter of each variant first,
    then the others."""
    picks = [(label, grid[-1][0]) for label, grid in e.variants.items()]
    for label, grid in e.variants.items():
        picks += [(label, p) for p, _ in grid[:-1]]
    return list(dict.fromkeys(picks))[:3]


def _panel(ax: Any, grid: Any, x: np.ndarray, y: np.ndarray, title: str) -> None:
    """Samples (at most 400 per class) over the contours of the exact p(x | y)."""
    X, Y, Z = grid
    for c in range(len(Z)):
        ax.contour(X, Y, Z[c], levels=[0.02, 0.1, 0.3], colors=_COLOURS[c], linewidths=0.6)
        ax.scatter(*x[y == c][:400].T, s=2, color=_COLOURS[c], alpha=0.6, rasterized=True)
    ax.set(xlim=_LIM, ylim=_LIM, aspect="equal")
    ax.set_title(title, fontsize=9)


def _sample_row(fig: Any, gs: Any, e: Experiment, truth: Truth, y: np.ndarray,
                grid: Any) -> None:
    """The top row: the exact p(x | y), then three runs of the first sampler."""
    C, sampler = truth.gm.num_classes, e.samplers[0]
    n_show = min(len(v) for v in truth.ref.values())
    tx = np.concatenate([truth.ref[c][:400] for c in range(C)])
    ty = np.concatenate([np.full(min(400, n_show), c) for c in range(C)])
    _panel(fig.add_subplot(gs[0, 0]), grid, tx, ty, "exact p(x | y) (contours: the truth)")
    for j, (label, p) in enumerate(_picks(e)):
        r = row_of(e, label, p, sampler)
        _panel(fig.add_subplot(gs[0, j + 1]), grid, np.asarray(r["x"]), y,
               f"{label}, {e.param} = {p:g} ({sampler.upper()})\nacc {r['acc']:.2f}, "
               f"SW2 {r['sw2']:.2f}, spread {r['spread']:.2f}")


def _metric_row(fig: Any, gs: Any, e: Experiment, truth: Truth) -> None:
    """The bottom row: each metric against the parameter, a line per variant and sampler,
    the truth's value dotted."""
    ref_line = {"acc": truth.bayes_accuracy, "sw2": truth.floor, "spread": 1.0,
                "low": truth.low_truth}
    for j, key in enumerate(("acc", "sw2", "spread", "low")):
        ax = fig.add_subplot(gs[1, j])
        for vi, label in enumerate(e.variants):
            for smp, ls in (("ddim", "-"), ("ddpm", "--")):
                rows = [r for r in e.rows if r["variant"] == label and r["sampler"] == smp]
                if rows:
                    ax.plot([r["param"] for r in rows], [r[key] for r in rows], ls, marker="o",
                            ms=3, color=f"C{vi}", label=f"{label} {smp.upper()}")
        ax.axhline(ref_line[key], color="k", lw=0.6, ls=":")
        ax.set_xlabel(e.param)
        ax.set_title(_METRIC_NAMES[key] + " (dotted: truth)", fontsize=9)
        if j == 0:
            ax.legend(fontsize=6)


def figure(e: Experiment, truth: Truth, y: np.ndarray, path: str,
           small: bool = False) -> str | None:
    """Top row: the exact p(x | y) and three runs (the first sampler; ``y`` their target
    labels); bottom row: the four metrics against the parameter, one line per variant and
    sampler. ``small``: a rough figure for quick mode (a quarter of the size, no layout
    pass). None when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return None
    fig = plt.figure(figsize=(7, 3.5) if small else (14, 7))
    gs = fig.add_gridspec(2, 4)
    _sample_row(fig, gs, e, truth, y, _density_grid(truth.gm, 40 if small else 80))
    _metric_row(fig, gs, e, truth)
    fig.suptitle(f"{e.title}: the exact oracle, same x_T for every run", fontsize=11)
    if small:  # quick mode: no layout pass, low resolution (the text layout is the cost)
        fig.savefig(path, dpi=50)
        plt.close(fig)
        return path
    return save(fig, path)
