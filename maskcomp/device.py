"""Where computation runs: device choice, mixed-precision dtype and the autocast context, for training and inference."""
from __future__ import annotations

import contextlib

import torch

from .errors import MaskcompError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """auto -> CUDA when present, else CPU; `key` names the config entry in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MaskcompError(f"{key}={name} but CUDA is not available here; use {key}=auto or cpu")
    return torch.device(name)


def amp_dtype_of(name: str):
    if name not in ("bf16", "fp16", "none"):
        raise MaskcompError(f"train.amp '{name}' is unknown; use bf16, fp16 or none")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[name]


def autocast(device: torch.device, amp_dtype):
    """bf16/fp16 autocast on CUDA; CPU always runs fp32."""
    if device.type == "cuda" and amp_dtype is not None:
        return torch.autocast("cuda", dtype=amp_dtype)
    return contextlib.nullcontext()
