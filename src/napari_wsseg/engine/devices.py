"""Choosing the torch device and autocast settings. Imports no Qt; imports torch lazily."""

from __future__ import annotations

import os
import re

from ..errors import WssegError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
_CUDA_INDEX = re.compile(r"cuda:\d{1,3}")


def check_device_name(device: str) -> str:
    """Return ``device`` lower-cased if it names a device :func:`resolve_device` knows.

    Checks only the spelling (no torch import), so every method refuses a typo before training,
    even one such as rf that never uses torch.

    Raises
    ------
    WssegError
        For any other name, listing the valid ones.

    Examples
    --------
    >>> check_device_name("CUDA:1")
    'cuda:1'
    >>> check_device_name("tpu9")
    Traceback (most recent call last):
    ...
    napari_wsseg.errors.WssegError: unknown device 'tpu9'; use one of auto, cpu, cuda or cuda:N
    """
    name = str(device).strip().lower()
    if name in DEVICE_CHOICES or _CUDA_INDEX.fullmatch(name):
        return name
    raise WssegError(
        f"unknown device {_quote(device)}; use one of {', '.join(DEVICE_CHOICES)} or cuda:N"
    )


def _quote(text, limit: int = 40) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def resolve_device(device: str = "auto"):
    """Return a ``torch.device`` for ``'auto'`` (CUDA if available, else CPU), ``'cpu'``, ``'cuda'``
    or ``'cuda:N'``. On the CPU, torch uses every core unless ``OMP_NUM_THREADS`` is set."""
    name = check_device_name(device)
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise WssegError(
            f"device '{device}' requested but no CUDA GPU is visible to torch; use --device cpu "
            "or install a CUDA build of torch (see docs/install.md)"
        )
    if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise WssegError(
            f"device '{device}': torch sees {torch.cuda.device_count()} CUDA GPU(s); use cuda:0 "
            f"to cuda:{torch.cuda.device_count() - 1} or auto"
        )
    if name == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Use every core the process may run on, unless the user chose a thread count.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    return torch.device(name)


def autocast_dtype(device):
    """bf16 autocast on CUDA, none on the CPU (returns a torch dtype or None)."""
    import torch

    return torch.bfloat16 if device.type == "cuda" else None
