"""The NumPy backend: normals from ``numpy.random.Generator``; no autograd."""

from __future__ import annotations

from typing import Any

import array_api_compat.numpy as np_xp
import numpy as np

from refdiff.backends import Backend, _describe


class NumpyBackend(Backend):
    """NumPy (host). Normals are drawn in float64 and cast, so a seed gives the same values
    (up to rounding) in every dtype. Its generators are ``numpy.random.Generator`` objects;
    NumPy's ``SeedSequence`` and ``BitGenerator`` are taken as seeds, as by
    ``numpy.random.default_rng``. The only device is the host (``None`` or ``"cpu"``)."""

    name = "numpy"
    generator_types = (np.random.Generator,)
    generator_doc = "a numpy.random.Generator"
    seed_types = (np.random.SeedSequence, np.random.BitGenerator)
    default_dtype = np.float64

    @property
    def xp(self) -> Any:
        return np_xp

    def owns(self, a: Any) -> bool:
        return isinstance(a, (np.ndarray, np.generic))

    def _new_generator(self, seed: Any, device: Any) -> Any:
        return np.random.default_rng(seed)

    def _device(self, device: Any) -> Any:
        if device is not None and not (isinstance(device, str) and device == "cpu"):
            raise ValueError(f"device must be None or 'cpu' for NumPy, got {device!r}")
        return device

    def _dtype(self, dtype: Any) -> Any:
        try:
            dt = np.dtype(dtype)
        except TypeError:
            dt = None
        if dt is None or dt.kind != "f":
            raise TypeError(f"dtype must be a real floating NumPy dtype (e.g. numpy.float64), "
                            f"got {_describe(dtype)}")
        return dt

    def _normal(self, shape: Any, dtype: Any, device: Any, generator: Any) -> Any:
        return generator.standard_normal(shape).astype(dtype, copy=False)

    def _uniform(self, shape: Any, dtype: Any, device: Any, generator: Any) -> Any:
        return generator.random(shape).astype(dtype, copy=False)

    def to_numpy(self, a: Any) -> Any:
        return np.asarray(a)
