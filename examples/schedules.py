"""Noise schedules side by side: ᾱ_t and log-SNR of linear, scaled-linear, cosine and
zero-terminal-SNR schedules, and the timesteps each spacing visits.

    python examples/schedules.py [--quick] [--out-dir DIR | --write-docs]

Writes ``schedules.png`` to the current directory (``--write-docs``: docs/schedules.png,
the README's figure); ``--quick`` prints the tables only.
"""

import argparse
import sys

import numpy as np

import refdiff as rd
from refdiff._plotting import pyplot, save
from _output import add_output_args, parse_args


def schedules(T: int):
    lin = rd.linear_schedule(T)
    return {"linear": lin, "scaled_linear": rd.scaled_linear_schedule(T),
            "cosine": rd.cosine_schedule(T), "linear + zero terminal SNR": rd.rescale_zero_terminal_snr(lin),
            "guided-diffusion linear": rd.guided_diffusion_linear_schedule(T)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tables only, no figure")
    p.add_argument("--steps", type=int, default=10, help="inference steps for the spacing table")
    add_output_args(p, "the figure schedules.png")
    args = parse_args(p, argv)
    T = 1000
    sch = schedules(T)
    print(f"{'schedule':<28} {'alpha_bar[0]':>12} {'alpha_bar[T-1]':>15} {'log-SNR[T-1]':>13}")
    for name, s in sch.items():
        ab = np.asarray(s.alphas_cumprod)
        with np.errstate(divide="ignore"):
            snr_end = np.log(ab[-1] / (1 - ab[-1]))
        print(f"{name:<28} {ab[0]:>12.6f} {ab[-1]:>15.3e} {snr_end:>13.2f}")
    print(f"\ntimesteps for n = {args.steps} of T = {T}:")
    for spacing in rd.SPACINGS:
        print(f"  {spacing:<9} {rd.inference_timesteps(T, args.steps, spacing).tolist()}")
    if args.quick:
        return 0
    plt = pyplot()
    if plt is None:
        print("figure: skipped (matplotlib missing)")
        return 0
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    t = np.arange(T)
    for name, s in sch.items():
        ab = np.asarray(s.alphas_cumprod)
        a1.plot(t, ab, label=name)
        with np.errstate(divide="ignore"):
            a2.plot(t, np.log(ab / (1 - ab)), label=name)
    a1.set(xlabel="t", ylabel="alpha_bar_t", title="alpha_bar")
    a2.set(xlabel="t", ylabel="log SNR", title="log-SNR = log(alpha_bar / (1 - alpha_bar))")
    a1.legend(fontsize=7)
    print(f"figure: {save(fig, str(args.out_dir / 'schedules.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
