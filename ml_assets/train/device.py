"""Where training runs: CUDA when present, else the CPU."""

from __future__ import annotations

import os


def select_device(preference: str = "auto"):
    """Return a ``torch.device``: ``auto`` picks ``cuda``, then ``mps``, then ``cpu``.

    ``cuda``/``cuda:N`` fails with a clear error when no GPU is visible rather than falling back
    silently; ``cpu`` always works.
    """
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} asked for, but torch sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RuntimeError(
            f"device {preference!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)"
        )
    if device.type == "mps" and not has_mps:
        raise RuntimeError(f"device {preference!r} asked for, but torch sees no MPS device")
    return device


def configure_threads(threads: int | None = None) -> int:
    """Limit torch's CPU threads (default: the cores this process may use); return the count."""
    import torch

    if not threads:
        affinity = getattr(os, "sched_getaffinity", None)  # Linux only
        threads = len(affinity(0)) if affinity else os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def set_deterministic(enabled: bool) -> None:
    """Switch torch's deterministic algorithms on or off for this process (cuDNN autotuning
    off while on); CUDA's cuBLAS also needs CUBLAS_WORKSPACE_CONFIG, set here when missing."""
    import torch

    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    # Only on a change: the call imports torch._inductor's config, about a second of CPU.
    if enabled != torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(enabled, warn_only=True)
