"""Guidance distillation on 8×8 digits: one scale-conditioned student instead of CFG's two calls.

The CFG teacher of examples/cfg_digits.py needs two network evaluations per step, ε(x_t, ∅)
and ε(x_t, y). Stage one of Meng et al. (arXiv:2210.03142v3, §4.1) distils it into a
student ε_η(x_t, t, y, s) that takes the guidance scale as an input: at each training step
s ~ U[1, 6] per sample (``refdiff.sample_guidance_scales``; the paper's w = s − 1), and the
student regresses onto the teacher's guided output ``refdiff.guidance_distillation_target``
= ε_u + s·(ε_c − ε_u). The scale enters through ``refdiff.guidance_scale_embedding`` (a
sinusoidal embedding of w·1000) and an MLP whose last layer starts at zero; the rest of the
student starts from the teacher's weights. Sampling the student is one evaluation per step
(``Guidance(cond=(y, s), scale=1)``).

Reported per scale, from the same x_T and with the same DDIM sampler: class consistency
(separate evaluator) of teacher and student, their gap, and the RMS pixel difference of the
paired samples; and the sampling wall time of teacher and student at s = 3 (median of
interleaved repeats), their network evaluations, and the speed-up.

    python examples/guidance_distillation_digits.py [--quick] [--out-dir DIR | --write-docs] [--no-cache]

Writes ``training_guidance_distillation.png`` and ``training_guidance_distillation.json``.

Measured in full mode (docs/training.md has the full tables): 246 s end to end from a cold
cache on one CPU thread (denoiser 93 s, student 112 s). Consistency gap teacher − student
at s = 1, 1.5, 2, 3, 5: 0.002, 0, 0, 0, 0 (stated tolerance 0.03). Sampling 1,000 images
at s = 3 with DDIM 50: teacher 100 network evaluations, 1.97 s; student 50, 1.03 s: a 1.9×
speed-up in wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import refdiff as rd
from _digits import (add_common_args, balanced_labels, noise, prepare, print_table, save_grid,
                     write_results)
from _models import as_refdiff_model, get_student, get_teacher, teacher_config
from _output import parse_args
from cfg_digits import sample_cfg

GAP_TOLERANCE = 0.03  # stated tolerance on |consistency(teacher) − consistency(student)|
TIMING_SCALE = 3.0


class Counted:
    """A model wrapper that counts network evaluations."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, t, c):
        self.calls += 1
        return self.model(x, t, c)


def sample_student(model, schedule, labels, scale, *, steps, seed):
    """One evaluation per step: the scale is an input of the student, not a second branch."""
    s = torch.full((len(labels),), float(scale))
    return rd.sample(model, noise(len(labels), seed), schedule, num_inference_steps=steps,
                     guidance=rd.Guidance(cond=(labels, s), scale=1.0), clip_x0=1.0,
                     generator=seed + 1)


def time_both(teacher, student, schedule, labels, *, steps, seed, repeats):
    """Median wall time of teacher (CFG) and student sampling, interleaved, their NFEs, and
    the time of the same loop around a free model (zeros): the sampler's own cost."""
    runs = {"teacher": (Counted(teacher), lambda m: sample_cfg(
                m, schedule, labels, TIMING_SCALE, sampler="ddim", steps=steps, seed=seed)),
            "student": (Counted(student), lambda m: sample_student(
                m, schedule, labels, TIMING_SCALE, steps=steps, seed=seed)),
            "loop": (Counted(lambda x, t, c: torch.zeros_like(x)), lambda m: sample_student(
                m, schedule, labels, TIMING_SCALE, steps=steps, seed=seed))}
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (model, run) in runs.items():
            model.calls = 0
            t0 = time.perf_counter()
            run(model)
            seconds[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in seconds.items()}
    return {"scale": TIMING_SCALE, "repeats": repeats, "teacher_seconds": round(med["teacher"], 3),
            "student_seconds": round(med["student"], 3), "loop_seconds": round(med["loop"], 3),
            "speedup": round(med["teacher"] / med["student"], 2),
            "network_speedup": round((med["teacher"] - med["loop"]) /
                                     (med["student"] - med["loop"]), 2),
            "teacher_nfe": runs["teacher"][0].calls, "student_nfe": runs["student"][0].calls}


def compare(teacher, student, schedule, labels, scales, evaluator, *, steps, seed):
    """Teacher (CFG) and student at each scale from the same x_T: per-scale records, table
    rows, and grid rows (teacher, student, teacher, ...)."""
    per_scale, rows, grid = {}, [], []
    for s in scales:
        x_t = sample_cfg(teacher, schedule, labels, s, sampler="ddim", steps=steps, seed=seed)
        x_s = sample_student(student, schedule, labels, s, steps=steps, seed=seed)
        c_t, c_s = evaluator.consistency(x_t, labels), evaluator.consistency(x_s, labels)
        rms = float((x_t - x_s).pow(2).mean().sqrt())
        per_scale[str(s)] = {"teacher_consistency": c_t, "student_consistency": c_s,
                             "gap": round(c_t - c_s, 4), "paired_rms": rms}
        rows.append([s, c_t, c_s, c_t - c_s, rms])
        grid += [x_t, x_s]
    return per_scale, rows, grid


def summary(n: int, timing: dict, worst: float) -> str:
    verdict = "within" if worst <= GAP_TOLERANCE else "OUTSIDE"
    return (f"\nsampling {n} images at s = {TIMING_SCALE:g}: teacher {timing['teacher_seconds']} s "
            f"({timing['teacher_nfe']} NFE), student {timing['student_seconds']} s "
            f"({timing['student_nfe']} NFE): speed-up {timing['speedup']}x\n"
            f"(the sampling loop alone, around a free model: {timing['loop_seconds']} s; "
            f"network time alone: {timing['network_speedup']}x)\n"
            f"largest consistency gap {worst:.3f} (tolerance {GAP_TOLERANCE}): {verdict}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    args = parse_args(p, argv)
    t_start = time.perf_counter()
    data, evaluator, out_dir, cache = prepare(args)
    teacher_net, t_info = get_teacher(data, args.quick, cache, args.seed)
    student_net, s_info = get_student(data, teacher_net, args.quick, cache, args.seed)
    teacher, student = as_refdiff_model(teacher_net), as_refdiff_model(student_net)
    schedule = teacher_config(args.quick).schedule()
    scales = [1.0, 3.0] if args.quick else [1.0, 1.5, 2.0, 3.0, 5.0]  # inside U[1, 6]
    labels = balanced_labels(3 if args.quick else 100)
    steps = 10 if args.quick else 50
    results = {"evaluator_test_accuracy": evaluator.test_accuracy, "denoiser": t_info,
               "student": s_info, "samples_per_scale": len(labels), "scales": scales,
               "gap_tolerance": GAP_TOLERANCE}
    per_scale, rows, grid = compare(teacher, student, schedule, labels, scales, evaluator,
                                    steps=steps, seed=args.seed)
    results["ddim"] = per_scale
    print(f"DDIM {steps} steps, {len(labels)} samples per scale, same x_T for both")
    print_table(["scale s", "teacher", "student", "gap", "paired RMS"], rows)
    timing = time_both(teacher, student, schedule, labels, steps=steps, seed=args.seed,
                       repeats=1 if args.quick else 7)
    results["timing"] = timing
    worst = max(abs(r[3]) for r in rows)
    results["max_abs_gap"], results["within_tolerance"] = worst, worst <= GAP_TOLERANCE
    print(summary(len(labels), timing, worst))
    names = [f"{who} s={s:g}" for s in scales for who in ("teacher", "student")]
    png = save_grid(out_dir / "training_guidance_distillation.png", grid, names,
                    f"Guidance distillation on digits (DDIM {steps}): teacher CFG "
                    "(2 NFE/step when s ≠ 1) vs student (1 NFE/step)")
    results["total_seconds"] = round(time.perf_counter() - t_start, 2)
    path = write_results(out_dir, "training_guidance_distillation", results)
    print(f"\ndenoiser: {t_info}\nstudent: {s_info}\nfigure: {png}\nresults: {path}\n"
          f"total: {results['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
