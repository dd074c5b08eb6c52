"""The benchmarks (``python -m benchmarks``, the repository's ``benchmarks/`` folder): the
harness runs on tiny inputs, the report names every target with a verdict, bad arguments fail
in one line, and ``--quick`` works end to end without touching the tracked files.

No timing is asserted anywhere: the numbers depend on the machine and its load.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import refdiff as rd
from benchmarks import cases as C
from benchmarks.cli import DOCS_PATHS, ROOT, _parse, _paths, main
from benchmarks.overhead import covered_names, public_calls
from benchmarks.report import TARGET_IDS, markdown, targets
from benchmarks.scaling import numpy_peak_bytes
from benchmarks.timer import measure


def test_timer_interleaves_and_reports_median_and_spread():
    calls = []
    stats = measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                    rounds=4, warmup=1, min_sample_s=0.0)
    assert set(stats) == {"a", "b"} and all(s.n == 4 and s.median >= 0 for s in stats.values())
    assert stats["a"].q1 <= stats["a"].median <= stats["a"].q3
    timed = calls[-8:]  # the 4 rounds, one call each, rotated order
    assert sorted(timed) == ["a"] * 4 + ["b"] * 4 and timed[:2] != timed[2:4]


def test_every_public_function_has_an_overhead_call():
    public = {n for n in rd.__all__ if callable(getattr(rd, n))
              and not isinstance(getattr(rd, n), type)}
    assert public == covered_names()
    for name, call in public_calls("numpy").items():
        call()  # each spec is a valid call


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hand_written_cases_compute_the_same_math_as_refdiff(dtype):
    cell = C.Cell("numpy", "cpu", dtype, (2, 4, 3, 3))
    ref, hand = C.refdiff_cases(cell), C.hand_cases(cell)
    tol = 1e-12 if dtype == "float64" else 2e-5
    for op in C.OPS:
        np.testing.assert_allclose(hand[op](), ref[op](), rtol=tol, atol=tol * 10, err_msg=op)


def test_diffusers_cases_agree_with_refdiff():
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    cell = C.Cell("torch", "cpu", "float64", (2, 4, 3, 3))
    d = C.diffusers_cases(cell)
    # the loop: diffusers' DDIM (leading spacing, last step to ᾱ = 1) is refdiff's default;
    # diffusers keeps its ᾱ table in float32 (measured 5e-8 relative over the 50 steps)
    np.testing.assert_allclose(d["loop50"]().numpy(), C.refdiff_cases(cell)["loop50"]().numpy(),
                               rtol=1e-6)


def test_numpy_peak_memory_sees_temporaries():
    def two_arrays():
        a = np.ones(1 << 20)
        return a, a + 1.0

    peak = numpy_peak_bytes(two_arrays)
    assert peak >= 2 * 8 * (1 << 20) * 0.99  # two 8 MiB arrays live at once


def _fake_results(**over):
    shape = [16, 4, 64, 64]
    ops = []
    for backend, impl, ms in [("torch-cpu", "refdiff", 1.0), ("torch-cpu", "hand", 0.95),
                              ("torch-cpu", "diffusers", 1.2), ("torch-cpu", "compiled", 0.5)]:
        ops.append(dict(op="guided_ddim", backend=backend, dtype="float32", shape=shape,
                        impl=impl, ms=ms, spread=0.05, gbps=10.0, x_floor=ms / 0.4,
                        vs_hand=ms / 0.95, floor_ms=0.4))
    res = dict(command="python -m benchmarks", date="today", wall_s=1.0, cuda=False, shapes=[shape],
               machine=dict(cpu="cpu", cores=2, platform="linux", python="3", numpy="2",
                            array_api_compat="1", commit="abc"),
               bandwidth={"numpy": 1e10}, ops=ops, compile=[], overhead=[
                   dict(library="numpy", function="ddim_step", us=12.0, hand_us=2.0,
                        step_function=True, spread=0.1)],
               scaling={"batch": [], "steps": [dict(library="numpy", steps=10, trajectory=False,
                                                    ms=1.0, peak_mib=1.0, shape=[1, 2])]})
    res.update(over)
    res["targets"] = targets(res)
    return res


def test_report_marks_every_target_met_or_not_with_a_reason():
    res = _fake_results(cold_compile={"import_s": 1.0, "startup_s": 3.0, "times": {}},
                        compile=[dict(op="guided_ddim", shape=[16, 4, 64, 64], compile_s=0.2,
                                      recompile_s=0.3,
                                      cold_compile_s=0.8, eager_ms=1.0, compiled_ms=0.5,
                                      break_even=400.0, break_even_cold=1600.0)])
    assert [t["id"] for t in res["targets"]] == list(TARGET_IDS)
    verdicts = {t["id"]: t["met"] for t in res["targets"]}
    assert verdicts["overhead_vs_hand"] is True  # +5%
    assert verdicts["faster_than_diffusers"] is True
    assert verdicts["compiled_floor_cpu"] is True  # 1.25×
    assert verdicts["compiled_floor_gpu"] is None  # no GPU: not measured, said plainly
    assert verdicts["tiny_overhead_numpy"] is True
    text = markdown(res)
    for t in res["targets"]:
        assert t["target"] in text and t["reason"]
    assert "not measured (no CUDA device used in this run)" in text
    assert "| guided_ddim | torch-cpu | (16,4,64,64) | 0.8 | 0.20 | 0.3 | 1 | 0.5 | 1600 | 400 |" in text


def test_report_says_not_met():
    res = _fake_results()
    for r in res["ops"]:
        r["ms"] *= 3 if r["impl"] == "refdiff" else 1
        r["vs_hand"] = r["ms"] / 0.95
    res["targets"] = targets(res)
    v = {t["id"]: t["met"] for t in res["targets"]}
    assert v["overhead_vs_hand"] is False and v["faster_than_diffusers"] is False
    assert "**not met**" in markdown(res)


@pytest.mark.parametrize("args,message", [
    (["--shapes", "a,b"], "--shapes must be ';'-separated lists of integers"),
    (["--shapes", "0,4"], "--shapes needs shapes of at least 2 positive sizes"),
    (["--rounds", "1"], "--rounds must lie in 3..1000"),
    (["--out", "/nonexistent-dir/x.md"], "does not exist"),
    (["--out", "report.txt"], "--out must be a .md file"),
    (["--write-docs", "--out", "x.md"], "--write-docs writes BENCHMARKS.md and docs/bench_*"),
    (["--write-docs", "--quick"], "--write-docs records a full run"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_arguments_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *args], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_default_paths_need_no_docs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _paths(_parse(["--quick"])) == (Path("benchmarks_report.md"),
                                          Path("benchmarks_report.json"),
                                          Path("benchmarks_report_scaling.png"))
    assert _paths(_parse(["--write-docs"])) == DOCS_PATHS  # the repository's, from any cwd


def test_refdiff_has_no_bench_command():
    # the benchmarks are source-tree tooling: the installed package neither ships nor imports them
    proc = subprocess.run([sys.executable, "-m", "refdiff", "bench"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "unknown command 'bench'" in proc.stderr
    package = Path(rd.__file__).parent
    assert not (package / "bench").exists()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "benchmarks" for n in names), path


def test_quick_end_to_end(tmp_path, monkeypatch, capsys):
    tracked = {p: p.stat().st_mtime_ns for p in DOCS_PATHS}
    monkeypatch.chdir(tmp_path)  # no docs/ folder here
    out = tmp_path / "bench.md"
    assert main(["--quick", "--quiet", "--out", str(out)]) == 0
    text = out.read_text()
    res = json.loads((tmp_path / "bench.json").read_text())
    assert [t["id"] for t in res["targets"]] == list(TARGET_IDS)
    for needle in ("## Targets", "## Operations", "## Per-call overhead", "## Scaling",
                   "python -m benchmarks --quick", res["machine"]["numpy"]):
        assert needle in text
    impls = {r["impl"] for r in res["ops"]}
    assert {"refdiff", "hand"} <= impls
    assert all(r["ms"] > 0 and r["x_floor"] > 0 for r in res["ops"])
    steps = [r for r in res["scaling"]["steps"] if r["library"] == "numpy"]
    flat = [r["peak_mib"] for r in steps if not r["trajectory"]]
    grows = [r["peak_mib"] for r in steps if r["trajectory"]]
    assert max(flat) <= 1.05 * min(flat) and grows[-1] > grows[0]  # memory, not time
    assert {p: p.stat().st_mtime_ns for p in DOCS_PATHS} == tracked  # tracked files untouched
    assert "wrote" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    assert (tmp_path / "bench_scaling.png").stat().st_size > 10_000


def test_benchmarks_md_is_the_report_of_the_recorded_results():
    # ``python -m benchmarks --write-docs`` writes BENCHMARKS.md from docs/bench_results.json:
    # the two and the code that renders the one from the other must not drift apart
    report, results, _ = DOCS_PATHS
    assert markdown(json.loads(results.read_text())) == report.read_text()
