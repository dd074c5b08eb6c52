"""Audit a hand-written tutorial sampler and diffusers' schedulers with refdiff.testing.

The tutorial sampler below is the kind found in blog posts: a DDIM step that finds the
previous timestep as t − T//n, CFG written with the paper's w but called with a scale s, and
a DDPM step that adds noise whenever t > 0. The kit's public checks find each, shrink it, and
print a reproduction. Then the same checks run on diffusers' DDIMScheduler and DDPMScheduler
under several configurations.

    python examples/audit_sampler.py [--quick]
"""

import argparse
import math
import sys

import refdiff as rd
from refdiff.testing import check_cfg, check_ddim_step, check_ddpm_step, check_sampling_loop

T = 1000
AB = rd.linear_schedule(T).alphas_cumprod  # the tutorial's ᾱ table (float64)


def tutorial_cfg(eps_uncond, eps_cond, guidance_scale):
    return (1 + guidance_scale) * eps_cond - guidance_scale * eps_uncond  # paper's w form


def tutorial_ddim_step(x_t, eps, t, t_prev, *, eta, noise, num_inference_steps):
    prev = t - T // num_inference_steps  # ignores the list: wrong for trailing/linspace
    a_t, a_prev = float(AB[t]), (float(AB[prev]) if prev >= 0 else 1.0)
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    var = eta**2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - var, 0.0)) * eps
    return x + math.sqrt(var) * noise if prev >= 0 else x


def tutorial_ddpm_step(x_t, eps, t, t_prev, *, noise, num_inference_steps):
    a_t, a_prev = float(AB[t]), (float(AB[t_prev]) if t_prev >= 0 else 1.0)
    beta = 1 - a_t / a_prev
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    mean = (math.sqrt(a_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - a_prev) * x_t) / (1 - a_t)
    return mean + math.sqrt(beta) * noise if t > 0 else mean  # "fixed_large", noise if t > 0


def tutorial_loop(model, x_T, timesteps, noises):
    x, n = x_T, len(timesteps)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < n else -1
        x = tutorial_ddim_step(x, model(x, t), t, t_prev, eta=0.0, noise=noises[i],
                               num_inference_steps=n)
    return x


DIFFUSERS_CONFIGS = [
    ("DDIMScheduler", {}), ("DDIMScheduler", {"timestep_spacing": "trailing"}),
    ("DDIMScheduler", {"timestep_spacing": "linspace"}), ("DDIMScheduler", {"steps_offset": 1}),
    ("DDIMScheduler", {"set_alpha_to_one": False}),
    ("DDPMScheduler", {}),
    ("DDPMScheduler", {"timestep_spacing": "trailing", "variance_type": "fixed_large"}),
    ("DDPMScheduler", {"steps_offset": 1, "variance_type": "fixed_large"}),
    ("DDPMScheduler", {"variance_type": "fixed_large_log"}),
]


def audit_tutorial(max_examples):
    kw = {"max_examples": max_examples}
    return [check_cfg(tutorial_cfg, **kw), check_ddim_step(tutorial_ddim_step, **kw),
            check_ddpm_step(tutorial_ddpm_step, variance_type="fixed_large", **kw),
            check_sampling_loop(tutorial_loop, **kw)]


def audit_diffusers(configs, max_examples):
    from refdiff.testing.diffusers_adapters import DiffusersScheduler, run_checks
    out = []
    for k, (name, config) in enumerate(configs):
        adapter = DiffusersScheduler(name, **config)
        # the tables once; the timesteps wherever the configuration sets the spacing or offset
        own = "timestep_spacing" in config or "steps_offset" in config
        checks = [c for c in adapter.checks() if k == 0 or c != "schedule" and (
            c != "timesteps" or own)]
        out.append((repr(adapter), run_checks(adapter, checks, max_examples=max_examples)))
    return out


def summary(result) -> str:
    if result.passed:
        return f"    PASS  {result.name}"
    ce = result.counterexample
    keys = [k for k in ("T", "n", "spacing", "t", "t_prev", "eta", "scale", "timesteps", "spec") if k in ce]
    where = ", ".join(f"{k}={ce[k]!r}" for k in keys)
    return f"    FAIL  {result.name}: {result.message[:90]}\n          at {where[:150]}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer examples and configurations")
    args = p.parse_args(argv)
    max_examples = 60 if args.quick else None
    print("== a hand-written tutorial sampler ==")
    results = audit_tutorial(150)
    for r in results:
        print(r.report() if not r.passed and r is results[0] else summary(r))
    try:
        import diffusers
    except ImportError:
        print("\n(diffusers not installed: skipping its audit)")
        return 0
    print(f"\n== diffusers {diffusers.__version__} (step logic on refdiff's float64 table) ==")
    configs = DIFFUSERS_CONFIGS[:2] + DIFFUSERS_CONFIGS[6:7] if args.quick else DIFFUSERS_CONFIGS
    for target, res in audit_diffusers(configs, max_examples):
        print(target)
        for r in res:
            print(summary(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
