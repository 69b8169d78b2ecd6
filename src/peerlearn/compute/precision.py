"""Float32 precision of CUDA convolutions and matrix products."""

from __future__ import annotations

import torch


def use_tf32(on: bool) -> None:
    """Let cuDNN convolutions and CUDA matrix products round through TF32 (faster, ~1e-3 relative
    precision), or keep them strict float32. Process-wide; no effect on CPU arithmetic.

    PyTorch's own defaults differ between the two (TF32 convolutions, float32 matmuls); this sets
    both, so a run is either all TF32 or all float32.
    """
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on
