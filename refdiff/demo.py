"""``refdiff demo``: a classifier-free guidance sweep on the exact Gaussian-mixture oracle.

For each CFG scale the demo samples the built-in 2-D labelled mixture with the exact
conditional and unconditional ε (no network), and reports per scale: class accuracy (the
exact classifier's argmax at ᾱ = 1 equals the target class), within-class spread (mean
distance of a sample to the empirical centre of its cluster: the samples nearest the same
component of the target class), and the sliced Wasserstein-1 distance to
exact draws from the class-conditional p(x_0 | y). Scale 1 should match p(x_0 | y); larger
scales trade that fidelity for sharper, more classifiable samples.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

import refdiff as rd
from refdiff._plotting import pyplot, save
from refdiff.backends import get_backend
from refdiff.cli import ArgumentParser, UsageError
from refdiff.oracle import GaussianMixture, demo_mixture

Row = tuple[float, np.ndarray, np.ndarray, dict[str, float]]  # (scale, x0, y, metrics)

# Limits of the command-line options, checked before any work (and stated in --help)
MAX_ABS_SCALE = 1e3   # |s|: beyond it ε̃ = ε_u + s·(ε_c − ε_u) leaves any meaningful range
MAX_STEPS = 1000      # the schedule's T
MAX_SAMPLES = 1_000_000
MAX_SEED = 2**32 - 1


def sliced_w1(a: np.ndarray, b: np.ndarray, num_projections: int = 64, seed: int = 0) -> float:
    """Sliced Wasserstein-1 between two equal-size point clouds (host NumPy)."""
    dirs = np.random.default_rng(seed).standard_normal((num_projections, a.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    pa, pb = np.sort(a @ dirs.T, axis=0), np.sort(b @ dirs.T, axis=0)
    return float(np.mean(np.abs(pa - pb)))


def scale_metrics(gm: GaussianMixture, x0: np.ndarray, y: np.ndarray,
                  seed: int) -> dict[str, float]:
    """Accuracy, within-class spread and sliced W1 to p(x_0 | y) of samples with targets y."""
    logp = np.stack([gm.log_prob_class(x0, 1.0, c) for c in range(gm.num_classes)], axis=1)
    means, labels = np.asarray(gm.means), np.asarray(gm.labels)
    dist = np.linalg.norm(x0[:, None, :] - means[None], axis=-1)
    nearest = np.where(labels[None, :] == y[:, None], dist, np.inf).argmin(axis=1)
    spread = []  # distance to the empirical centre of the sample's cluster
    for k in np.unique(nearest):
        pts = x0[nearest == k]
        spread.append(np.linalg.norm(pts - pts.mean(axis=0), axis=1))
    w1 = []
    for c in range(gm.num_classes):
        sel = y == c
        ref, _ = gm.sample(int(sel.sum()), generator=seed + 1000 + c, y=c)
        w1.append(sliced_w1(x0[sel], np.asarray(ref)))
    return {"accuracy": float(np.mean(logp.argmax(axis=1) == y)), "spread": float(np.concatenate(spread).mean()),
            "sw1": float(np.mean(w1))}


def sw1_floor(gm: GaussianMixture, n_per_class: int, seed: int) -> float:
    """SW1 between two independent exact samples of p(x_0 | y) of the demo's size: the value a
    perfect sampler would report (finite-sample noise, mostly from the split between the two
    modes of each class)."""
    vals = []
    for c in range(gm.num_classes):
        a, _ = gm.sample(n_per_class, generator=seed + 2000 + c, y=c)
        b, _ = gm.sample(n_per_class, generator=seed + 3000 + c, y=c)
        vals.append(sliced_w1(np.asarray(a), np.asarray(b)))
    return float(np.mean(vals))


def run_sweep(scales: Sequence[float], *, n: int = 3000, steps: int = 100, sampler: str = "ddim",
              backend: str = "numpy", device: Any = None, seed: int = 0, progress: bool = False,
              on_row: Callable[[Row], None] | None = None) -> tuple[GaussianMixture, list[Row]]:
    """Sample the demo mixture at each CFG scale; return (mixture, [(scale, x0, y, metrics)]).

    ``on_row`` is called with each row as soon as its scale is done."""
    gm, sch = demo_mixture(), rd.linear_schedule(1000)
    b = get_backend(backend)
    dtype = b.xp.float64 if device in (None, "cpu") else b.xp.float32
    y_host = np.arange(n) % gm.num_classes
    y = b.xp.asarray(y_host, device=device)

    def model(x: Any, t: int, c: Any) -> Any:
        return gm.eps(x, sch.alpha_bar(t), c)

    rows = []
    for s in scales:
        x_T = b.normal((n, 2), dtype=dtype, device=device, generator=seed)
        x0 = rd.sample(model, x_T, sch, sampler=sampler, num_inference_steps=steps,
                       guidance=rd.Guidance(cond=y, uncond=None, scale=s), generator=seed + 1,
                       progress=progress)
        x0 = np.asarray(b.to_numpy(x0), dtype=np.float64)
        rows.append((s, x0, y_host, scale_metrics(gm, x0, y_host, seed)))
        if on_row is not None:
            on_row(rows[-1])
    return gm, rows


def plot(gm: GaussianMixture, rows: Sequence[Row], path: str) -> str | None:
    """Scatter plots of the samples per scale, coloured by target class; returns the path."""
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4), sharex=True, sharey=True)
    for ax, (s, x0, y, m) in zip(np.atleast_1d(axes), rows):
        ax.scatter(x0[:, 0], x0[:, 1], c=y, cmap="viridis", s=3, alpha=0.6)
        ax.scatter(*np.asarray(gm.means).T, c="red", marker="x", s=30)
        ax.set_title(f"s = {s:g}\nacc {m['accuracy']:.2f}, SW1 {m['sw1']:.2f}", fontsize=9)
        ax.set_aspect("equal")
    fig.suptitle("CFG on the exact Gaussian-mixture oracle (colour = target class)", fontsize=10)
    return save(fig, path)


DESCRIPTION = """\
A classifier-free guidance sweep on the exact Gaussian-mixture oracle: for each CFG scale s,
samples of the built-in 2-D labelled mixture (exact conditional and unconditional eps, no
network), with class accuracy, within-class spread and the sliced Wasserstein-1 distance to
p(x_0 | y) per scale. Scale 1 should match p(x_0 | y); larger scales trade that fidelity for
sharper, more classifiable samples. Every option is checked before any sampling starts."""

BACKENDS = ("numpy", "torch", "jax", "array_api_strict")


def _parse(argv: Sequence[str] | None) -> Any:
    p = ArgumentParser(prog="refdiff demo", description=DESCRIPTION)
    p.add_argument("--backend", default="numpy", metavar="NAME",
                   help=f"array backend: {', '.join(BACKENDS)}, or a registered one "
                        "(default: %(default)s)")
    p.add_argument("--device", default=None,
                   help="device of --backend torch, e.g. cuda, cuda:1 or cpu; the other "
                        "backends run on the CPU (default: the backend's own, the CPU)")
    p.add_argument("--scales", default="0,1,2,4,8", metavar="S,S,...",
                   help=f"comma-separated CFG scales s, each finite with |s| <= {MAX_ABS_SCALE:g};"
                        " write negative ones as --scales=-1,0,1 (default: %(default)s)")
    p.add_argument("--steps", type=int, default=100, metavar="N",
                   help=f"sampling steps, 1..{MAX_STEPS} (default: %(default)s)")
    p.add_argument("--samples", type=int, default=3000, metavar="N",
                   help=f"samples per scale, 3..{MAX_SAMPLES} (default: %(default)s)")
    p.add_argument("--sampler", default="ddim", choices=rd.sampling.SAMPLERS,
                   help="the sampling loop (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help=f"random seed, 0..{MAX_SEED} (default: %(default)s)")
    p.add_argument("--out", default="refdiff_demo.png", metavar="PATH",
                   help="the figure: a .png path in an existing folder, or "
                        f"{os.devnull} for none (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is one only when tqdm is installed)")
    return p.parse_args(argv)


def _scales(text: str) -> list[float]:
    try:
        scales = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--scales must be comma-separated numbers, got {text!r}") from None
    if not scales:
        raise UsageError("--scales needs at least one value")
    for s in scales:
        if not math.isfinite(s) or abs(s) > MAX_ABS_SCALE:
            raise UsageError(f"--scales: each scale must be finite with |s| <= {MAX_ABS_SCALE:g},"
                             f" got {s:g}")
    return scales


def _out_path(path: str) -> str | None:
    """The figure's path, checked before the sweep runs; None for os.devnull (no figure)."""
    if path == os.devnull:
        return None
    if os.path.splitext(path)[1].lower() != ".png":
        raise UsageError(f"--out must be a .png path (or {os.devnull}), got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--out {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"--out {path} is a folder; name a .png file")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"--out {path}: not writable")
    return path


def _device(backend: str, device: str | None) -> Any:
    """The device to pass on: None (the backend's default) or a torch device that works."""
    if backend != "torch":
        if device not in (None, "cpu"):
            raise UsageError(f"--device {device} needs --backend torch (--backend {backend} "
                             "runs on the CPU)")
        return None
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {device}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available")
    try:  # a round trip: the device exists and its arrays come back to the host
        torch.zeros(1, device=dev).cpu()
    except Exception as exc:  # noqa: BLE001 (torch raises several types here)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--device {device}: not usable here ({first[:120]})") from None
    return device


def _validate(args: Any) -> tuple[list[float], str | None, Any]:
    """Every option, before any work: (scales, figure path or None, device)."""
    scales = _scales(args.scales)
    if not 1 <= args.steps <= MAX_STEPS:
        raise UsageError(f"--steps must lie in 1..{MAX_STEPS}, got {args.steps}")
    if not 3 <= args.samples <= MAX_SAMPLES:
        raise UsageError(f"--samples must lie in 3..{MAX_SAMPLES}, got {args.samples}")
    if not 0 <= args.seed <= MAX_SEED:
        raise UsageError(f"--seed must lie in 0..{MAX_SEED}, got {args.seed}")
    out = _out_path(args.out)
    try:
        get_backend(args.backend)
    except (ValueError, ImportError) as exc:
        raise UsageError(f"--backend {args.backend}: {exc}") from None
    if args.backend == "jax":  # the demo runs in float64 on the CPU: JAX's 64-bit mode, for
        import jax             # this process (a command-line run, not a library call)

        jax.config.update("jax_enable_x64", True)
    return scales, out, _device(args.backend, args.device)


def tqdm_available() -> bool:
    """Whether ``refdiff.sample(progress=True)`` draws a tqdm bar (without tqdm it prints a
    plain counter line every tenth of the run, too many for a sweep)."""
    try:
        import tqdm.auto  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    scales, out, device = _validate(args)
    gm = demo_mixture()
    print(f"refdiff demo: {args.sampler.upper()} {args.steps} steps, {args.samples} samples per "
          f"scale, {gm.num_classes} classes, backend {args.backend}"
          f"{' on ' + str(device) if device else ''}")
    floor = sw1_floor(gm, args.samples // gm.num_classes, args.seed)
    print(f"(SW1 of two exact samples of this size: {floor:.3f}, the noise floor)")
    print(f"{'scale':>6} {'accuracy':>9} {'spread':>8} {'SW1 to p(x|y)':>14}", flush=True)

    def show(row: Row) -> None:  # each row as soon as its scale is done: the progress report
        s, _, _, m = row
        print(f"{s:>6g} {m['accuracy']:>9.3f} {m['spread']:>8.3f} {m['sw1']:>14.3f}", flush=True)

    t0 = time.perf_counter()
    gm, rows = run_sweep(scales, n=args.samples, steps=args.steps, sampler=args.sampler,
                         backend=args.backend, device=device, seed=args.seed,
                         progress=not args.no_progress and tqdm_available(), on_row=show)
    elapsed = time.perf_counter() - t0
    if out is None:
        print("figure: none (--out " + os.devnull + ")")
    else:
        path = plot(gm, rows, out)
        print(f"figure: {os.path.abspath(path)}" if path else "figure: skipped (matplotlib "
              "missing; pip install 'refdiff[plots]')")
    print(f"time: {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
