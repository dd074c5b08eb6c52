"""The findings of examples/guidance_methods.py: one paragraph per method, each sentence
written from the measured numbers, each verdict a comparison of them (an SW2 difference
counts only beyond :func:`_study_metrics.resolution`).

A row is one run: ``{"variant", "param", "sampler", "x", "acc", "sw2", "spread", "low"}``;
an :class:`Experiment` holds a method's rows; ``exps`` maps an experiment's key to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from _study_metrics import K_GUIDES, K_MAIN, Truth, first_order_autoguidance, resolution

ACC_MIN = 0.995  # "as accurate as guidance makes it": the matched-accuracy comparisons
SAMPLERS = ("ddim", "ddpm")


@dataclass
class Experiment:
    """One method: variants (label → list of (parameter, Guidance)), the samplers it runs
    with, the model, the parameter's name and the page's note on the method; ``rows`` are
    its runs, filled by the run loop."""

    key: str
    title: str
    param: str
    note: str
    variants: dict
    samplers: tuple = SAMPLERS
    model: Any = None
    rows: list = field(default_factory=list)


# ----- the runs of a method ------------------------------------------------------------

def row_of(e: Experiment, variant: str, p: float, sampler: str) -> dict | None:
    for r in e.rows:
        if r["variant"] == variant and r["param"] == p and r["sampler"] == sampler:
            return r
    return None


def method_rows(exps: dict) -> list[tuple[str, list]]:
    """The rows of each method (the imperfect-model experiment split into CFG and
    autoguidance; its unguided run is the reference, not a method)."""
    im = exps["autoguidance_imperfect"].rows
    return [("CFG", exps["cfg"].rows), ("guidance interval", exps["interval"].rows),
            ("linear/cosine schedule", exps["schedule"].rows), ("APG", exps["apg"].rows),
            ("CFG++", exps["cfgpp"].rows),
            ("autoguidance, exact model", exps["autoguidance"].rows),
            ("imperfect model alone", [r for r in im if r["variant"].startswith("unguided")]),
            ("imperfect model: CFG", [r for r in im if r["variant"] == "CFG"]),
            ("imperfect model: autoguidance", [r for r in im if r["variant"].startswith("auto")])]


def closest(rows: list, sampler: str, acc_min: float = 0.0) -> dict | None:
    """The run of ``rows`` closest to p(x | y) (least SW2) among those with acc ≥ acc_min."""
    ok = [r for r in rows if r["sampler"] == sampler and r["acc"] >= acc_min]
    return min(ok, key=lambda r: r["sw2"]) if ok else None


# ----- the findings: helpers -------------------------------------------------------------

def _m(e: Experiment, variant: str, p: float, sampler: str, key: str) -> str:
    return f"{row_of(e, variant, p, sampler)[key]:.3f}"


def _desc(r: dict) -> str:
    return (f"{r['variant']} at {r['param']:g}: acc {r['acc']:.3f}, SW2 {r['sw2']:.3f}, "
            f"spread {r['spread']:.3f}, low {r['low']:.3f}")


def _closer(exps: dict, name: str, other: str, sampler: str, res: float) -> bool | None:
    """Whether ``name``'s closest run at accuracy ≥ ACC_MIN has a smaller SW2 than
    ``other``'s (None when one of them has no such run, or the difference is within the SW2
    resolution)."""
    groups = dict(method_rows(exps))
    a, b = closest(groups[name], sampler, ACC_MIN), closest(groups[other], sampler, ACC_MIN)
    if a is None or b is None or abs(a["sw2"] - b["sw2"]) <= res:
        return None
    return a["sw2"] < b["sw2"]


def _cmp_best(exps: dict, name: str, other: str, sampler: str, label: str = "") -> str:
    """"x against y for <label or other>" at accuracy ≥ ACC_MIN (or a note that none reached
    it)."""
    groups = dict(method_rows(exps))
    a, b = closest(groups[name], sampler, ACC_MIN), closest(groups[other], sampler, ACC_MIN)
    if a is None or b is None:
        return f"(no run of {name if a is None else other} reaches acc {ACC_MIN:g})"
    return (f"{a['sw2']:.3f} ({a['variant']} at {a['param']:g}) against {b['sw2']:.3f} for "
            f"{label or other} (s = {b['param']:g})")


def _cfg_ends(exps: dict) -> tuple[float, float, dict, dict]:
    """CFG's smallest and largest s, and its runs there per sampler (the smallest, s = 1, is
    the unguided conditional sampler)."""
    cfg = exps["cfg"]
    s_all = [p for p, _ in cfg.variants["CFG"]]
    s_lo, s_hi = min(s_all), max(s_all)
    return (s_lo, s_hi, {smp: row_of(cfg, "CFG", s_lo, smp) for smp in SAMPLERS},
            {smp: row_of(cfg, "CFG", s_hi, smp) for smp in SAMPLERS})


def _s_cmp(exps: dict) -> float:
    """The scale at which the interval and schedule paragraphs compare: the largest of the
    SDXL interval's grid."""
    return max(p for p, _ in exps["interval"].variants["interval (0.28, 5.42]"])


# ----- the findings: one paragraph per method --------------------------------------------

def _discretisation(exps: dict, truth: Truth) -> str:
    s_lo, _, base, _ = _cfg_ends(exps)
    narrows = base["ddim"]["spread"] < base["ddpm"]["spread"]
    within = base["ddpm"]["sw2"] <= truth.floor_range[1]
    return (
        f"**Discretisation.** Unguided (CFG s = {s_lo:g}, the conditional sampler of the exact "
        f"model): DDIM {_desc(base['ddim'])}; DDPM {_desc(base['ddpm'])}. The truth scores acc "
        f"{truth.bayes_accuracy:.3f}, SW2 {truth.floor:.3f} (fresh samples: "
        f"{truth.floor_range[0]:.3f} to {truth.floor_range[1]:.3f}), spread 1, low "
        f"{truth.low_truth:.3f}: DDIM's ODE " + ("narrows" if narrows else "widens")
        + " the classes relative to DDPM, and DDPM " + (
            "is within the noise floor's range" if within
            else "is above the noise floor's range") + ".")


def _cfg_tradeoff(exps: dict, truth: Truth) -> str:
    s_lo, s_hi, base, top = _cfg_ends(exps)
    pushes = top["ddim"]["low"] > 2 * max(top["ddpm"]["low"], truth.low_truth)
    return (
        f"**CFG trades distance for accuracy.** From s = {s_lo:g} to {s_hi:g} accuracy goes "
        f"{base['ddim']['acc']:.3f} → {top['ddim']['acc']:.3f} (DDIM) and "
        f"{base['ddpm']['acc']:.3f} → {top['ddpm']['acc']:.3f} (DDPM) while SW2 goes "
        f"{base['ddim']['sw2']:.3f} → {top['ddim']['sw2']:.3f} and {base['ddpm']['sw2']:.3f} → "
        f"{top['ddpm']['sw2']:.3f} and the spread {base['ddim']['spread']:.3f} → "
        f"{top['ddim']['spread']:.3f} and {base['ddpm']['spread']:.3f} → "
        f"{top['ddpm']['spread']:.3f}. The low-density fraction at s = {s_hi:g} is "
        f"{top['ddim']['low']:.3f} with DDIM and {top['ddpm']['low']:.3f} with DDPM: "
        + ("with the deterministic sampler, strong CFG pushes samples past the class into "
           "regions the class rarely visits (plausibly away from the other classes, where "
           "p(y | x) is largest), while DDPM's fresh noise pulls most of them back." if pushes else
           "neither sampler pushes many samples into low density."))


def _interval(exps: dict, truth: Truth) -> str:
    it, s_cmp = exps["interval"], _s_cmp(exps)
    _, _, base, _ = _cfg_ends(exps)
    parts = [f"{label}: acc {_m(it, label, s_cmp, 'ddim', 'acc')}, SW2 "
             f"{_m(it, label, s_cmp, 'ddim', 'sw2')}, low {_m(it, label, s_cmp, 'ddim', 'low')}"
             for label in it.variants]
    mid = row_of(it, "interval (0.28, 5.42]", s_cmp, "ddim")
    full = row_of(exps["cfg"], "CFG", s_cmp, "ddim")
    high = row_of(it, "interval (5.42, inf)", s_cmp, "ddpm")
    keeps = mid["acc"] >= full["acc"] - 0.002
    smaller = mid["sw2"] < full["sw2"] - resolution(truth)
    return (
        f"**Guidance interval (s = {s_cmp:g}).** DDIM, CFG at every step: acc "
        f"{full['acc']:.3f}, SW2 {full['sw2']:.3f}, low {full['low']:.3f}; " + "; ".join(parts)
        + ". The middle interval " + ("keeps" if keeps else "loses")
        + " CFG's accuracy with " + ("a smaller" if smaller else "no resolved smaller")
        + " SW2" + (", as the guidance-interval paper reports" if keeps and smaller else
                    ", unlike the guidance-interval paper's finding")
        + ". Guiding only at σ > 5.42 with DDPM "
        f"gives acc {high['acc']:.3f} against {base['ddpm']['acc']:.3f} unguided: "
        + ("at high noise guidance hardly changes the class a DDPM sample ends in (the "
           "class is decided at lower σ, inside the interval)."
           if abs(high["acc"] - base["ddpm"]["acc"]) < 0.01 else
           "high-noise guidance does change the class a DDPM sample ends in."))


def _schedules(exps: dict) -> str:
    sc, cfg, s_cmp = exps["schedule"], exps["cfg"], _s_cmp(exps)
    full = row_of(cfg, "CFG", s_cmp, "ddim")
    parts = [f"{k}: acc {_m(sc, k, s_cmp, 'ddim', 'acc')}, SW2 {_m(sc, k, s_cmp, 'ddim', 'sw2')}"
             for k in sc.variants]
    better = {smp: sum(row_of(sc, k, p, smp)["sw2"] < row_of(cfg, "CFG", p, smp)["sw2"]
                       for k in sc.variants for p, _ in sc.variants[k]) for smp in sc.samplers}
    each = sum(len(v) for v in sc.variants.values())
    total = each * len(sc.samplers)
    return (f"**Schedules (mean s = {s_cmp:g}, DDIM).** " + "; ".join(parts) + f"; constant "
            f"CFG: acc {full['acc']:.3f}, SW2 {full['sw2']:.3f}. Over the grid, "
            + " and ".join(f"{better[smp]} of {each} schedule runs with {smp.upper()}"
                           for smp in sc.samplers)
            + " are closer to p(x | y) than constant CFG at the same mean s"
            + ("; they guide little early and more than s late, where (see the interval rows) "
               "guidance costs less distance." if 2 * sum(better.values()) > total else "."))


def _apg(exps: dict, truth: Truth, r_apg: float) -> str:
    ap, (_, s_hi, _, _) = exps["apg"], _cfg_ends(exps)
    s = s_hi if s_hi in [p for p, _ in ap.variants["APG η=0 β=0"]] else _s_cmp(exps)
    a0, a1 = row_of(ap, "APG η=0 β=0", s, "ddim"), row_of(ap, "APG η=1 β=0", s, "ddim")
    c0 = row_of(exps["cfg"], "CFG", s, "ddim")
    return (
        f"**APG (r = {r_apg:g}, s = {s:g}, DDIM).** CFG: {_desc(c0)}; APG η = 1 "
        f"(norm cap only): {_desc(a1)}; APG η = 0: {_desc(a0)}. Dropping the parallel part "
        + ("removes the push into low density" if a0["low"] < 0.5 * c0["low"] else
           "leaves the low-density fraction where CFG has it" if c0["low"] <= 2 * truth.low_truth
           else "does not remove the low-density samples")
        + (" and lowers SW2" if a0["sw2"] < c0["sw2"] else " but does not lower SW2")
        + ", and the spread is " + ("lower" if a0["spread"] < c0["spread"] else "not lower")
        + " than CFG's" + (": here APG concentrates the classes further rather than keeping "
                           "their diversity" if a0["spread"] < c0["spread"] else "")
        + ". In 2-D the part of Δ orthogonal to D_c is a single direction, and the "
          "split depends on where the origin of x̂_0 lies: the paper's high-dimensional picture "
          "(the parallel part as the one that oversaturates) has little room here.")


def _cfgpp(exps: dict, truth: Truth, seff: tuple) -> str:
    cp = exps["cfgpp"]
    pp = [row_of(cp, "CFG++", lam, "ddim") for lam, _ in cp.variants["CFG++"]]
    closer = _closer(exps, "CFG++", "CFG", "ddim", resolution(truth))
    return (
        "**CFG++ (DDIM).** " + "; ".join(f"λ = {r['param']:g}: acc {r['acc']:.3f}, SW2 "
                                          f"{r['sw2']:.3f}, low {r['low']:.3f}" for r in pp)
        + f". CFG++ at λ is CFG-DDIM with the per-step scale λ·σ_t/(σ_t − σ_prev), "
        f"{seff[0]:.2f}·λ to {seff[1]:.2f}·λ on these {seff[2]} steps, so "
        f"λ = {pp[-1]['param']:g} is strong guidance. At matched accuracy (the summary table) "
        f"the closest CFG++ run has SW2 " + _cmp_best(exps, "CFG++", "CFG", "ddim") + ": "
        + ("on this model CFG++ is a re-parameterised CFG, no closer to p(x | y) than CFG at "
           "the same accuracy." if closer is False else
           "CFG++ comes closer to p(x | y) than CFG at the same accuracy." if closer else
           "at the same accuracy CFG++ and CFG are not resolved apart."))


def _autoguidance_exact(exps: dict, truth: Truth) -> str:
    au, (_, s_hi, base, top) = exps["autoguidance"], _cfg_ends(exps)
    better = [r for r in au.rows if r["sw2"] < base[r["sampler"]]["sw2"] - resolution(truth)]
    low_auto = max(r["low"] for r in au.rows)
    spread_max = max(r["spread"] for r in au.rows)
    return (
        "**Autoguidance of the exact model.** " + (
            f"{len(better)} of {len(au.rows)} autoguided runs are closer to p(x | y) than "
            f"the unguided one" if better else
            f"None of the {len(au.rows)} autoguided runs is closer to p(x | y) than the unguided "
            f"one by more than the SW2 resolution")
        + f" (DDIM {base['ddim']['sw2']:.3f}, DDPM {base['ddpm']['sw2']:.3f})"
        + (": the model is exact, so there is no error for the guide to cancel" if not better
           else "")
        + (f"; w > 1 concentrates the classes (spread at most {spread_max:.3f}), as CFG does"
           if spread_max < 1 else "")
        + f". Its low-density fraction stays at most {low_auto:.3f} (the truth: "
        f"{truth.low_truth:.3f})" + (
            f": autoguidance pulls the tails in instead of pushing samples out as CFG does "
            f"with DDIM (low {top['ddim']['low']:.3f} at s = {s_hi:g})"
            if low_auto <= truth.low_truth < top["ddim"]["low"] else "")
        + ". At matched accuracy its closest run has SW2 "
        + _cmp_best(exps, "autoguidance, exact model", "CFG", "ddim") + " (DDIM) and "
        + _cmp_best(exps, "autoguidance, exact model", "CFG", "ddpm") + " (DDPM).")


_IMPERFECT_VERDICT = {
    "resolved": "Autoguidance brings the imperfect model closer to the true p(x | y) than both "
                "the model alone and CFG, by more than the SW2 resolution {res:.3f}",
    "unresolved": "Autoguidance's SW2 is the lowest, but by less than the SW2 resolution "
                  "{res:.3f}: not resolved at this sample size",
    "no": "Autoguidance does not bring the imperfect model closer to the true p(x | y) than "
          "both the model alone and CFG"}


def _autoguidance_imperfect(exps: dict, truth: Truth, smp: str) -> str:
    u = row_of(exps["autoguidance_imperfect"], "unguided (w = 1)", 1.0, smp)
    groups = dict(method_rows(exps))
    ba = closest(groups["imperfect model: autoguidance"], smp)
    bc = closest(groups["imperfect model: CFG"], smp)
    res = resolution(truth)
    gain = min(u["sw2"], bc["sw2"]) - ba["sw2"]
    verdict = "resolved" if gain > res else "unresolved" if gain > 0 else "no"
    return (
        f"**Autoguidance of an imperfect model ({smp.upper()}), the fair test.** The main "
        f"model alone: acc {u['acc']:.3f}, SW2 {u['sw2']:.3f}, spread {u['spread']:.3f}, "
        f"low {u['low']:.3f}; its closest CFG run: {_desc(bc)}; the closest autoguided "
        f"run: {_desc(ba)}. " + _IMPERFECT_VERDICT[verdict].format(res=res)
        + (f"; the spread moves from {u['spread']:.3f} to {ba['spread']:.3f} and the "
           f"low-density fraction from {u['low']:.3f} to {ba['low']:.3f} (the truth: 1 "
           f"and {truth.low_truth:.3f})" if verdict != "no" else "")
        + (", the paper's claim on the paper's kind of toy." if verdict == "resolved" else ".")
        + _imperfect_matched(exps, truth, smp))


def _imperfect_matched(exps: dict, truth: Truth, smp: str) -> str:
    """The imperfect model's autoguidance against its CFG at accuracy ≥ ACC_MIN."""
    auto, cfg = "imperfect model: autoguidance", "imperfect model: CFG"
    closer = _closer(exps, auto, cfg, smp, resolution(truth))
    return (f" At accuracy ≥ {ACC_MIN:g} (the summary table) its closest autoguided run has "
            f"SW2 " + _cmp_best(exps, auto, cfg, smp, "CFG")
            + {True: ": closer than CFG at matched accuracy too.",
               False: ": at matched accuracy CFG is closer.",
               None: "."}[closer])


def _optimum_w(exps: dict, truth: Truth) -> str:
    """Where the least SW2 of each guide lies on the w grid (and which other w are within
    the SW2 resolution of it), against the first-order w."""
    im, parts, res = exps["autoguidance_imperfect"], [], resolution(truth)
    for k0 in K_GUIDES:
        label = f"auto, guide × {k0:g}"
        if label not in im.variants:
            continue
        ws, found = [1.0] + [w for w, _ in im.variants[label]], []
        for smp in im.samplers:  # w = 1 is the model alone
            rows = sorted([row_of(im, "unguided (w = 1)", 1.0, smp)]
                          + [row_of(im, label, w, smp) for w in ws[1:]], key=lambda r: r["sw2"])
            near = [f"{r['param']:g}" for r in rows[1:] if r["sw2"] - rows[0]["sw2"] <= res]
            found.append(f"w = {rows[0]['param']:g} with {smp.upper()}"
                         + (f" (w = {', '.join(near)} within the SW2 resolution)" if near else "")
                         + (" (the grid's edge: not bracketed)"
                            if rows[0]["param"] in (ws[0], ws[-1]) else ""))
        parts.append(f"guide × {k0:g} (first order: w = "
                     f"{first_order_autoguidance(K_MAIN, k0):.2f}): " + ", ".join(found))
    return ("**Where autoguidance's best w lies (imperfect model).** The least SW2 per guide "
            "and sampler, over w from 1 (the model alone) to " + f"{ws[-1]:g}: " + "; ".join(parts) + ".")


def _noise(truth: Truth) -> str:
    return (
        "**Noise.** Every run starts from the same x_T (and DDPM's same step noise), so the "
        "differences between methods are paired and less noisy than the floor suggests; "
        f"still, fresh exact runs alone range from SW2 {truth.floor_range[0]:.3f} to "
        f"{truth.floor_range[1]:.3f}, and the verdicts above take SW2 differences below the "
        f"resolution {resolution(truth):.3f} as unresolved.")


def findings(exps: dict, truth: Truth, cfgpp_seff: tuple, r_apg: float, quick: bool) -> list[str]:
    """Sentences written from the measured numbers; each number is in a table of the page
    (or in its truth paragraph), and each verdict is a comparison of those numbers."""
    out = [_discretisation(exps, truth), _cfg_tradeoff(exps, truth), _interval(exps, truth),
           _schedules(exps), _apg(exps, truth, r_apg), _cfgpp(exps, truth, cfgpp_seff),
           _autoguidance_exact(exps, truth)]
    out += [_autoguidance_imperfect(exps, truth, smp) for smp in SAMPLERS]
    out.append(_optimum_w(exps, truth))
    out.append(_noise(truth))
    if quick:
        out.append("(Quick mode: few samples and steps; these numbers are not the study's.)")
    return out
