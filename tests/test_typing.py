"""mypy passes on the package (the [tool.mypy] configuration in pyproject.toml) and on the
README's Python blocks as a user would write them (skipped where mypy is not installed)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("mypy")

ROOT = pathlib.Path(__file__).parents[1]
README_BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)

# What the README does with values of their real types (mypy sees the README's own values
# through unannotated returns as Any): an int array of timesteps, array scales, a callable
# model and classifier.
TYPED_USAGE = '''
from typing import Any

import numpy as np
import refdiff as rd

def model(x_t: Any, t: int, c: Any) -> Any:
    return np.zeros_like(x_t)

schedule: rd.Schedule = rd.linear_schedule(1000)
timesteps: np.ndarray = np.arange(999, -1, -20)
x_T: np.ndarray = np.zeros((4, 2))
per_sample_scale: np.ndarray = np.full((4,), 3.0)
guided = rd.Guidance(cond=np.arange(4), uncond=None, scale=per_sample_scale)
x_0 = rd.sample(model, x_T, schedule, timesteps=timesteps, guidance=guided, generator=0)
x_1 = rd.sample(model, x_T, schedule, timesteps=[999, 499, 0], sampler="ddpm", generator=0)
x_2 = rd.sample(model, x_T, schedule, num_inference_steps=10,
                guidance=rd.Guidance(cond=1, scale=np.float64(2.0)))
'''


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory) -> dict[str, list[str]]:
    """One mypy run over the package and the README blocks; its error lines per target."""
    folder = tmp_path_factory.mktemp("typing")
    files = []
    for i, code in enumerate([*README_BLOCKS, TYPED_USAGE]):
        path = folder / (f"readme_block_{i}.py" if i < len(README_BLOCKS) else "typed_usage.py")
        path.write_text(code)
        files.append(str(path))
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file",
                           str(ROOT / "pyproject.toml"), "--no-error-summary",
                           "--show-error-codes", "refdiff", *files],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 2: mypy itself failed (bad configuration, crash)
        pytest.fail(f"mypy did not run (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    lines = [line for line in proc.stdout.splitlines() if ": error:" in line]
    return {"package": [line for line in lines if line.startswith("refdiff")],
            "readme": [line for line in lines if not line.startswith("refdiff")]}


def test_readme_has_python_blocks():
    assert len(README_BLOCKS) >= 2


def test_package_type_checks(mypy_output):
    assert not mypy_output["package"], "\n".join(mypy_output["package"])


def test_readme_blocks_type_check(mypy_output):
    assert not mypy_output["readme"], "\n".join(mypy_output["readme"])


def test_package_ships_its_annotations():
    """PEP 561: the py.typed marker is in the package and setuptools ships it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    assert (ROOT / "refdiff" / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["refdiff"]
