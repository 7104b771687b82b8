"""Choosing the torch device and autocast settings. Imports no Qt; imports torch lazily."""

from __future__ import annotations

import os

from ..errors import WssegError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto"):
    """Return a ``torch.device`` for ``'auto'`` (CUDA if available, else CPU), ``'cpu'``, ``'cuda'``
    or ``'cuda:N'``. On the CPU, torch uses every core unless ``OMP_NUM_THREADS`` is set."""
    import torch

    name = str(device).lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise WssegError(
            f"device '{device}' requested but no CUDA GPU is visible to torch; use --device cpu "
            "or install a CUDA build of torch (see docs/install.md)"
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise WssegError(f"unknown device '{device}'; use one of {', '.join(DEVICE_CHOICES)}")
    if name == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Use every core the process may run on, unless the user chose a thread count.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    return torch.device(name)


def autocast_dtype(device):
    """bf16 autocast on CUDA, none on the CPU (returns a torch dtype or None)."""
    import torch

    return torch.bfloat16 if device.type == "cuda" else None
