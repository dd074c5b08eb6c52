"""Where the examples write: the current directory by default, ``--out-dir DIR``, or, with
``--write-docs`` only, the committed figures and results in docs/.

``--write-docs`` refuses ``--quick``, so that quick results never replace the recorded
full-mode ones (tests/test_examples.py and tests/test_training_examples.py check that running
the examples leaves docs/ alone).
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def add_output_args(parser: argparse.ArgumentParser, files: str) -> None:
    """``--out-dir DIR`` and ``--write-docs`` (one or the other); ``files`` names what is
    written, for the help text."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out-dir", default=".", metavar="DIR",
                       help=f"where {files} go (default: the current directory)")
    where.add_argument("--write-docs", action="store_true",
                       help=f"regenerate the committed {files} in docs/ (a full run: refuses "
                            "--quick)")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, refuse ``--write-docs --quick`` (exit 2, before any work), and set
    ``args.out_dir`` to the folder to write to (a Path)."""
    args = parser.parse_args(argv)
    if args.write_docs and getattr(args, "quick", False):
        parser.error("--write-docs regenerates the recorded full-mode results in docs/; "
                     "it refuses --quick (use --out-dir for quick results)")
    args.out_dir = DOCS if args.write_docs else pathlib.Path(args.out_dir)
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out-dir {args.out_dir}: {exc.strerror or exc}")
    return args


def committed_state() -> dict[str, tuple[int, int]]:
    """(mtime in ns, size) of every file in docs/, examples/ (less its git-ignored cache and
    bytecode) and the top of the repository: the tests compare it before and after running
    an example, to show that the example left the committed files alone."""
    files = [p for p in DOCS.rglob("*")] + [p for p in REPO.iterdir()]
    files += [p for p in (REPO / "examples").rglob("*")
              if ".cache" not in p.parts and "__pycache__" not in p.parts]
    return {str(p.relative_to(REPO)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in files if p.is_file()}


def machine() -> str:
    """The cores, the CPU model and NumPy's version, for a generated page."""
    import os
    import platform

    import numpy as np

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} CPU cores available to the process ({model}), NumPy {np.__version__}"
