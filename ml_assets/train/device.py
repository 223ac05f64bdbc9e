"""Where training runs: CUDA when present, else the CPU."""

from __future__ import annotations

import os


def select_device(preference: str = "auto"):
    """Return a ``torch.device``: ``auto`` picks ``cuda`` when available, else ``cpu``.

    ``cuda``/``cuda:N`` fails with a clear error when no GPU is visible rather than falling back
    silently; ``cpu`` always works.
    """
    import torch

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} asked for, but torch sees no CUDA device")
    return device


def configure_threads(threads: int | None = None) -> int:
    """Limit torch's CPU threads (default: the cores this process may use); return the count."""
    import torch

    if not threads:
        affinity = getattr(os, "sched_getaffinity", None)  # Linux only
        threads = len(affinity(0)) if affinity else os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads
