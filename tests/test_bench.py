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
from benchmarks import gpu
from benchmarks import loops as L
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
    # the fused fast path: same math, other rounding (|s|·|B|·(|ε_u| + |ε_c|), s = 7.5)
    np.testing.assert_allclose(C.fused_cases(cell)["guided_ddim"](), hand["guided_ddim"](),
                               rtol=tol * 20, atol=tol * 200)


def test_compiled_loop_case_counts_one_compilation_and_agrees_with_eager():
    pytest.importorskip("torch")
    cell = C.Cell("torch", "cpu", "float32", (2, 4, 3, 3))
    call, info = L.torch_loop(cell, backend="aot_eager")  # traced, no code generation
    assert (info["compilations"], info["after_first_step"], info["later_compilations"]) == \
        (1, 0, 0) and info["steps"] == C.STEPS and info["backend"] == "torch-cpu"
    assert info["first_run_s"] > 0 and info["compile_s"] >= 0
    np.testing.assert_allclose(call().numpy(), C.refdiff_cases(cell)["loop50"]().numpy(),
                               rtol=1e-4, atol=1e-4)


def test_jax_cases_compute_the_same_math():
    pytest.importorskip("jax")
    diffs = L.jax_matches_numpy()
    assert set(diffs) == {"refdiff:guided_ddim", "fused:guided_ddim", "hand:guided_ddim",
                          "hand:loop50", "compiled:loop50"}
    # float32 arrays and float32 traced ᾱ (JAX's default); the loop runs 50 steps
    assert all(d < 1e-4 for k, d in diffs.items() if k.endswith("guided_ddim")), diffs
    assert all(d < 5e-3 for k, d in diffs.items() if k.endswith("loop50")), diffs


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


def _row(op, backend, shape, impl, ms, hand_ms, floor_ms=0.4, dtype="float32"):
    return dict(op=op, backend=backend, dtype=dtype, shape=list(shape), impl=impl, ms=ms,
                spread=0.05, gbps=10.0, floor_ms=floor_ms, x_floor=ms / floor_ms,
                vs_hand=ms / hand_ms, rounds=5, calls_per_round=1)


def _loop(backend, shape, after=0, later=0):
    return dict(backend=backend, shape=list(shape), dtype="float32", impl="compiled", steps=50,
                first_run_s=2.0, steady_run_s=0.1, compile_s=1.9, compilations=1,
                after_first_step=after, later_compilations=later, cuda_graphs=False)


SMALL, MID, BIG = [1, 4, 64, 64], [16, 4, 64, 64], [64, 4, 128, 128]


def _fake_results(**over):
    """Results of a fake full run: every target measurable, and met (GPU: not measured)."""
    ops = []
    for sh in (SMALL, MID, BIG):
        for impl, ms in [("refdiff", 1.0), ("fused", 0.8), ("hand", 0.95), ("diffusers", 2.0),
                         ("compiled", 0.5)]:
            ops.append(_row("guided_ddim", "torch-cpu", sh, impl, ms, 0.95))
        for impl, ms in [("refdiff", 1.0), ("fused", 0.9), ("hand", 0.95)]:
            ops.append(_row("guided_ddim", "jax-cpu", sh, impl, ms, 0.95))
        for backend, impls in [("torch-cpu", [("refdiff", 50.0), ("hand", 48.0),
                                              ("compiled", 25.0)]),
                               ("jax-cpu", [("hand", 48.0), ("compiled", 24.0)])]:
            for impl, ms in impls:  # floor 20 ms per loop: 0.4 ms per step
                ops.append(_row("loop50", backend, sh, impl, ms, 48.0, floor_ms=20.0))
    loops = [_loop(b, sh) for b in ("torch-cpu", "jax-cpu") for sh in (SMALL, MID, BIG)]
    res = dict(command="python -m benchmarks", date="today", wall_s=1.0, cuda=False,
               shapes=[SMALL, MID, BIG],
               machine=dict(cpu="cpu", cores=2, platform="linux", python="3", numpy="2",
                            array_api_compat="1", commit="abc", jax="0.10"),
               bandwidth={"numpy": 1e10}, ops=ops, compile=[], loops=loops, overhead=[
                   dict(library="numpy", function="ddim_step", us=12.0, hand_us=2.0,
                        step_function=True, spread=0.1)],
               scaling={"batch": [], "steps": [dict(library="numpy", steps=10, trajectory=False,
                                                    ms=1.0, peak_mib=1.0, shape=[1, 2])]})
    res.update(over)
    res["targets"] = targets(res)
    return res


def _verdicts(res):
    res["targets"] = targets(res)
    return {t["id"]: t["met"] for t in res["targets"]}


def test_report_marks_every_target_met_or_not_with_a_reason():
    res = _fake_results(cold_compile={"import_s": 1.0, "startup_s": 3.0, "times": {}},
                        compile=[dict(op="guided_ddim", shape=[16, 4, 64, 64], compile_s=0.2,
                                      recompile_s=0.3,
                                      cold_compile_s=0.8, eager_ms=1.0, compiled_ms=0.5,
                                      break_even=400.0, break_even_cold=1600.0)])
    assert [t["id"] for t in res["targets"]] == list(TARGET_IDS)
    verdicts = {t["id"]: t["met"] for t in res["targets"]}
    assert verdicts == {"overhead_vs_hand": True,  # +5%
                        "guided_step_vs_hand": True,  # fused 0.84× hand
                        "fused_vs_diffusers": True,  # 2.5×
                        "compiled_loop_cpu": True,  # 1.25× the floor, no recompilation
                        "jax_timed": True,  # reported: measured
                        "compiled_loop_gpu": None,  # no GPU: not measured, said plainly
                        "host_overhead_gpu": None,
                        "tiny_overhead_numpy": True}
    text = markdown(res)
    for t in res["targets"]:
        assert t["target"] in text and t["reason"]
    assert "not measured (no CUDA device used in this run" in text
    assert "python -m benchmarks --gpu" in text  # the GPU preset, in the header
    assert ("| guided_ddim | torch-cpu | (16,4,64,64) | 0.8 | 0.20 | 0.3 | 1 | 0.5 | 1600 | 400 |"
            in text)
    # the compiled-loop table: per step = loop50 / 50, floor per step, compilations
    assert ("| torch-cpu | (16,4,64,64) | 1000 | 500 | 960 | 400 | 1.25 | 1.90 | — | 1 | 0 | 0 |"
            in text)
    assert "the 50-step loop is therefore timed eager only" not in text
    value = {t["id"]: t["value"] for t in res["targets"]}
    assert "fused/hand: (1,4,64,64) 0.84×, (16,4,64,64) 0.84×" in value["guided_step_vs_hand"]
    assert "spec form/hand: (1,4,64,64) 1.05×" in value["guided_step_vs_hand"]
    assert "diffusers/fused = 2.50× at (64,4,128,128)" in value["fused_vs_diffusers"]
    assert "500 µs per step = 1.25× the floor, recompilations after step 1: 0" in \
        value["compiled_loop_cpu"]


def _set_ms(res, ms, **match):
    for r in res["ops"]:
        if all(r[k] == v for k, v in match.items()):
            r["vs_hand"] *= ms / r["ms"]
            r["x_floor"] *= ms / r["ms"]
            r["ms"] = ms


def test_guided_step_target_reads_the_fused_rows_at_both_shapes():
    res = _fake_results()
    _set_ms(res, 1.2, op="guided_ddim", impl="fused", backend="torch-cpu", shape=SMALL)
    assert _verdicts(res)["guided_step_vs_hand"] is False  # 1.26× at (1,4,64,64) only
    res = _fake_results()
    _set_ms(res, 1.5, op="guided_ddim", impl="refdiff", backend="torch-cpu")
    assert _verdicts(res)["guided_step_vs_hand"] is True  # the spec form is reported only
    res = _fake_results(ops=[r for r in _fake_results()["ops"] if r["shape"] != SMALL])
    assert _verdicts(res)["guided_step_vs_hand"] is None


def test_diffusers_target_needs_2x_at_the_big_shape_and_says_why_not():
    res = _fake_results()
    _set_ms(res, 1.5, op="guided_ddim", impl="diffusers", backend="torch-cpu", shape=BIG)
    assert _verdicts(res)["fused_vs_diffusers"] is False  # 1.88×
    reason = [t for t in res["targets"] if t["id"] == "fused_vs_diffusers"][0]["reason"]
    assert "1.88×" in reason and "traffic ratio, 1.8×" in reason
    _set_ms(res, 5.0, op="guided_ddim", impl="diffusers", backend="torch-cpu", shape=SMALL)
    assert _verdicts(res)["fused_vs_diffusers"] is False  # other shapes do not count


@pytest.mark.parametrize("change,met", [
    (dict(after=1), False), (dict(later=1), False), (dict(ms=31.0), False),  # 1.55× floor
    (dict(ms=29.0), True),
    (dict(shape=SMALL, ms=40.0), True),  # 2× the floor at (1,4,64,64): not a target shape
    (dict(drop=MID), None)])
def test_compiled_loop_target_needs_no_recompilation_and_the_floor(change, met):
    res = _fake_results()
    shape = change.get("shape", BIG)
    for info in res["loops"]:
        if info["backend"] == "torch-cpu" and info["shape"] == shape:
            info["after_first_step"] = change.get("after", 0)
            info["later_compilations"] = change.get("later", 0)
    if "ms" in change:
        _set_ms(res, change["ms"], op="loop50", impl="compiled", backend="torch-cpu",
                shape=shape)
    if "drop" in change:
        res["loops"] = [i for i in res["loops"] if i["shape"] != change["drop"]]
    assert _verdicts(res)["compiled_loop_cpu"] is met


def test_jax_target_is_met_when_measured_only():
    res = _fake_results()
    assert _verdicts(res)["jax_timed"] is True
    res["ops"] = [r for r in res["ops"] if r["backend"] != "jax-cpu"]
    assert _verdicts(res)["jax_timed"] is None


def _cuda_part(after=0):
    ops = [_row("loop50", "torch-cuda", sh, impl, ms, 10.0, floor_ms=10.0)
           for sh in (MID, BIG) for impl, ms in [("compiled", 12.0), ("hand", 10.0)]]
    return dict(tests={"command": "python -m pytest -q -m cuda", "rc": 0,
                       "summary": "12 passed in 3.0s", "wall_s": 3.0},
                gpu="Fake GPU", shapes=[MID, BIG], bandwidth={"torch-cuda": 1e12},
                bandwidth_probes={"torch-cuda": {"median": 9e11, "best": 1e12}}, ops=ops,
                compile=[], loops=[_loop("torch-cuda", sh, after=after) for sh in (MID, BIG)],
                host_overhead=[dict(backend="torch-cuda", shape=SMALL, steps=50,
                                    host_us_per_step=80.0, us_per_step=82.0)],
                wall_s=9.0)


def test_gpu_merge_replaces_cuda_rows_and_measures_the_gpu_targets():
    base = _fake_results()
    stale = dict(_row("loop50", "torch-cuda", MID, "compiled", 99.0, 10.0), stale=True)
    base["ops"].append(stale)
    res = gpu.merge(base, _cuda_part(), command="python -m benchmarks --gpu", date="now")
    assert not any(r.get("stale") for r in res["ops"])  # earlier CUDA rows replaced
    cpu = [r for r in base["ops"] if r["backend"] != "torch-cuda"]
    assert [r for r in res["ops"] if r["backend"] != "torch-cuda"] == cpu  # CPU rows kept
    v = {t["id"]: t["met"] for t in res["targets"]}
    assert v["compiled_loop_gpu"] is True and v["host_overhead_gpu"] is True  # 1.2× ≤ 1.3×
    assert v["compiled_loop_cpu"] is True
    text = markdown(res)
    assert "## GPU preset" in text and "12 passed in 3.0s" in text and "Fake GPU" in text
    assert "| (1,4,64,64) | 80 | 82 |" in text
    assert "CUDA rows: not measured" not in text
    res = gpu.merge(base, _cuda_part(after=2), command="x", date="now")
    assert {t["id"]: t["met"] for t in res["targets"]}["compiled_loop_gpu"] is False


def test_gpu_preset_without_cuda_says_so_and_writes_nothing(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gpu, "cuda_available", lambda: False)
    tracked = {p: p.stat().st_mtime_ns for p in DOCS_PATHS}
    assert main(["--gpu", "--quiet"]) == 0
    assert gpu.NO_CUDA in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in DOCS_PATHS} == tracked
    assert main(["--gpu", "--out", str(tmp_path / "g.md")]) == 0
    assert not list(tmp_path.iterdir())


def test_gpu_preset_needs_recorded_results(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu, "cuda_available", lambda: True)
    assert main(["--gpu", "--out", str(tmp_path / "none.md")]) == 2  # before any timing
    err = capsys.readouterr().err
    assert "run the CPU benchmark first" in err and len(err.strip().splitlines()) == 1


def test_report_says_not_met():
    res = _fake_results()
    for r in res["ops"]:
        if r["impl"] in ("refdiff", "fused"):
            r["ms"] *= 3
            r["vs_hand"] *= 3
    res["targets"] = targets(res)
    v = {t["id"]: t["met"] for t in res["targets"]}
    assert v["overhead_vs_hand"] is False and v["guided_step_vs_hand"] is False
    assert v["fused_vs_diffusers"] is False
    assert "**not met**" in markdown(res)


@pytest.mark.parametrize("args,message", [
    (["--shapes", "a,b"], "--shapes must be ';'-separated lists of integers"),
    (["--shapes", "0,4"], "--shapes needs shapes of at least 2 positive sizes"),
    (["--rounds", "1"], "--rounds must lie in 3..1000"),
    (["--out", "/nonexistent-dir/x.md"], "does not exist"),
    (["--out", "report.txt"], "--out must be a .md file"),
    (["--write-docs", "--out", "x.md"], "--write-docs writes BENCHMARKS.md and docs/bench_*"),
    (["--write-docs", "--quick"], "--write-docs records a full run"),
    (["--gpu", "--quick"], "--gpu times the CUDA rows of a full run"),
    (["--gpu", "--write-docs"], "drop --write-docs"),
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
    assert {"refdiff", "fused", "hand"} <= impls
    assert "## Compiled sampling loop" in text
    if res["jax"]:  # the jitted JAX step and loop, in the same run
        jax_rows = {(r["op"], r["impl"]) for r in res["ops"] if r["backend"] == "jax-cpu"}
        assert jax_rows == {("guided_ddim", "refdiff"), ("guided_ddim", "fused"),
                            ("guided_ddim", "hand"), ("loop50", "compiled"), ("loop50", "hand")}
        assert [i["after_first_step"] for i in res["loops"]] == [0]
        assert {t["id"]: t["met"] for t in res["targets"]}["jax_timed"] is True
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
