"""``refdiff demo`` and the command line: runs, prints its table, and fails in one line."""

import os
import subprocess
import sys

import pytest

import refdiff
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


def test_demo_on_torch(tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["demo", "--backend", "torch", "--samples", "60", "--steps", "5",
                 "--scales", "2", "--out", os.devnull, "--no-progress"]) == 0
    assert "figure: none" in capsys.readouterr().out


def _refdiff(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "refdiff", *args], capture_output=True,
                          text=True, cwd=cwd, env=env)


@pytest.mark.parametrize("args,message", [
    (["demo", "--scales", "a,b"], "--scales must be comma-separated numbers"),
    (["demo", "--scales", ","], "--scales needs at least one value"),
    (["demo", "--scales", "nan"], "--scales: each scale must be finite with |s| <= 1000"),
    (["demo", "--scales", "inf"], "--scales: each scale must be finite"),
    (["demo", "--scales", "1,1e308"], "--scales: each scale must be finite with |s| <= 1000, got 1e+308"),
    (["demo", "--scales=-1001"], "--scales: each scale must be finite"),
    (["demo", "--scales"], "argument --scales: expected one argument"),
    (["demo", "--steps", "0"], "--steps must lie in 1..1000"),
    (["demo", "--steps", "1001"], "--steps must lie in 1..1000"),
    (["demo", "--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
    (["demo", "--samples", "2"], "--samples must lie in 3..1000000"),
    (["demo", "--seed", "-1"], "--seed must lie in 0..4294967295, got -1"),
    (["demo", "--seed", "1.5"], "argument --seed: invalid int value"),
    (["demo", "--sampler", "euler"], "argument --sampler: invalid choice: 'euler'"),
    (["demo", "--backend", "nonesuch"], "--backend nonesuch: unknown backend"),
    (["demo", "--backend"], "argument --backend: expected one argument"),
    (["demo", "--device", "cuda"], "--device cuda needs --backend torch"),
    (["demo", "--device", "foo"], "--device foo needs --backend torch"),
    (["demo", "--backend", "torch", "--device", "foo"], "--device foo: not a torch device"),
    (["demo", "--backend", "torch", "--device", "meta"], "--device meta: not usable here"),
    (["demo", "--out", "/nonexistent/dir/x.png"], "--out /nonexistent/dir/x.png: the folder"),
    (["demo", "--out", "x.txt"], "--out must be a .png path"),
    (["demo", "--out", "."], "--out must be a .png path"),
    (["demo", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["nope"], "unknown command 'nope'"),
])
def test_bad_arguments_one_line(args, message, tmp_path):
    """Exit status 2, one line on stderr naming the option, nothing written, no work done."""
    if "torch" in args:
        pytest.importorskip("torch")
    proc = _refdiff(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""  # checked before the sweep: not even the header was printed
    assert not any(tmp_path.iterdir())


def test_bad_cuda_device_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    proc = _refdiff("demo", "--backend", "torch", "--device", "cuda", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and not any(tmp_path.iterdir())
    assert proc.stderr.strip() == "refdiff demo: --device cuda: no CUDA device is available"


def test_version():
    proc = _refdiff("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"refdiff {refdiff.__version__}"
    assert refdiff.__version__ == "0.6.0"


def test_demo_help_is_plain_text_with_defaults():
    proc = _refdiff("demo", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())  # argparse wraps to the terminal's width
    assert "``" not in text and "`" not in text
    for default in ("(default: numpy)", "(default: 0,1,2,4,8)", "(default: 100)",
                    "(default: 3000)", "(default: ddim)", "(default: 0)",
                    "(default: refdiff_demo.png)", "|s| <= 1000"):
        assert default in text, default


def test_no_progress_lines_without_tqdm(tmp_path):
    """Without tqdm, refdiff.sample(progress=True) would print a counter line every tenth of
    each run (about 50 lines for the default sweep): the demo asks for progress only when
    tqdm can draw a bar; its rows, printed as each scale finishes, are the progress."""
    code = ("import sys; sys.modules['tqdm'] = None\n"
            "from refdiff.cli import main\n"
            "sys.exit(main(['demo', '--samples', '60', '--steps', '20', '--out', 'd.png']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "sampling: step" not in proc.stdout
    assert len(proc.stdout.splitlines()) == 10  # header, floor, column names, 5 rows, figure, time
