"""The README's Python examples run as written (the GPU one on the CPU when no GPU is here)."""

import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i):
    code = BLOCKS[i]
    if "cuda" in code:
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            code = code.replace('device="cuda"', 'device="cpu"')
    exec(compile(code, f"README block {i}", "exec"), {})


def test_readme_has_blocks():
    assert len(BLOCKS) >= 2
