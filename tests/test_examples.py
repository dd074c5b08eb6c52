"""Every example runs in its quick mode, so the examples cannot rot."""

import pathlib
import runpy
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def _run(name, argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [name, *argv])
    module = runpy.run_path(str(EXAMPLES / f"{name}.py"))
    assert module["main"](argv) == 0
    return capsys.readouterr().out


def test_guidance_sweep(tmp_path, monkeypatch, capsys):
    out = _run("guidance_sweep", ["--quick", "--out-dir", str(tmp_path)], monkeypatch, capsys)
    assert out.count("accuracy") == 2


def test_cg_vs_cfg(tmp_path, monkeypatch, capsys):
    out = _run("cg_vs_cfg", ["--quick", "--out", str(tmp_path / "c.png")], monkeypatch, capsys)
    diff = float(out.split("=")[-1].split()[0].splitlines()[0])
    assert diff < 1e-8


def test_schedules(tmp_path, monkeypatch, capsys):
    out = _run("schedules", ["--quick"], monkeypatch, capsys)
    assert "trailing  [999, 899" in out


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
    assert "12/12 mutants caught in every seed; 11/11 correct controls pass" in out
