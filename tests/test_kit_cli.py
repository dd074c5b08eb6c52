"""``refdiff check``: a report per check, exit 0 on agreement, 1 on a disagreement, 2 on bad
arguments (one line, no traceback)."""

import re
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


# -- the kit's own edges: every error is one line on stderr with exit status 2 -----------------

MODULES = {
    "boom_at_import": 'raise RuntimeError("boom at import")\n',
    "broken_syntax": "def f(:\n    pass\n",
    "no_function": "x = 1\n",
}

DIFFUSERS_ERRORS = [
    (["--config", "timestep_spacing=bogus"], "--config timestep_spacing='bogus'"),
    (["--config", "num_train_timesteps=-5"], "--config num_train_timesteps=-5: must be >= 2"),
    (["--config", "beta_schedule=sigmoid"], "--config beta_schedule='sigmoid'"),
    (["--config", "beta_start=abc"], "--config beta_start='abc': expected a finite number"),
    (["--config", "beta_start=-1.0"], "--config beta_start must lie in (0, 1]"),
    (["--config", "nonsense=1"], "--config nonsense: not a DDIMScheduler configuration key"),
    (["--config", "prediction_type=v_prediction"], "--config prediction_type='v_prediction'"),
    (["--option", "eta=abc"], "--option eta=abc: expected a number in [0, 1]"),
    (["--option", "nonsense=1"], "--option nonsense: not an option of"),
    (["--option", "final_alpha_bar=one"], "--option final_alpha_bar: set by the configuration"),
    (["--checks", "cfg"], "--checks cfg does not apply to diffusers:DDIMScheduler"),
    (["--backend", "torch"], "--backend applies to module:function targets"),
]

FUNCTION_ERRORS = [
    (["boom_at_import:f", "--checks", "ddim"],
     "cannot import 'boom_at_import': RuntimeError: boom at import"),
    (["broken_syntax:f", "--checks", "ddim"], "cannot import 'broken_syntax': SyntaxError"),
    (["no_such_module_here:f", "--checks", "ddim"],
     "cannot import 'no_such_module_here': ModuleNotFoundError"),
    (["no_function:f", "--checks", "ddim"], "module 'no_function' has no 'f'"),
    (["no_function:x", "--checks", "ddim"], "'no_function:x' is not callable"),
    (["refdiff:cfg", "--checks", "cfg", "--option", "eta=0.5"], "--option eta: not an option of cfg"),
    (["refdiff.testing.references:ddim_step", "--checks", "ddim", "--option", "eta=2"],
     "--option eta=2: expected a number in [0, 1]"),
    (["refdiff.testing.references:ddim_step", "--checks", "ddim", "--option",
      "final_alpha_bar=bogus"], "--option final_alpha_bar=bogus: expected one or alpha_bar_0"),
    (["refdiff.testing.references:ddim_step", "--checks", "loop", "--option",
      "variance_type=fixed_large"], "--option variance_type: not an option of the ddim loop"),
    (["refdiff.testing.references:ddpm_step", "--checks", "ddpm", "--option",
      "variance_type=learned_range"],
     "--option variance_type=learned_range: check 'ddpm' takes fixed_small or fixed_large"),
    (["refdiff.testing.references:ddim_step", "--checks", "ddim", "--option",
      "clip_x0=dynamic:2"], "--option clip_x0=dynamic:2: expected None, a number > 0 or dynamic"),
    (["refdiff:cfg", "--checks", "cfg", "--max-examples", "0"], "--max-examples must be >= 1, got 0"),
    (["refdiff:cfg", "--checks", "cfg", "--max-examples", "-3"], "--max-examples must be >= 1"),
    (["refdiff:cfg", "--checks", "cfg", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["refdiff:cfg", "--checks", "cfg", "--dtype", "bfloat16"], "--dtype bfloat16 needs --backend torch"),
    (["refdiff:cfg", "--checks", "cfg", "--config", "a=1"], "--config applies to diffusers targets"),
    (["refdiff:cfg", "--checks", ","], "--checks names no check"),
]


@pytest.fixture
def in_module_dir(tmp_path, monkeypatch):
    """A working directory holding the modules of MODULES (the CLI puts it first on sys.path)."""
    for name, source in MODULES.items():
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in MODULES:
        sys.modules.pop(name, None)


def _usage_error(args, capsys) -> str:
    assert main(["check", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("refdiff check: "), err
    return err


@pytest.mark.parametrize("args,message", DIFFUSERS_ERRORS, ids=[" ".join(a) for a, _ in DIFFUSERS_ERRORS])
def test_bad_diffusers_arguments(args, message, capsys):
    pytest.importorskip("diffusers")
    assert message in _usage_error(["diffusers:DDIMScheduler", *args], capsys)


def test_diffusers_learned_range_and_thresholding(capsys):
    """variance_type=learned_range runs the learned-variance step check (and no loop);
    thresholding=true is refdiff's DynamicThreshold with the configured ratio and maximum."""
    pytest.importorskip("diffusers")
    assert main(["check", "diffusers:DDPMScheduler", "--config", "variance_type=learned_range",
                 "--checks", "ddpm_learned", "--max-examples", "40"]) == 0
    out = capsys.readouterr().out
    assert "step check ddpm_learned, no loop check" in out
    assert "PASS  DDPM step, learned variance" in out
    assert main(["check", "diffusers:DDIMScheduler", "--config", "thresholding=true", "--config",
                 "sample_max_value=1.5", "--checks", "ddim", "--max-examples", "40"]) == 0
    out = capsys.readouterr().out
    assert "x0 thresholded: DynamicThreshold(ratio=0.995, max_value=1.5)" in out
    assert "PASS  DDIM step" in out
    err = _usage_error(["diffusers:DDPMScheduler", "--config", "variance_type=learned",
                        "--checks", "loop"], capsys)
    assert "--checks loop does not apply to diffusers:DDPMScheduler" in err


LEARNED_BUG = textwrap.dedent("""
    import math
    import numpy as np
    import refdiff as rd

    AB = rd.linear_schedule(1000).alphas_cumprod

    def ddpm_step(x_t, eps, t, t_prev, *, var_values, noise, num_inference_steps):
        a_t, a_prev = AB[t], (AB[t_prev] if t_prev >= 0 else 1.0)
        beta = 1 - a_t / a_prev
        x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        mean = (math.sqrt(a_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - a_prev) * x_t) / (1 - a_t)
        if t_prev < 0:
            return mean
        frac = var_values  # bug: (var_values + 1) / 2
        log_var = frac * math.log(beta) + (1 - frac) * math.log((1 - a_prev) / (1 - a_t) * beta)
        return mean + np.exp(0.5 * log_var) * noise

    def ddim_step(x_t, eps, t, t_prev, *, eta, noise, num_inference_steps):
        a_t, a_prev = AB[t], (AB[t_prev] if t_prev >= 0 else 1.0)
        x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        s = np.clip(np.quantile(np.abs(x0.reshape(len(x0), -1)), 0.95, axis=1), 1.0, 1.5)
        x0 = np.clip(x0, -s.reshape((-1,) + (1,) * (x0.ndim - 1)),
                     s.reshape((-1,) + (1,) * (x0.ndim - 1)))  # bug: not divided by s
        var = eta**2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - var, 0.0)) * eps
        return x + math.sqrt(var) * noise if t_prev >= 0 else x
""")


def test_learned_variance_and_threshold_bugs_are_caught(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_learned.py").write_text(LEARNED_BUG)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_learned", raising=False)
    assert main(["check", "my_learned:ddpm_step", "--checks", "ddpm_learned"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  DDPM step, learned variance" in out and "var_values = " in out
    assert "candidate(x_t, eps, t, t_prev, noise=noise, var_values=var_values" in out
    assert main(["check", "my_learned:ddim_step", "--checks", "ddim", "--option",
                 "clip_x0=dynamic:0.95:1.5", "--option", "rederive_eps=False"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  DDIM step" in out and "from refdiff.thresholding import DynamicThreshold" in out
    assert "clip_x0=DynamicThreshold(ratio=0.95, max_value=1.5)" in out
    sys.modules.pop("my_learned", None)


@pytest.mark.parametrize("args,message", FUNCTION_ERRORS, ids=[" ".join(a) for a, _ in FUNCTION_ERRORS])
def test_bad_function_arguments(args, message, in_module_dir, capsys):
    assert message in _usage_error(args, capsys)
    assert sys.path[0] != str(in_module_dir)  # sys.path is restored after the command


BLOCK_HYPOTHESIS = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "hypothesis":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
    from refdiff.cli import main
    sys.exit(main(["check", "refdiff:cfg", "--checks", "cfg"]))
""")


def test_missing_hypothesis_says_what_to_install():
    proc = subprocess.run([sys.executable, "-c", BLOCK_HYPOTHESIS], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert 'pip install "refdiff[testing]"' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_nothing_is_written_to_the_working_directory(tmp_path):
    """No .hypothesis/ (database or constants cache) appears where the command runs."""
    (tmp_path / "plain_cfg.py").write_text(
        "def cfg(eps_uncond, eps_cond, scale):\n    return eps_uncond + scale * (eps_cond - eps_uncond)\n")
    proc = subprocess.run([sys.executable, "-m", "refdiff", "check", "plain_cfg:cfg", "--checks",
                           "cfg", "--max-examples", "10"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain_cfg.py"]


def test_current_directory_comes_first(tmp_path, monkeypatch, capsys):
    """A module of the working directory wins over one of the same name later on sys.path."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    (here / "shadowed_cfg.py").write_text(
        "def cfg(eps_uncond, eps_cond, scale):\n    return eps_uncond + scale * (eps_cond - eps_uncond)\n")
    (elsewhere / "shadowed_cfg.py").write_text(
        "def cfg(eps_uncond, eps_cond, scale):\n    return eps_cond\n")
    monkeypatch.syspath_prepend(str(elsewhere))
    monkeypatch.delitem(sys.modules, "shadowed_cfg", raising=False)
    monkeypatch.chdir(here)
    try:
        assert main(["check", "shadowed_cfg:cfg", "--checks", "cfg", "--max-examples", "20"]) == 0
    finally:
        sys.modules.pop("shadowed_cfg", None)
    with pytest.raises(SystemExit) as stop:
        main(["check", "--help"])
    assert stop.value.code == 0
    assert "the current directory is put first on sys.path" in " ".join(capsys.readouterr().out.split())


FLIPPED_CFG = textwrap.dedent("""
    def cfg(eps_uncond, eps_cond, scale):
        return eps_uncond - scale * (eps_cond - eps_uncond)  # sign flipped
""")


def test_float16_torch_reproduction_fails_the_same_way(tmp_path, monkeypatch, capsys):
    """The printed snippet rebuilds the float16 torch inputs: pasted, it gives the same output,
    the same difference, and fails."""
    torch = pytest.importorskip("torch")
    from refdiff.testing import ConformanceError
    from refdiff.testing.tolerance import difference

    (tmp_path / "flipped_cfg.py").write_text(FLIPPED_CFG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flipped_cfg", raising=False)
    assert main(["check", "flipped_cfg:cfg", "--checks", "cfg", "--backend", "torch",
                 "--dtype", "float16"]) == 1
    out = capsys.readouterr().out
    snippet = "\n".join(ln[4:] for ln in out.split("  reproduce:\n", 1)[1].splitlines()
                        if ln.startswith("    "))
    assert "target = Target('torch', 'float16', 'cpu')" in snippet
    assert "target.rounded(eps_uncond)" in snippet and "candidate(target.put(eps_uncond)" in snippet
    body, last = snippet.rsplit("\n", 1)
    assert last.startswith("assert_close(actual, expected, dtype='float16', device='cpu'")
    namespace: dict = {}
    exec(compile(body, "reproduction", "exec"), namespace)
    assert namespace["actual"].dtype == torch.float16
    reported = re.search(r"max \|actual - expected\| = (\S+)   max relative", out).group(1)
    assert f"{difference(namespace['actual'], namespace['expected'])[0]:.3e}" == reported
    with pytest.raises(ConformanceError):
        exec(compile(last, "reproduction", "exec"), namespace)
    sys.modules.pop("flipped_cfg", None)
