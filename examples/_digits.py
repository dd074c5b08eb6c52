"""Shared helpers of the digits examples: data, the evaluator, image grids, seeding, timing.

The data are scikit-learn's 8×8 handwritten digits (1,797 images, shipped with the
package, no download), scaled from 0…16 to [−1, 1] and split once, stratified, into 80 %
train and 20 % test with a fixed seed. Every diffusion model and noisy classifier trains on
the train split only.

The evaluator is a separate classifier that never sees a diffusion model: an RBF support
vector machine (scikit-learn ``SVC(gamma=0.001)``) on the train split, in the original
0…16 pixel scale. Its test accuracy is reported next to every number it produces. "Class
consistency" of a batch of samples generated for labels y is the fraction the evaluator
assigns to y.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from _output import REPO, add_output_args

NUM_CLASSES = 10
NULL_LABEL = NUM_CLASSES  # ∅: the extra label index that condition dropout puts in
IMAGE_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class Digits:
    """The split, as torch tensors: images (N, 1, 8, 8) float32 in [−1, 1], labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Digits:
    """scikit-learn's digits, scaled to [−1, 1], split stratified with a fixed seed."""
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    d = sk_load()
    x = (d.data.astype(np.float32) / 8.0 - 1.0).reshape(-1, *IMAGE_SHAPE)
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=test_fraction,
                                              random_state=seed, stratify=d.target)
    as_t = torch.from_numpy
    return Digits(as_t(x_tr), as_t(y_tr.astype(np.int64)), as_t(x_te), as_t(y_te.astype(np.int64)))


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """Images in [−1, 1] (N, 1, 8, 8) back to the 0…16 scale as (N, 64), clipped."""
    return np.clip((x.detach().double().reshape(x.shape[0], -1).numpy() + 1.0) * 8.0, 0.0, 16.0)


class Evaluator:
    """The separately trained digits classifier that scores samples (an RBF SVM)."""

    def __init__(self, data: Digits):
        from sklearn.svm import SVC

        self.svm = SVC(gamma=0.001).fit(to_pixels(data.x_train), data.y_train.numpy())
        self.test_accuracy = float(self.svm.score(to_pixels(data.x_test), data.y_test.numpy()))

    def predict(self, x: torch.Tensor) -> np.ndarray:
        return self.svm.predict(to_pixels(x))

    def consistency(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of samples the evaluator assigns to the label they were generated for."""
        return float(np.mean(self.predict(x) == labels.numpy()))

    def rate(self, x: torch.Tensor, label: int) -> float:
        """Fraction of samples the evaluator assigns to ``label``."""
        return float(np.mean(self.predict(x) == label))


def balanced_labels(per_class: int) -> torch.Tensor:
    """0, 1, …, 9, 0, 1, … (per_class of each), int64."""
    return torch.arange(NUM_CLASSES).repeat(per_class)


def setup_torch(threads: int, seed: int) -> None:
    """Pin the thread count (results depend on it through summation order) and seed torch."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


@contextlib.contextmanager
def stopwatch(record: dict, key: str):
    """Store the wall time of the block in ``record[key]`` (seconds)."""
    t0 = time.perf_counter()
    yield
    record[key] = round(time.perf_counter() - t0, 2)


def save_grid(path: pathlib.Path, rows: list[torch.Tensor], row_titles: list[str],
              title: str, ncols: int = NUM_CLASSES) -> pathlib.Path:
    """Save image rows (each (≥ ncols, 1, 8, 8) in [−1, 1]) as one PNG grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * 0.6 + 1.2, len(rows) * 0.62 + 0.5),
                             squeeze=False)
    for r, (imgs, name) in enumerate(zip(rows, row_titles)):
        for c in range(ncols):
            ax = axes[r][c]
            ax.imshow(imgs[c, 0].clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_results(out_dir: pathlib.Path, name: str, results: dict) -> pathlib.Path:
    """Write the results dictionary as pretty JSON next to the figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path


CACHE = REPO / "examples" / ".cache"  # git-ignored


def add_common_args(parser) -> None:
    """The options every digits example takes (parse them with ``_output.parse_args``)."""
    parser.add_argument("--quick", action="store_true",
                        help="a few hundred training steps and few samples (the tests' mode)")
    add_output_args(parser, "the PNG grid and the results JSON")
    parser.add_argument("--cache-dir", default=str(CACHE),
                        help="trained state dicts, keyed by their configuration (default: "
                             "examples/.cache, git-ignored)")
    parser.add_argument("--no-cache", action="store_true", help="train every model afresh")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: fastest on a shared 2-core machine)")
    parser.add_argument("--seed", type=int, default=0)


def prepare(args):
    """Threads and seeds, the data split, the evaluator, and the output/cache folders
    (``args`` from ``_output.parse_args``: ``args.out_dir`` is already the folder to use)."""
    setup_torch(args.threads, args.seed)
    data = load_digits(seed=0)
    cache = None if args.no_cache else pathlib.Path(args.cache_dir)
    return data, Evaluator(data), pathlib.Path(args.out_dir), cache


def noise(n: int, seed: int) -> torch.Tensor:
    """x_T for n images from its own seeded generator (the same x_T for every method)."""
    return torch.randn((n, *IMAGE_SHAPE), generator=torch.Generator().manual_seed(seed))


def print_table(header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(f"{_fmt(v):>{w}}" for v, w in zip(r, widths)))


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
