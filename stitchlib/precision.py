"""How a computation's arithmetic is done: float32 or bfloat16 autocast, eager or compiled.

"fp32" is plain float32 everywhere. "bf16" runs the convolutions and matrix products of training,
stitching and evaluation under `torch.autocast(dtype=torch.bfloat16)`: weights, optimiser state and
gradients stay float32 (no loss scaling is needed: bfloat16 has float32's exponent range), and every
float64 computation (CKA, the stitcher's least-squares initialisation) stays float64, since autocast
never touches float64 operations. On a GPU with bfloat16 tensor cores this is the fast path; on a
CPU without AMX it is slower than float32 and only useful to test the path.

Both choices change numbers (bfloat16 rounds products to 8 bits of mantissa; a compiled graph fuses
and reorders operations), so both are part of every artifact's store key.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

__all__ = ["PRECISIONS", "check_precision", "autocast", "compiled"]

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, device: torch.device | str | None = None) -> None:
    """A ValueError naming the valid precisions for an unknown one, and for "bf16" on a device
    that has no bfloat16 arithmetic (a CUDA GPU older than Ampere)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {list(PRECISIONS)}")
    if precision == "bf16" and device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            name = torch.cuda.get_device_name(device)
            raise ValueError(f"precision='bf16' asked for on {name}, which has no bfloat16 arithmetic (it needs "
                             "compute capability 8.0 or later: A100, H100, H200, RTX 30xx and newer); use "
                             "precision='fp32'")
        if device.type not in ("cuda", "cpu"):
            raise ValueError(f"precision='bf16' is supported on 'cuda' and 'cpu' devices, not {device.type!r}; use "
                             "precision='fp32'")


def autocast(device: torch.device | str, precision: str):
    """The context a computation at `precision` runs in on `device` (nothing for "fp32")."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


class _CompiledOrEager(nn.Module):
    """`torch.compile(model)`, falling back to `model` itself, with a warning that says why, when
    compiling is unavailable or fails at the first call (compilation is lazy in torch). Holds no
    parameters of its own: the state dict stays the model's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.eager = [model]  # a list, so that the model is not registered twice
        self.fast = None
        try:
            self.fast = torch.compile(model)
        except Exception as err:  # noqa: BLE001 - any failure means: run eagerly
            self._fall_back(err)

    def _fall_back(self, err: Exception) -> None:
        self.fast = None
        warnings.warn(f"torch.compile is unavailable or failed ({type(err).__name__}: {str(err)[:300]}); running "
                      "the model eagerly (same results up to rounding, slower on a GPU)", RuntimeWarning,
                      stacklevel=3)

    def forward(self, *args, **kwargs):
        if self.fast is not None:
            try:
                return self.fast(*args, **kwargs)
            except Exception as err:  # noqa: BLE001
                if isinstance(err, (KeyboardInterrupt, torch.cuda.OutOfMemoryError)):
                    raise
                self._fall_back(err)
        return self.eager[0](*args, **kwargs)


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """What to call for `model`'s forward: `torch.compile`'d when `enabled` (with an eager
    fallback and a warning if compiling fails), else the model itself."""
    return _CompiledOrEager(model) if enabled else model
