"""``refdiff check``: a report per check, exit 0 on agreement, 1 on a disagreement, 2 on bad
arguments (one line, no traceback)."""

import shutil
import subprocess
import sys
import textwrap

import pytest

from refdiff.cli import main

BUGGY = textwrap.dedent("""
    import math
    import refdiff as rd

    AB = rd.linear_schedule(1000).alphas_cumprod

    def ddim_step(x_t, eps, t, t_prev, *, eta, noise, num_inference_steps):
        a_t, a_prev = AB[t], (AB[t_prev] if t_prev >= 0 else 1.0)
        x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        var = eta * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)  # bug: eta, not eta**2
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - var, 0.0)) * eps
        return x + math.sqrt(var) * noise if t_prev >= 0 else x
""")


def test_refdiff_itself_passes(capsys):
    assert main(["check", "refdiff.testing.references:ddim_step", "--checks", "ddim",
                 "--max-examples", "40"]) == 0
    assert main(["check", "refdiff.testing.references:ddpm_step", "--checks", "ddpm",
                 "--max-examples", "40"]) == 0
    assert main(["check", "refdiff:cfg", "--checks", "cfg", "--option", "exact_ends=True"]) == 0
    out = capsys.readouterr().out
    assert "PASS  DDIM step" in out and "PASS  DDPM step" in out and "1 passed, 0 failed" in out
    # the DDIM step is not a DDPM step: the wrong check on the right function fails
    assert main(["check", "refdiff.testing.references:ddim_step", "--checks", "ddpm",
                 "--max-examples", "40"]) == 1


def test_refdiff_on_torch_float32(capsys):
    pytest.importorskip("torch")
    assert main(["check", "refdiff.testing.references:ddim_step", "--checks", "ddim",
                 "--backend", "torch", "--dtype", "float32", "--max-examples", "30"]) == 0


def test_user_function_with_a_bug_fails(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_sampler.py").write_text(BUGGY)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", "my_sampler:ddim_step", "--checks", "ddim"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  DDIM step" in out and "counterexample:" in out and "eta = 0.5" in out
    assert "expected = R.ddim_step(x_t" in out and "0 passed, 1 failed" in out
    assert main(["check", "my_sampler:ddim_step", "--checks", "ddim", "--option", "eta=1.0",
                 "--max-examples", "30"]) == 0  # at eta = 0 or 1 the bug is invisible


def test_module_in_the_current_directory_loads(tmp_path):
    """The console script, like ``python -m``, finds a module of the directory it runs in."""
    (tmp_path / "my_sampler.py").write_text(BUGGY)
    exe = shutil.which("refdiff")
    if exe is None:
        pytest.skip("the refdiff console script is not installed")
    proc = subprocess.run([exe, "check", "my_sampler:ddim_step", "--checks", "ddim",
                           "--max-examples", "40"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "FAIL  DDIM step" in proc.stdout, proc.stderr


def test_diffusers_trailing_fails_and_default_passes(capsys):
    pytest.importorskip("diffusers")
    assert main(["check", "diffusers:DDIMScheduler", "--config", "timestep_spacing=trailing",
                 "--checks", "ddim"]) == 1
    out = capsys.readouterr().out
    assert "timestep_spacing='trailing'" in out and "FAIL  DDIM step" in out
    assert main(["check", "diffusers:DDIMScheduler", "--checks", "ddim,loop"]) == 0


@pytest.mark.parametrize("args,message", [
    (["check"], "the following arguments are required: target"),
    (["check", "nocolon"], "target must be module:function"),
    (["check", "refdiff.testing.references:ddim_step"], "needs --checks"),
    (["check", "x:y", "--checks", "nope"], "unknown check 'nope'"),
    (["check", "diffusers:DDIMScheduler", "--config", "oops"], "--config expects key=value"),
    (["check", "diffusers:UNet", "--checks", "ddim"], "name must be 'DDIMScheduler'"),
])
def test_bad_arguments_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "refdiff", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
