"""Package-level promises: backend-free math modules, doctests, public names, backends."""

import ast
import doctest
import importlib
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import refdiff

PKG = pathlib.Path(refdiff.__file__).parent
MATH_MODULES = ["_xp", "schedules", "forward", "classifier_free", "classifier_guidance",
                "steps", "sampling", "oracle", "training", "distillation", "thresholding",
                "respacing", "presets", "fused", "guidance_variants", "scale_schedules",
                "_loop", "_prologue", "paths", "noise_levels", "solvers", "ode_sampling",
                "oracle_paths"]


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", MATH_MODULES)
def test_math_modules_import_neither_numpy_nor_torch(name):
    found = _imports(PKG / f"{name}.py") & {"numpy", "torch", "scipy", "jax", "cupy"}
    assert not found, f"refdiff/{name}.py imports {found}; get xp from the inputs instead"


def test_importing_refdiff_loads_no_torch():
    code = "import sys, refdiff; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", MATH_MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(f"refdiff.{name}"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_public_names_have_docstrings_with_references():
    for name in refdiff.__all__:
        obj = getattr(refdiff, name)
        if callable(obj) and not isinstance(obj, type(str)):
            doc = obj.__doc__ or ""
            assert doc.strip(), f"{name} has no docstring"
    for name in MATH_MODULES[1:]:
        mod = importlib.import_module(f"refdiff.{name}")
        assert "References" in mod.__doc__ and "arXiv:" in mod.__doc__, name


def test_backend_registry_and_lookup():
    from refdiff.backends import Backend, available_backends, get_backend, register_backend

    assert get_backend(np.ones(2)).name == "numpy"
    assert {"numpy", "torch", "array_api_strict"} <= set(available_backends())

    class Dummy(Backend):
        name = "dummy"

        def owns(self, a):
            return isinstance(a, list)

    register_backend("dummy", Dummy)
    try:
        assert get_backend("dummy").name == "dummy"
        assert get_backend([1.0]).name == "dummy"
    finally:
        from refdiff import backends
        backends._factories.pop("dummy")
        backends._instances.pop("dummy")


def test_backend_from_entry_point(monkeypatch):
    """A third-party backend advertised in the ``refdiff.backends`` entry-point group loads."""
    from importlib.metadata import EntryPoint

    from refdiff import backends

    ep = EntryPoint("ep_numpy", "refdiff.backends.numpy_backend:NumpyBackend", "refdiff.backends")
    monkeypatch.setattr(backends, "entry_points", lambda group: [ep] if group == "refdiff.backends" else [])
    monkeypatch.setattr(backends, "_entry_points_loaded", False)
    monkeypatch.setattr(backends, "_factories", {})
    monkeypatch.setattr(backends, "_instances", {})
    assert "ep_numpy" in backends.available_backends()
    assert backends.get_backend("ep_numpy").owns(np.ones(1))


@pytest.mark.parametrize("name", ["numpy", "torch", "array_api_strict"])
def test_backend_normals_are_seeded(name):
    pytest.importorskip(name)
    from refdiff.backends import get_backend

    b = get_backend(name)
    dtype = b.xp.float32
    z1 = b.to_numpy(b.normal((3, 4), dtype=dtype, generator=5))
    z2 = b.to_numpy(b.normal((3, 4), dtype=dtype, generator=5))
    assert np.array_equal(z1, z2) and z1.shape == (3, 4) and str(z1.dtype) == "float32"
    assert abs(float(z1.mean())) < 1.5 and 0.3 < float(z1.std()) < 2.0
    gen = b.generator(5)
    assert not np.array_equal(b.to_numpy(b.normal((3,), dtype=dtype, generator=gen)),
                              b.to_numpy(b.normal((3,), dtype=dtype, generator=gen)))


def test_strict_backend_normals_on_fake_device():
    xs = pytest.importorskip("array_api_strict")
    from refdiff.backends import get_backend

    dev = xs.Device("device1")
    z = get_backend("array_api_strict").normal((2,), dtype=xs.float32, device=dev, generator=0)
    assert z.device == dev and z.dtype == xs.float32


def test_torch_backend_grad_and_sync():
    torch = pytest.importorskip("torch")
    from refdiff.backends import get_backend

    b = get_backend(torch.ones(1))
    g = b.grad(lambda x: (x**2).sum(), torch.tensor([1.0, -2.0]))
    assert torch.equal(g, torch.tensor([2.0, -4.0]))
    b.synchronize("cpu")
    assert b.to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32
