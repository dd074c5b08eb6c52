"""The array-api-strict backend: the standard and nothing else (including its fake devices).

Used by the tests to prove that the math uses only the array API standard. Normals come from
NumPy's generator (the standard has no random module) and are moved to the requested device.
"""

from __future__ import annotations

from typing import Any

import array_api_strict as xs
import numpy as np

from refdiff.backends import Backend, _describe
from refdiff.backends.numpy_backend import NumpyBackend


class StrictBackend(Backend):
    """array-api-strict, on its CPU device or one of its fake devices. Seeds and generators
    are NumPy's, exactly as for the NumPy backend."""

    name = "array_api_strict"
    generator_types = NumpyBackend.generator_types
    generator_doc = NumpyBackend.generator_doc
    seed_types = NumpyBackend.seed_types
    default_dtype = xs.float64
    _new_generator = NumpyBackend._new_generator

    @property
    def xp(self) -> Any:
        return xs

    def owns(self, a: Any) -> bool:
        return type(a).__module__.split(".")[0] == "array_api_strict"

    def _device(self, device: Any) -> Any:
        if device is not None and not isinstance(device, xs.Device):
            raise ValueError(f"device must be None or an array_api_strict.Device (e.g. "
                             f"array_api_strict.Device('device1')), got {_describe(device)}")
        return device

    def _normal(self, shape: Any, dtype: Any, device: Any, generator: Any) -> Any:
        return self._put(generator.standard_normal(shape), dtype, device)

    def _uniform(self, shape: Any, dtype: Any, device: Any, generator: Any) -> Any:
        return self._put(generator.random(shape), dtype, device)

    @staticmethod
    def _put(host: np.ndarray, dtype: Any, device: Any) -> Any:
        return xs.asarray(xs.asarray(host, dtype=xs.float64), dtype=dtype, device=device)

    def to_numpy(self, a: Any) -> Any:
        host = a.to_device(xs.Device("CPU_DEVICE"))
        return np.from_dlpack(host).copy()
