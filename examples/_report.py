"""Markdown tables of the digits examples' recorded results (the JSON files they write).

docs/training.md carries these tables verbatim; a test regenerates them from docs/*.json and
checks that they are there, so the note cannot drift from the recorded runs.

    python examples/_report.py [--dir docs]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

SCRIPTS = {"training_cfg_digits": "cfg_digits.py",
           "training_classifier_guidance": "classifier_guidance_digits.py",
           "training_guidance_distillation": "guidance_distillation_digits.py",
           "training_negative_condition": "negative_condition_digits.py"}
NAMES = tuple(SCRIPTS)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _f(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}f}"


def cfg_table(r: dict) -> str:
    rows = [[f"{s:g}", _f(r["ddim"][str(s)]["consistency"]), _f(r["ddpm"][str(s)]["consistency"]),
             _f(r["ddim"][str(s)]["spread"]), _f(r["ddpm"][str(s)]["spread"])] for s in r["scales"]]
    return _table(["scale s", "consistency DDIM 50", "consistency DDPM 100", "spread DDIM",
                   "spread DDPM"], rows)


def cg_table(r: dict) -> str:
    rows = []
    for s in r["scales"]:
        a, b = r["ddim"][str(s)], r["ddpm"][str(s)]
        rows.append([f"{s:g}", _f(a["cg_consistency"]), _f(a["cfg_consistency"]),
                     _f(b["cg_consistency"]), _f(b["cfg_consistency"]), _f(a["cg_spread"]),
                     _f(a["cfg_spread"])])
    by_t = r["noisy_classifier_accuracy_by_t"]
    acc = _table(["t"] + list(by_t), [["noisy classifier test accuracy"] +
                                       [_f(v) for v in by_t.values()]])
    return _table(["scale s", "CG DDIM", "CFG DDIM", "CG DDPM", "CFG DDPM", "CG spread DDIM",
                   "CFG spread DDIM"], rows) + "\n\n" + acc


def distillation_table(r: dict) -> str:
    rows = [[f"{s:g}", _f(v["teacher_consistency"]), _f(v["student_consistency"]), _f(v["gap"]),
             _f(v["paired_rms"])] for s, v in ((s, r["ddim"][str(s)]) for s in r["scales"])]
    t = r["timing"]
    timing = _table(["", "teacher (CFG)", "student", "speed-up"], [
        ["network evaluations", str(t["teacher_nfe"]), str(t["student_nfe"]),
         f"{t['teacher_nfe'] / t['student_nfe']:g}x"],
        ["wall time, s (median of " + str(t["repeats"]) + ")", _f(t["teacher_seconds"]),
         _f(t["student_seconds"]), f"{t['speedup']:g}x"]])
    return _table(["scale s", "teacher", "student", "gap", "paired RMS"], rows) + "\n\n" + timing


def negative_table(r: dict) -> str:
    rows = [[f"{s:g}", _f(r["ddim"][str(s)]["rate_of_avoided_class"]),
             _f(r["ddim"][str(s)]["max_rate_over_classes"])] for s in r["scales"]]
    return _table(["scale s", "rate of the avoided class (mean over k)", "worst k"], rows)


def run_times(results: dict[str, dict]) -> str:
    rows = []
    for name, r in results.items():
        models = {k: v for k, v in r.items() if isinstance(v, dict) and "train_seconds" in v}
        trained = ", ".join(f"{k} {v['train_seconds']:g} s" for k, v in models.items())
        rows.append([f"`examples/{SCRIPTS[name]}`", trained or "(cached teacher)",
                     f"{r['total_seconds']:g} s"])
    return _table(["example", "training (included)", "end to end"], rows)


TABLES = {"training_cfg_digits": cfg_table, "training_classifier_guidance": cg_table,
          "training_guidance_distillation": distillation_table,
          "training_negative_condition": negative_table}


def load(folder: pathlib.Path) -> dict[str, dict]:
    return {n: json.loads((folder / f"{n}.json").read_text()) for n in NAMES}


def tables(folder: pathlib.Path) -> list[str]:
    """Every table docs/training.md must contain, from the JSON files in ``folder``."""
    results = load(folder)
    return [run_times(results)] + [TABLES[n](results[n]) for n in NAMES]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=str(pathlib.Path(__file__).resolve().parents[1] / "docs"))
    args = p.parse_args(argv)
    print("\n\n".join(tables(pathlib.Path(args.dir))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
