"""Classifier guidance on 8×8 digits with a small noisy classifier, against CFG at matched scales.

A noisy classifier p_φ(y | x_t, t) (examples/_models.py: the denoiser's MLP trunk with a
time embedding, ending in 10 logits) is trained with ``refdiff.noisy_classifier_loss``:
cross-entropy on x_t = q_sample(x_0, ᾱ_t, ε) at t ~ U{0…999} (CG §4). Classifier guidance
then steers the unconditional branch ε(x_t, ∅) of the CFG example's denoiser with
g = ∇_{x_t} log p_φ(y | x_t, t) (torch autograd): DDIM uses CG Algorithm 2
(ε̂ − s·√(1−ᾱ_t)·g), DDPM uses CG Algorithm 1 (μ + s·Σ·g). CFG runs at the same scales s;
with exact noisy densities the two coincide (ε = −√(1−ᾱ)·∇ log p(x_t)), so matched s is the
comparison the theory suggests. Both start from the same x_T; at s = 0 both are the
unconditional model and the samples are identical. Scores come from the separate evaluator
(examples/_digits.py), never from the guiding classifier.

    python examples/classifier_guidance_digits.py [--quick] [--out-dir DIR | --write-docs] [--no-cache]

Writes ``training_classifier_guidance.png`` and ``training_classifier_guidance.json``.

Measured in full mode (docs/training.md has the full tables): 158 s end to end from a cold
cache on one CPU thread (denoiser 81 s, noisy classifier 27 s). Class consistency, 1,000
samples per scale, CG vs CFG at the same s:

    s            0      1      2      3      5      8
    CG  DDIM     0.094  0.833  0.974  0.994  1.000  1.000
    CFG DDIM     0.094  0.988  1.000  1.000  1.000  1.000
    CG  DDPM     0.105  0.797  0.922  0.943  0.966  0.983
    CFG DDPM     0.105  0.994  1.000  1.000  1.000  1.000

The noisy classifier's test accuracy is 0.986 at t = 0, 0.767 at t = 500, 0.172 at t = 900.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import refdiff as rd
from _digits import (NULL_LABEL, add_common_args, balanced_labels, noise, prepare, print_table,
                     save_grid, write_results)
from _models import as_refdiff_model, get_noisy_classifier, get_teacher, teacher_config
from _output import parse_args
from cfg_digits import sample_cfg, spread

PROBE_TIMESTEPS = (0, 250, 500, 750, 900)


def noisy_accuracy(classifier, data, schedule, seed: int) -> dict:
    """Test accuracy of p_φ(y | x_t, t) at a few fixed t (fixed noise)."""
    eps = torch.randn(data.x_test.shape, generator=torch.Generator().manual_seed(seed))
    out = {}
    with torch.no_grad():
        for t in PROBE_TIMESTEPS:
            x_t = rd.q_sample(data.x_test, schedule.alpha_bar(t), eps)
            out[str(t)] = float((classifier(x_t, t).argmax(1) == data.y_test).float().mean())
    return out


def sample_cg(model, classifier, schedule, labels, scale, *, sampler, steps, seed):
    """Classifier guidance on the unconditional branch (cond = ∅, one model call per step)."""
    log_prob = lambda x, t: rd.label_log_prob(classifier(x, t), labels)  # noqa: E731
    g = rd.Guidance(cond=torch.full_like(labels, NULL_LABEL), classifier=log_prob,
                    classifier_scale=scale)
    return rd.sample(model, noise(len(labels), seed), schedule, sampler=sampler,
                     num_inference_steps=steps, guidance=g, clip_x0=1.0, generator=seed + 1)


def compare(model, clf, schedule, labels, scales, evaluator, *, sampler, steps, seed):
    """CG and CFG at each scale from the same x_T: per-scale records, table rows, and the
    grid rows (all CG rows, then all CFG rows)."""
    per_scale, rows, x_cgs, x_cfgs = {}, [], [], []
    for s in scales:
        t0 = time.perf_counter()
        x_cg = sample_cg(model, clf, schedule, labels, s, sampler=sampler, steps=steps, seed=seed)
        t_cg = time.perf_counter() - t0
        x_cfg = sample_cfg(model, schedule, labels, s, sampler=sampler, steps=steps, seed=seed)
        rec = {"cg_consistency": evaluator.consistency(x_cg, labels),
               "cfg_consistency": evaluator.consistency(x_cfg, labels),
               "cg_spread": spread(x_cg, labels), "cfg_spread": spread(x_cfg, labels),
               "cg_seconds": round(t_cg, 2), "identical": bool(torch.equal(x_cg, x_cfg))}
        per_scale[str(s)] = rec
        rows.append([s, rec["cg_consistency"], rec["cfg_consistency"], rec["cg_spread"],
                     rec["cfg_spread"]])
        x_cgs.append(x_cg)
        x_cfgs.append(x_cfg)
    return per_scale, rows, x_cgs + x_cfgs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    args = parse_args(p, argv)
    t_start = time.perf_counter()
    data, evaluator, out_dir, cache = prepare(args)
    teacher, t_info = get_teacher(data, args.quick, cache, args.seed)
    clf, c_info = get_noisy_classifier(data, args.quick, cache, args.seed)
    clf.requires_grad_(False)  # gradients flow to x_t only
    model, schedule = as_refdiff_model(teacher), teacher_config(args.quick).schedule()
    scales = [0.0, 1.0, 3.0] if args.quick else [0.0, 1.0, 2.0, 3.0, 5.0, 8.0]
    labels = balanced_labels(3 if args.quick else 100)
    steps = {"ddim": 10 if args.quick else 50, "ddpm": 10 if args.quick else 100}
    results = {"evaluator_test_accuracy": evaluator.test_accuracy, "denoiser": t_info,
               "noisy_classifier": c_info, "samples_per_scale": len(labels), "scales": scales,
               "noisy_classifier_accuracy_by_t": noisy_accuracy(clf, data, schedule, args.seed)}
    print("noisy classifier test accuracy by t:", results["noisy_classifier_accuracy_by_t"])
    grids = {}
    for sampler in ("ddim", "ddpm"):
        results[sampler], rows, grids[sampler] = compare(
            model, clf, schedule, labels, scales, evaluator, sampler=sampler,
            steps=steps[sampler], seed=args.seed)
        print(f"\n{sampler.upper()} {steps[sampler]} steps, {len(labels)} samples per scale")
        print_table(["scale s", "CG consistency", "CFG consistency", "CG spread", "CFG spread"],
                    rows)
    print(f"\nat s = 0 CG and CFG give identical samples: {results['ddim']['0.0']['identical']}")
    png = save_grid(out_dir / "training_classifier_guidance.png", grids["ddim"],
                    [f"CG s={s:g}" for s in scales] + [f"CFG s={s:g}" for s in scales],
                    f"Classifier guidance vs CFG on digits (DDIM {steps['ddim']})")
    results["total_seconds"] = round(time.perf_counter() - t_start, 2)
    path = write_results(out_dir, "training_classifier_guidance", results)
    print(f"\ndenoiser: {t_info}\nnoisy classifier: {c_info}\nfigure: {png}\nresults: {path}\n"
          f"total: {results['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
