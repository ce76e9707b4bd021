"""Where and in what precision a torch encoder runs: the device choice and the autocast dtype.

The device is CUDA when there is one, else Apple's MPS, else the CPU; an explicit device
overrides the choice (and is checked). Inference runs under autocast in bfloat16 on CUDA
GPUs that support it, float16 on older CUDA GPUs and on MPS, and in float32 on the CPU
unless a precision is asked for.
"""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mps_available() -> bool:
    """True when torch can use Apple's Metal GPU."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``device`` when given (checked), else CUDA, then MPS, then CPU.

    Parameters
    ----------
    device
        ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``, or None to choose.

    Raises
    ------
    ValueError
        If the string names no torch device, or a device this machine does not have (the
        message says which devices there are).
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a torch device (use cuda, cuda:N, mps or cpu)") from error
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (chosen.index is not None and chosen.index >= count):
            raise ValueError(
                f"device {device!r}: this machine has {count} CUDA device(s) visible to torch "
                f"{torch.__version__}; use device='cpu' or leave the device unset to choose"
            )
    elif chosen.type == "mps" and not mps_available():
        raise ValueError(f"device {device!r}: Apple MPS is not available here; use device='cpu'")
    elif chosen.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: only cpu, cuda and mps are supported")
    return chosen


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device`` at ``precision``, or None for float32 (no autocast).

    ``"auto"``: bfloat16 on CUDA GPUs that support it, else float16; float16 on MPS;
    none on the CPU. ``"bf16"``/``"fp16"`` force that dtype, ``"fp32"`` turns autocast off.

    Raises
    ------
    ValueError
        If ``precision`` is not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision != "auto":
        return _DTYPES[precision]
    if device.type == "cuda":
        # native bfloat16 from Ampere (compute capability 8.0) on; older GPUs only emulate it
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    if device.type == "mps":
        return torch.float16
    return None
