"""This machine's copy bandwidth: the speed limit of a memory-bound element-wise operation.

A copy of a buffer larger than the caches reads it once and writes it once, so its rate
(2 × bytes / time) is the rate at which an ideal kernel moves data. The memory-traffic floor
of an operation is the bytes it must read and write once, divided by that rate.

Each probe returns the rate of its median and of its fastest sample; the floor uses the
fastest copy any CPU library managed (the machine's best, least disturbed rate), so that a
probe that happened to run in a noisy moment does not lower the floor.
"""

from __future__ import annotations

from benchmarks.timer import measure

MIB = 1 << 20


def numpy_copy_bandwidth(nbytes: int = 256 * MIB, rounds: int = 7) -> dict:
    """Bytes per second of ``np.copyto`` between two float32 buffers of ``nbytes``:
    ``{"median": ..., "best": ...}``."""
    import numpy as np

    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    s = measure({"copy": lambda: np.copyto(dst, src)}, rounds=rounds, warmup=1)["copy"]
    return {"median": 2 * nbytes / s.median, "best": 2 * nbytes / s.min}


def torch_copy_bandwidth(device: str = "cpu", nbytes: int = 256 * MIB, rounds: int = 7) -> dict:
    """Bytes per second of ``Tensor.copy_`` on ``device`` (synchronised on CUDA):
    ``{"median": ..., "best": ...}``."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else None
    s = measure({"copy": lambda: dst.copy_(src)}, rounds=rounds, warmup=1, sync=sync)["copy"]
    return {"median": 2 * nbytes / s.median, "best": 2 * nbytes / s.min}
