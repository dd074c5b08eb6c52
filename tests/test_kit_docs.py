"""docs/testing.md: its ten-line pytest example runs as written and can fail; its claims
about the tolerance table match the code."""

import pathlib
import re

import pytest

from refdiff.testing import RTOL, ConformanceError

DOC = (pathlib.Path(__file__).parents[1] / "docs" / "testing.md").read_text()
EXAMPLE = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)[0]


def _run(code):
    namespace = {}
    exec(compile(code, "docs/testing.md example", "exec"), namespace)
    namespace["test_my_ddim_step"]()


def test_the_ten_line_example_passes():
    assert "def test_my_ddim_step" in EXAMPLE and len(EXAMPLE.strip().splitlines()) <= 16
    _run(EXAMPLE)


@pytest.mark.parametrize("slip", [("eta**2", "eta"), ("else 1.0", "else AB[0]")])
def test_the_ten_line_example_fails_on_a_slip(slip):
    code = EXAMPLE.replace(*slip)
    assert code != EXAMPLE
    with pytest.raises(ConformanceError, match="DDIM step"):
        _run(code)


def test_tolerance_table_matches_rtol():
    written = {"float64": "1e-12", "float32": "2e-6", "float16": "4e-3", "bfloat16": "3e-2"}
    for dtype, rtol in RTOL.items():
        assert float(written[dtype]) == rtol and f"| {dtype} | {written[dtype]} |" in DOC


def test_readme_shows_the_same_example():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Testing your implementation against refdiff", 1)[1]
    assert re.findall(r"```python\n(.*?)```", section, flags=re.S)[0] == EXAMPLE


def _statement():
    """{target: [(check, verdict, classification)]} from the default-configuration table of
    docs/testing.md "### diffusers"."""
    section = DOC.split("### diffusers", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `diffusers:(\w+)` \| (.+?) \| (PASS|FAIL)(?: — (.+?))? \|$", section,
                      flags=re.M)
    table: dict = {}
    for target, check, verdict, why in rows:
        table.setdefault(target, []).append((check, verdict, why))
    return table


def _verdicts(out: str):
    """[(check, verdict, classification)] from the output of ``refdiff check``."""
    found = re.findall(r"^(PASS|FAIL)  (.+?)  \(.*\n(?:  ((?:finding|disagreement).*)\n)?", out,
                       flags=re.M)
    return [(check, verdict, why) for verdict, check, why in found]


@pytest.mark.parametrize("name", ["DDIMScheduler", "DDPMScheduler"])
def test_default_configuration_statement(name, capsys):
    """`refdiff check diffusers:<name>` with no --config prints the verdicts the docs state."""
    pytest.importorskip("diffusers")
    from refdiff.cli import main

    stated = _statement()[name]
    assert len(stated) == 4  # schedule, timesteps, step, loop
    status = main(["check", f"diffusers:{name}"])
    assert _verdicts(capsys.readouterr().out) == stated
    assert status == (1 if any(v == "FAIL" for _, v, _ in stated) else 0)
