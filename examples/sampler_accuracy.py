"""Sampler accuracy on the exact oracle: Euler, Heun, Euler-ancestral, DPM-Solver++(2M) on
Karras σ's and flow Euler on flow times, measured against the exact data and against the
converged ODE, unguided and under CFG.

The model is the exact denoiser (σ-space solvers, ``exact_model(gm, "ve", "sample")``) or
the exact flow velocity (``exact_model(gm, "flow", "velocity")``) of the 2-D, 3-class study
mixture of examples/guidance_methods.py, so the model error is zero and what moves a sample
away from its target is the solver's discretisation. Every sampler starts from the same z:
x = 80·z at σ = 80 on ``karras_sigmas(n, 0.002, 80)`` (final σ = 0), x = z at t = 1 on
``flow_times(n, shift=1)`` and ``flow_times(n, shift=3)``.

Measured, for NFE (denoiser evaluations; two model calls each under CFG) on a grid:

- SW2 of the run to the exact data (unguided) and to the converged ODE (Heun from
  independent noise, unguided and at CFG s = 3, per target class: the guided law has no
  closed form), each with its noise floor (the SW2 of a run-sized sample of the reference's
  own law) and the NFE from which SW2 stays within 0.01 of the floor;
- the mean per-sample error of the deterministic solvers against the exact PF-ODE solution
  of one Gaussian (``gaussian_ode_solution``) and against a fine reference solve of the
  mixture, and the empirical order (the log-log slope).

    python examples/sampler_accuracy.py [--quick] [--out DIR | --write-docs]

Writes samplers_accuracy.md, samplers_sw2.png and samplers_order.png to DIR (default: the
current directory); ``--write-docs`` writes them to docs/ (a full run: it refuses
``--quick``). The measurements are in ``_sampler_study.py``.

References
----------
EDM: Karras et al., arXiv:2206.00364v2, Eq. 5 and Algorithm 1. DPM-Solver++: Lu et al.,
arXiv:2211.01095v2, Algorithm 2. Flow matching: Lipman et al., arXiv:2210.02747v2; the
shift: Esser et al., arXiv:2403.03206v1, Eq. 23. CFG: Ho & Salimans, arXiv:2207.12598v1.
Sliced Wasserstein: Bonneel et al., J. Math. Imaging Vis. 51 (2015), §2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import numpy as np

from _output import machine, parse_args
from _sampler_study import (DETERMINISTIC, FULL, NAMES, QUICK, SAMPLERS, SCALE, Config,
                            converged_reference, exact_reference, flow_reference, gaussian,
                            gaussian_exact, labels, mean_error, nfe_of,
                            nfe_to_threshold, order, run, start_noise, steps_for, sw2)
from _study_metrics import study_mixture
from refdiff._plotting import pyplot, save

MARGIN = 0.01      # "converged": SW2 ≤ floor + MARGIN
TARGETS = {"exact": "unguided, to the exact data", "conv": "unguided, to the converged ODE",
           "guided": f"CFG s = {SCALE:g}, to the converged guided ODE"}


# ----- the measurements ---------------------------------------------------------------------

def sweep(gm, cfg: Config, refs: dict, log: Callable[[str], None]) -> dict:
    """SW2 per (target, sampler) as [(NFE, SW2)], and the first n_err samples of every
    unguided deterministic run (for the errors)."""
    z = start_noise(cfg.n)
    out = {"sw2": {t: {s: [] for s in SAMPLERS} for t in TARGETS}, "x": {}}
    for guided in (False, True):
        y = labels(cfg.n, guided)
        for s in SAMPLERS:
            for g in cfg.grid:
                steps = steps_for(s, g)
                x, calls = run(gm, s, steps, z, y)
                nfe = nfe_of(s, steps)
                if guided:
                    out["sw2"]["guided"][s].append((nfe, sw2(refs["guided"], x, y)))
                else:
                    out["sw2"]["exact"][s].append((nfe, sw2(refs["exact"], x)))
                    out["sw2"]["conv"][s].append((nfe, sw2(refs["conv"], x)))
                    out["x"][s, g] = x[:cfg.n_err]
                log(f"{'s=3' if guided else 'unguided':>8} {s:>16} NFE {nfe:>3} "
                    f"({calls} model calls): " + ", ".join(
                        f"{t} {out['sw2'][t][s][-1][1]:.4f}" for t in TARGETS
                        if (t == "guided") == guided))
    return out


def errors(gm, cfg: Config, xs: dict) -> tuple[dict, dict]:
    """Mean per-sample errors {case: {sampler: [(grid NFE, NFE, error)]}} for the Gaussian
    (exact solution) and the mixture (Heun ``ref_steps`` / flow Richardson reference), and
    the references' own checks."""
    z = start_noise(cfg.n_err)
    g1 = gaussian()
    ve_ref = run(gm, "heun", cfg.ref_steps, z)[0]
    fl_ref = flow_reference(gm, z, cfg.flow_ref_steps)
    err = {"gaussian": {}, "mixture": {}}
    for s in DETERMINISTIC:
        flow = s.startswith("flow")
        exact = gaussian_exact(g1, z, flow)
        err["gaussian"][s] = [(g, nfe_of(s, steps_for(s, g)), mean_error(
            run(g1, s, steps_for(s, g), z)[0], exact)) for g in cfg.grid]
        err["mixture"][s] = [(g, nfe_of(s, steps_for(s, g)), mean_error(
            xs[s, g], fl_ref if flow else ve_ref)) for g in cfg.grid]
    y = labels(cfg.n_err, True)
    guided_conv = run(gm, "heun", cfg.conv_steps, z, y)[0]
    checks = {"conv_err": mean_error(run(gm, "heun", cfg.conv_steps, z)[0], ve_ref),
              "conv_guided_diff": mean_error(guided_conv,
                                             run(gm, "heun", 2 * cfg.conv_steps, z, y)[0]),
              "flow_vs_ve": mean_error(fl_ref, ve_ref)}
    return err, checks


# ----- the page -----------------------------------------------------------------------------

def _e(v: float) -> str:
    return f"{v:.3e}"


def _sw2_table(points: dict, grid: tuple) -> list[str]:
    lines = ["| sampler | " + " | ".join(str(g) for g in grid) + " |",
             "|---|" + "---|" * len(grid)]
    for s in SAMPLERS:
        lines.append(f"| {NAMES[s]} | " + " | ".join(f"{v:.4f}" for _, v in points[s]) + " |")
    return lines


def _err_table(err: dict, grid: tuple) -> list[str]:
    lines = ["| sampler | " + " | ".join(str(g) for g in grid) + " |",
             "|---|" + "---|" * len(grid)]
    for s in DETERMINISTIC:
        lines.append(f"| {NAMES[s]} | " + " | ".join(_e(e) for _, _, e in err[s]) + " |")
    return lines


def summary(res: dict, refs: dict, cfg: Config) -> list[str]:
    """The key numbers: NFE to floor + MARGIN per target, and the orders."""
    head = " | ".join(TARGETS.values())
    lines = [f"| sampler | {head} | order, Gaussian | order, mixture |",
             "|---|---|---|---|---|---|"]
    for s in SAMPLERS:
        cells = []
        for t in TARGETS:
            hit = nfe_to_threshold(res["sw2"][t][s], refs[t].floor + MARGIN)
            cells.append(str(hit) if hit else f"> {res['sw2'][t][s][-1][0]}")
        for case in ("gaussian", "mixture"):
            cells.append(f"{order(res['err'][case][s], cfg.fit_from):.2f}"
                         if s in DETERMINISTIC else "(stochastic)")
        lines.append(f"| {NAMES[s]} | " + " | ".join(cells) + " |")
    return lines


def _floors(refs: dict, cfg: Config) -> list[str]:
    lines = ["| reference | what | floor | sd | floor + 0.01 |", "|---|---|---|---|---|"]
    what = {"exact": f"{cfg.n_exact} exact draws; floor: {cfg.fresh} fresh exact sets of "
                     f"{cfg.n}",
            "conv": f"Heun {cfg.conv_steps} steps (NFE {nfe_of('heun', cfg.conv_steps)}), "
                    f"{cfg.n_pool} samples; floor: {cfg.fresh} partitions",
            "guided": f"the same at CFG s = {SCALE:g}, y = i mod 3; floor: {cfg.fresh} "
                      f"partitions, per class"}
    for t, ref in refs.items():
        lines.append(f"| {ref.name} | {what[t]} | {ref.floor:.4f} | {ref.floor_sd:.4f} | "
                     f"{ref.floor + MARGIN:.4f} |")
    return lines


def _intro(cfg: Config, meta: dict) -> list[str]:
    heun_nfe = ", ".join(str(nfe_of("heun", steps_for("heun", g))) for g in cfg.grid)
    return [
        "# Sampler accuracy on the exact oracle", "",
        f"This page is the output of `{meta['command']}`"
        f"{' (quick mode: not the study)' if meta['quick'] else ''}, run on {meta['machine']},"
        f" in {meta['wall']:.1f} s of wall time measured by the script.", "",
        "The model is exact (the Gaussian-mixture oracle of refdiff: the denoiser "
        "`exact_model(gm, \"ve\", \"sample\")` for the σ-space solvers, the velocity "
        "`exact_model(gm, \"flow\", \"velocity\")` for flow Euler), so every number below "
        "is the solver's discretisation error. The data is the 2-D, 5-component, 3-class "
        "mixture of [the guidance study](guidance_methods.md). Every run starts from the "
        f"same z ({cfg.n} samples): x = 80·z at σ = 80 on `karras_sigmas(n, 0.002, 80)` "
        "(final σ = 0) for Euler, Heun, Euler-ancestral (η = 1, noise seed fixed) and "
        "DPM++(2M); x = z at t = 1 on `flow_times(n, shift=1)` and `flow_times(n, shift=3)` "
        "for flow Euler.", "",
        "**NFE** is the number of denoiser (or velocity) evaluations: n for n steps, and "
        "2n − 1 for Heun (no correction on the last step, to σ = 0), so Heun's grid column "
        f"NFE g holds n = ⌊(g + 1)/2⌋ steps, NFE {heun_nfe}. Under CFG every evaluation is "
        "two model calls (unconditional and conditional branch): the CFG columns cost twice "
        "the model calls of their NFE. The script counts the calls of every run and checks "
        "them against these formulas.", ""]


def _floor_section(res: dict, refs: dict, cfg: Config) -> list[str]:
    return [
        "## References and noise floors", "",
        "SW2: the sliced Wasserstein-2 distance (200 fixed directions, exact 1-D W2 of "
        "sorted projections), unguided on the whole sample, guided per target class "
        "(y = i mod 3) and averaged. A sample of the reference's own law scores the floor, "
        "not 0; differences below it are unresolved.", ""] + _floors(refs, cfg) + ["",
        f"Between two independent exact sets of {cfg.n}: {refs['exact'].pair:.4f}. The sd "
        "is that of one SW2 value of an independent sample (the mean's own uncertainty is "
        f"sd/√{cfg.fresh}). Every run here starts from the same z, so differences between "
        "samplers, and between the NFE of one sampler, are paired and far better resolved "
        "than that sd; the per-sample errors below measure them without sampling noise.",
        "", _reference_checks(res["checks"], refs, cfg), ""]


def _error_section(res: dict, cfg: Config, meta: dict) -> list[str]:
    mu = "({:g}, {:g})".format(*gaussian().means[0])
    L = ["## Per-sample error of the deterministic solvers", "",
         f"The mean over the first {cfg.n_err} samples of ‖x − x_ref‖ at the end of the run. "
         f"Gaussian: one component of the mixture (mean {mu}), x_ref its exact PF-ODE "
         "solution (`gaussian_ode_solution` from 80·z at σ = 80; for the flow from t = 1 its "
         f"limit μ + Σ^½ z). Mixture: x_ref = Heun {cfg.ref_steps} steps (σ-space), or "
         f"2·F({cfg.flow_ref_steps}) − F({cfg.flow_ref_steps // 2}) of flow Euler "
         "(Richardson: the first-order term cancels).", ""]
    for case in ("gaussian", "mixture"):
        L += [f"### {case.capitalize()}", ""] + _err_table(res["err"][case], cfg.grid) + [""]
    if meta.get("order_png"):
        L += [f"![Error against NFE]({os.path.basename(meta['order_png'])})", ""]
    return L


def page(res: dict, refs: dict, cfg: Config, meta: dict) -> str:
    """The markdown page: the run, the references and floors, the summary, the SW2 and
    error tables, the findings."""
    L = _intro(cfg, meta) + _floor_section(res, refs, cfg)
    L += [f"## Summary: NFE to reach SW2 ≤ floor + {MARGIN:g}, and the orders", "",
          "The smallest NFE of the grid from which SW2 stays at or below the floor + "
          f"{MARGIN:g} at every larger grid point. Orders: −slope of the least-squares line "
          "through log(mean per-sample error) against log NFE, on the grid points from NFE "
          f"{cfg.fit_from} on (the tables below).", ""] + summary(res, refs, cfg) + [""]
    if meta.get("sw2_png"):
        L += [f"![SW2 against NFE]({os.path.basename(meta['sw2_png'])})", ""]
    for t, title in TARGETS.items():
        L += [f"## SW2, {title}", "", "Columns: the grid NFE.", ""]
        L += _sw2_table(res["sw2"][t], cfg.grid) + [""]
    L += _error_section(res, cfg, meta)
    L += ["## Findings (from the tables above)", ""] + [f"- {f}" for f in findings(res, refs)]
    return "\n".join(L) + "\n"


def _reference_checks(c: dict, refs: dict, cfg: Config) -> str:
    """The references' own errors and the start's mismatch, judged against the floors."""
    low = min(r.floor for r in refs.values())
    small = max(c["conv_err"], 4 / 3 * c["conv_guided_diff"]) < 0.1 * low
    ex = refs["exact"]
    unresolved = c["conv_vs_exact"] - ex.floor < max(2 * np.sqrt(2) * ex.floor_sd, MARGIN)
    return (f"Checks of the references: Heun {cfg.conv_steps} steps is {_e(c['conv_err'])} "
            f"per sample from the fine mixture solve (unguided), and guided it moves "
            f"{_e(c['conv_guided_diff'])} per sample when its steps are doubled (its error, "
            f"for order 2, ≈ 4/3 of that): "
            + ("below a tenth of the smallest floor" if small else "NOT below a tenth of the "
               "smallest floor") + f" ({low:.4f}). The converged ODE starts at σ = 80 from "
            f"80·z, not from the exact p_80 = data ∗ N(0, 80²); flow Euler starts at t = 1 "
            f"exactly. The two fine solutions differ by {_e(c['flow_vs_ve'])} per sample, and "
            f"the unguided converged ODE's first {cfg.n} samples are at SW2 "
            f"{c['conv_vs_exact']:.4f} from the exact data (floor {ex.floor:.4f}): the start's "
            + ("mismatch is not resolved by SW2, so one converged reference serves both kinds "
               "of sampler (CFG is affine, so the guided flow ODE and the guided VE ODE are "
               "the same ODE)." if unresolved else "mismatch is resolved by SW2: the flow "
               "samplers' distance to the converged ODE includes it."))


def findings(res: dict, refs: dict) -> list[str]:
    """Sentences written from the measured numbers."""
    out = []
    for t in ("exact", "guided"):
        ref, pts = refs[t], res["sw2"][t]
        best = {s: pts[s][-1][1] for s in SAMPLERS}
        res_sd = 2 * np.sqrt(2) * ref.floor_sd
        above = [NAMES[s] for s in SAMPLERS if best[s] - ref.floor > max(res_sd, MARGIN)]
        out.append(f"{TARGETS[t][0].upper() + TARGETS[t][1:]}: at the largest NFE the "
                   "samplers are at SW2 " + ", ".join(f"{best[s]:.4f} ({NAMES[s]})"
                                                     for s in SAMPLERS)
                   + f"; floor {ref.floor:.4f}, 2√2 sd = {res_sd:.4f}. Above the floor by more "
                   f"than max(2√2 sd, {MARGIN:g}): "
                   + (", ".join(above) if above else "none") + ".")
    ea = res["sw2"]["guided"]["euler_ancestral"][-1][1] - refs["guided"].floor
    if ea > max(2 * np.sqrt(2) * refs["guided"].floor_sd, MARGIN):
        out.append(f"Euler-ancestral under CFG stays {ea:.4f} above the converged guided ODE's "
                   "floor at the largest NFE (unguided: "
                   f"{res['sw2']['exact']['euler_ancestral'][-1][1] - refs['exact'].floor:.4f} "
                   "above the exact data's): the guided score is that of "
                   "p_σ(x|y)^s·p_σ(x)^(1−s), not of one law noised along σ, so the SDE and the "
                   "ODE it drives need not end at the same law.")
    heun, euler = res["sw2"]["exact"]["heun"][0], res["sw2"]["exact"]["euler"][0]
    out.append(f"Heun at NFE {heun[0]} (n = {steps_for('heun', heun[0])}: σ = 80 → 0.002 → 0) "
               f"is at SW2 {heun[1]:.4f} to the exact data, Euler at NFE {euler[0]} at "
               f"{euler[1]:.4f}: "
               "its correction takes the slope at σ = 0.002 of the Euler point, which is far "
               "from the data there.")
    return out


# ----- the figures --------------------------------------------------------------------------

def figures(res: dict, refs: dict, cfg: Config, out_dir, quick: bool) -> dict:
    """samplers_sw2.png (SW2 against NFE, a panel per target) and samplers_order.png (the
    per-sample errors with their slopes); {} when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return {}
    paths = {"sw2_png": str(out_dir / "samplers_sw2.png"),
             "order_png": str(out_dir / "samplers_order.png")}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    for ax, (t, title) in zip(axes, TARGETS.items()):
        for i, s in enumerate(SAMPLERS):
            nfe, v = zip(*res["sw2"][t][s])
            ax.loglog(nfe, v, marker="o", ms=3, color=f"C{i}", label=NAMES[s])
        ax.axhline(refs[t].floor, color="k", lw=0.8, ls="--", label="noise floor")
        ax.axhline(refs[t].floor + MARGIN, color="k", lw=0.6, ls=":", label="floor + 0.01")
        ax.set(xlabel="NFE (denoiser evaluations)", title=title)
    axes[0].set_ylabel("SW2")
    axes[0].legend(fontsize=7)
    _finish(plt, fig, paths["sw2_png"], quick)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, case in zip(axes, ("gaussian", "mixture")):
        for i, s in enumerate(DETERMINISTIC):
            _, nfe, e = zip(*res["err"][case][s])
            ax.loglog(nfe, e, marker="o", ms=3, color=f"C{SAMPLERS.index(s)}",
                      label=f"{NAMES[s]}: order {order(res['err'][case][s], cfg.fit_from):.2f}")
        ax.axvspan(cfg.fit_from - 1, max(cfg.grid), color="0.92", zorder=0)
        ax.set(xlabel=f"NFE (shaded: the orders' fit, grid NFE ≥ {cfg.fit_from})",
               ylabel="mean ‖x − x_ref‖",
               title="one Gaussian, exact solution" if case == "gaussian"
               else f"mixture, reference Heun {cfg.ref_steps} / flow Richardson")
        ax.legend(fontsize=7)
    _finish(plt, fig, paths["order_png"], quick)
    return paths


def _finish(plt, fig, path: str, quick: bool) -> None:
    if quick:  # no layout pass, plain tick labels, low resolution: the text is the cost
        from matplotlib.ticker import LogFormatter, NullFormatter

        for axis in [a for ax in fig.axes for a in (ax.xaxis, ax.yaxis)]:
            axis.set_major_formatter(LogFormatter())
            axis.set_minor_formatter(NullFormatter())
        fig.savefig(path, dpi=40)
        plt.close(fig)
    else:
        save(fig, path)


# ----- main ---------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and grid (tests)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", "--out-dir", dest="out_dir", default=".", metavar="DIR",
                       help="where samplers_accuracy.md and samplers_*.png go (default: the "
                            "current directory)")
    where.add_argument("--write-docs", action="store_true",
                       help="write them to docs/ (a full run: refuses --quick)")
    return p


def measure(cfg: Config, log: Callable[[str], None]) -> tuple[dict, dict]:
    """(results, references) of one study."""
    gm = study_mixture()
    refs = {"exact": exact_reference(gm, cfg)}
    refs["conv"], pool = converged_reference(gm, cfg, guided=False)
    refs["guided"], _ = converged_reference(gm, cfg, guided=True)
    for r in refs.values():
        log(f"{r.name}: floor {r.floor:.4f} (sd {r.floor_sd:.4f})")
    res = sweep(gm, cfg, refs, log)
    res["err"], res["checks"] = errors(gm, cfg, res.pop("x"))
    res["checks"]["conv_vs_exact"] = sw2(refs["exact"], pool[:cfg.n])
    return res, refs


def main(argv=None) -> int:
    t_start = time.perf_counter()
    args = parse_args(_parser(), argv)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    cfg = QUICK if args.quick else FULL
    res, refs = measure(cfg, print)
    meta = {"command": f"python examples/sampler_accuracy.py {argv_text}".strip(),
            "machine": machine(), "quick": args.quick}
    meta.update(figures(res, refs, cfg, args.out_dir, args.quick))
    meta["wall"] = time.perf_counter() - t_start
    path = args.out_dir / "samplers_accuracy.md"
    path.write_text(page(res, refs, cfg, meta), encoding="utf-8")
    print("\n".join(summary(res, refs, cfg)))
    print(f"report: {path}")
    for k in ("sw2_png", "order_png"):
        print(f"figure: {meta.get(k, 'skipped (matplotlib missing)')}")
    print(f"wall time {meta['wall']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
