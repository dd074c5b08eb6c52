"""The same guided sampler on NumPy and on torch (CUDA when present): compared and timed.

The oracle, the CFG and the DDIM steps are one code path; only the arrays change. torch
float64 must agree with NumPy float64 to ~1e-12, float32 to ~1e-5 (relative to the sample
scale).

    python examples/backend_swap.py [--quick]
"""

import argparse
import sys
import time

import numpy as np

import refdiff as rd
from refdiff.backends import get_backend
from refdiff.oracle import demo_mixture


def run(x_T, n_steps, scale):
    gm, sch = demo_mixture(), rd.linear_schedule(1000)
    b = get_backend(x_T)
    y = b.xp.asarray(np.arange(x_T.shape[0]) % gm.num_classes, device=rd._xp.device(x_T))
    model = lambda x, t, c: gm.eps(x, sch.alpha_bar(t), c)
    t0 = time.perf_counter()
    out = rd.sample(model, x_T, sch, num_inference_steps=n_steps, guidance=rd.Guidance(cond=y, scale=scale))
    b.synchronize(rd._xp.device(out))
    return b.to_numpy(out).astype(np.float64), time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    n, steps = (256, 10) if args.quick else (20_000, 50)
    x_np = np.random.default_rng(0).standard_normal((n, 2))
    ref, t_ref = run(x_np, steps, 3.0)
    print(f"{'backend':<22} {'time (s)':>9} {'max |diff| vs numpy f64':>24}")
    print(f"{'numpy float64':<22} {t_ref:>9.3f} {0.0:>24.1e}")
    try:
        import torch
    except ImportError:
        print("torch not installed: nothing to compare")
        return 0
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for dtype in (torch.float64, torch.float32):
            x_t = torch.asarray(x_np).to(device=dev, dtype=dtype)
            out, t = run(x_t, steps, 3.0)
            name = f"torch {dev} {str(dtype).split('.')[-1]}"
            print(f"{name:<22} {t:>9.3f} {np.max(np.abs(out - ref)):>24.1e}")
    if not torch.cuda.is_available():
        print("(no CUDA device here: the cuda rows were not run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
