"""Device and precision choices: CUDA when present, else CPU; bf16 where supported, fp32 on CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class Hardware:
    device: Literal["cpu", "cuda"]
    precision: Precision
    name: str  # human-readable, for the manifest

    @property
    def torch_dtype_name(self) -> str:
        return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[self.precision]


def detect(device: str = "auto", precision: str = "auto") -> Hardware:
    import torch

    on_cuda = torch.cuda.is_available() and device != "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if precision == "auto":
        if not on_cuda:
            # Mixed precision on CPU is slower than fp32 on most CPUs and numerically riskier.
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if not on_cuda and precision == "fp16":
        raise RuntimeError("training.precision fp16 needs a GPU; use fp32 or bf16 on CPU")
    name = torch.cuda.get_device_name(0) if on_cuda else f"cpu ({torch.get_num_threads()} threads)"
    return Hardware("cuda" if on_cuda else "cpu", precision, name)  # type: ignore[arg-type]


def resolve_dtype(choice: str, hardware: Hardware) -> str:
    """The weights dtype for `model.dtype` (auto follows the training precision)."""
    return hardware.torch_dtype_name if choice == "auto" else choice
