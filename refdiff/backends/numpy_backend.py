"""The NumPy backend: normals from ``numpy.random.Generator``; no autograd."""

from __future__ import annotations

from typing import Any

import array_api_compat.numpy as np_xp
import numpy as np

from refdiff.backends import Backend


class NumpyBackend(Backend):
    """NumPy (host). Normals are drawn in float64 and cast, so a seed gives the same values
    (up to rounding) in every dtype."""

    name = "numpy"

    @property
    def xp(self):
        return np_xp

    def owns(self, a: Any) -> bool:
        return isinstance(a, (np.ndarray, np.generic))

    def generator(self, seed_or_generator: Any = None, device: Any = None):
        if isinstance(seed_or_generator, np.random.Generator):
            return seed_or_generator
        return np.random.default_rng(seed_or_generator)

    def normal(self, shape, *, dtype: Any = np.float64, device: Any = None,
               generator: Any = None):
        if device not in (None, "cpu"):
            raise ValueError(f"device must be None or 'cpu' for NumPy, got {device!r}")
        rng = self.generator(generator)
        return rng.standard_normal(tuple(shape)).astype(dtype, copy=False)

    def uniform(self, shape, *, dtype: Any = np.float64, device: Any = None,
                generator: Any = None):
        return self.generator(generator).random(tuple(shape)).astype(dtype, copy=False)

    def to_numpy(self, a: Any):
        return np.asarray(a)
