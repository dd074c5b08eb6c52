"""Guidance sweep on a 2-D labelled mixture: samples at several CFG scales side by side.

Prints class accuracy, within-class spread and sliced W1 to p(x_0 | y) per scale for DDIM and
DDPM, and saves one figure per sampler. The same machinery runs ``refdiff demo``.

    python examples/guidance_sweep.py [--quick] [--out-dir DIR]
"""

import argparse
import os
import sys

from refdiff.demo import plot, run_sweep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few samples and steps (tests)")
    p.add_argument("--out-dir", default=".", help="where the PNGs go (default: the current "
                   "directory)")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    n, steps = (300, 20) if args.quick else (3000, 200)
    scales = [0.0, 1.0, 2.0, 4.0, 8.0]
    for sampler in ("ddim", "ddpm"):
        gm, rows = run_sweep(scales, n=n, steps=steps, sampler=sampler)
        print(f"{sampler.upper()} {steps} steps, {n} samples")
        print(f"{'scale':>6} {'accuracy':>9} {'spread':>8} {'SW1':>7}")
        for s, _, _, m in rows:
            print(f"{s:>6g} {m['accuracy']:>9.3f} {m['spread']:>8.3f} {m['sw1']:>7.3f}")
        path = plot(gm, rows, os.path.join(args.out_dir, f"guidance_sweep_{sampler}.png"))
        print(f"figure: {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
