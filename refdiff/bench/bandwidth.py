"""This machine's copy bandwidth: the speed limit of a memory-bound element-wise operation.

A copy of a buffer larger than the caches reads it once and writes it once, so its rate
(2 × bytes / time) is the rate at which an ideal kernel moves data. The memory-traffic floor
of an operation is the bytes it must read and write once, divided by that rate.
"""

from __future__ import annotations

from refdiff.bench.timer import measure

MIB = 1 << 20


def numpy_copy_bandwidth(nbytes: int = 256 * MIB, rounds: int = 7) -> float:
    """Bytes per second of ``np.copyto`` between two float32 buffers of ``nbytes``."""
    import numpy as np

    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    s = measure({"copy": lambda: np.copyto(dst, src)}, rounds=rounds, warmup=1)["copy"]
    return 2 * nbytes / s.median


def torch_copy_bandwidth(device: str = "cpu", nbytes: int = 256 * MIB, rounds: int = 7) -> float:
    """Bytes per second of ``Tensor.copy_`` on ``device`` (synchronised on CUDA)."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else None
    s = measure({"copy": lambda: dst.copy_(src)}, rounds=rounds, warmup=1, sync=sync)["copy"]
    return 2 * nbytes / s.median
