"""Every example runs in its quick mode, so the examples cannot rot; each runs in a temporary
current directory and leaves the committed files (docs/, examples/, the top folder) alone."""

import pathlib
import runpy
import re
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    """Examples import their helpers as scripts do, and run in an empty current directory;
    afterwards no committed file has changed."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.chdir(tmp_path)
    import _output

    before = _output.committed_state()
    yield
    assert _output.committed_state() == before, "an example wrote into the repository"


def _run(name, argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [name, *argv])
    module = runpy.run_path(str(EXAMPLES / f"{name}.py"))
    assert module["main"](argv) == 0
    return capsys.readouterr().out


def test_guidance_sweep(tmp_path, monkeypatch, capsys):
    out = _run("guidance_sweep", ["--quick", "--out-dir", str(tmp_path)], monkeypatch, capsys)
    # one table per sampler; rows "scale accuracy spread SW1": guidance must raise accuracy
    tables = [block for block in out.split("accuracy")[1:]]
    assert len(tables) == 2
    for table in tables:
        rows = [ln.split() for ln in table.splitlines()[1:] if ln.split()[:1]
                and ln.split()[0].replace(".", "").isdigit()]
        acc = {float(r[0]): float(r[1]) for r in rows if len(r) >= 4}
        assert len(acc) >= 2 and acc[max(acc)] > acc[min(acc)] + 0.2, acc


def test_cg_vs_cfg(tmp_path, monkeypatch, capsys):
    out = _run("cg_vs_cfg", ["--quick"], monkeypatch, capsys)
    diff = float(out.split("=")[-1].split()[0].splitlines()[0])
    assert diff < 1e-8
    pytest.importorskip("matplotlib")
    assert [p.name for p in tmp_path.iterdir()] == ["cg_vs_cfg.png"]  # the default: here


def test_schedules(tmp_path, monkeypatch, capsys):
    out = _run("schedules", ["--quick"], monkeypatch, capsys)
    assert "trailing  [999, 899" in out
    assert not any(tmp_path.iterdir())  # quick: the tables only


DIGITS = ["cfg_digits", "classifier_guidance_digits", "guidance_distillation_digits",
          "negative_condition_digits"]


@pytest.mark.parametrize("name", ["cg_vs_cfg", "schedules", *DIGITS])
@pytest.mark.parametrize("argv", [["--quick", "--write-docs"], ["--write-docs", "--out-dir", "x"]])
def test_write_docs_refuses_quick_results(name, argv, tmp_path, monkeypatch, capsys):
    """Only a full run may regenerate docs/ (``--write-docs``, alone): anything else is
    refused before any work, with exit status 2."""
    if name in DIGITS:  # the digits examples import torch and scikit-learn
        pytest.importorskip("torch")
        pytest.importorskip("sklearn")
    monkeypatch.setattr(sys, "argv", [name, *argv])
    module = runpy.run_path(str(EXAMPLES / f"{name}.py"))
    with pytest.raises(SystemExit) as exc:
        module["main"](argv)
    assert exc.value.code == 2 and "--write-docs" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_backend_swap(monkeypatch, capsys):
    pytest.importorskip("torch")
    out = _run("backend_swap", ["--quick"], monkeypatch, capsys)
    row = [line for line in out.splitlines() if line.startswith("torch cpu float64")][0]
    assert float(row.split()[-1]) < 1e-10


def test_audit_sampler(monkeypatch, capsys):
    out = _run("audit_sampler", ["--quick"], monkeypatch, capsys)
    tutorial = out.split("== diffusers")[0]
    assert tutorial.count("FAIL") == 4 and "PASS" not in tutorial  # every planted slip found
    if "diffusers not installed" not in out:
        assert "diffusers.DDIMScheduler(timestep_spacing='trailing')" in out
        assert "PASS  DDIM step" in out and "FAIL  DDPM step" in out


def test_mutation_report(monkeypatch, capsys):
    out = _run("mutation_report", ["--quick"], monkeypatch, capsys)
    caught = re.search(r"(\d+)/(\d+) mutants caught in every seed; (\d+)/(\d+) correct controls "
                       r"pass", out)
    assert caught and caught[1] == caught[2] and int(caught[1]) >= 17 and caught[3] == caught[4]
