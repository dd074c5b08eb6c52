"""``refdiff demo`` and the command line: runs, prints its table, and fails in one line."""

import subprocess
import sys

import pytest

from refdiff.cli import main


def test_demo_runs_quickly(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--samples", "300", "--steps", "20", "--scales", "0,1,3",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "SW1" in text and text.count("\n") >= 6
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    acc = {float(r[0]): float(r[1]) for r in rows}
    assert acc[1.0] > 0.95 and acc[0.0] < 0.6  # s = 0 unconditional, s = 1 class-conditional
    pytest.importorskip("matplotlib")
    assert out.exists() and out.stat().st_size > 10_000


def test_demo_on_torch(capsys):
    pytest.importorskip("torch")
    assert main(["demo", "--backend", "torch", "--samples", "60", "--steps", "5",
                 "--scales", "2", "--out", "/dev/null", "--no-progress"]) == 0


@pytest.mark.parametrize("args,message", [
    (["demo", "--scales", "a,b"], "--scales must be comma-separated numbers"),
    (["demo", "--steps", "0"], "--steps must lie in 1..1000"),
    (["demo", "--backend", "jax"], "--backend jax: unknown backend"),
    (["demo", "--device", "cuda"], "--device cuda needs --backend torch"),
    (["nope"], "unknown command 'nope'"),
])
def test_bad_arguments_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "refdiff", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
