"""The array-api-strict backend: the standard and nothing else (including its fake devices).

Used by the tests to prove that the math uses only the array API standard. Normals come from
NumPy's generator (the standard has no random module) and are moved to the requested device.
"""

from __future__ import annotations

from typing import Any

import array_api_strict as xs
import numpy as np

from refdiff.backends import Backend


class StrictBackend(Backend):
    """array-api-strict, on its CPU device or one of its fake devices."""

    name = "array_api_strict"

    @property
    def xp(self):
        return xs

    def owns(self, a: Any) -> bool:
        return type(a).__module__.split(".")[0] == "array_api_strict"

    def generator(self, seed_or_generator: Any = None, device: Any = None):
        if isinstance(seed_or_generator, np.random.Generator):
            return seed_or_generator
        return np.random.default_rng(seed_or_generator)

    def normal(self, shape, *, dtype: Any = xs.float64, device: Any = None,
               generator: Any = None):
        z = self.generator(generator).standard_normal(tuple(shape))
        return xs.asarray(xs.asarray(z, dtype=xs.float64), dtype=dtype, device=device)

    def uniform(self, shape, *, dtype: Any = xs.float64, device: Any = None,
                generator: Any = None):
        u = self.generator(generator).random(tuple(shape))
        return xs.asarray(xs.asarray(u, dtype=xs.float64), dtype=dtype, device=device)

    def to_numpy(self, a: Any):
        host = a.to_device(xs.Device("CPU_DEVICE"))
        return np.from_dlpack(host).copy()
