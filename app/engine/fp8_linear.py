"""fp8 (e4m3) weights for the decoder layers' linear layers: half the memory of bf16, and fp8 GEMMs.

Each weight keeps one scale per output channel; each activation row gets its own scale on the fly
(row-wise scaling), and `torch._scaled_mm` multiplies in fp8 with fp32 accumulation. Embeddings, norms
and the output head stay in their original dtype.

On one 80 GB GPU this is what makes the 1M-token window fit: bf16 weights (15 GiB) and a 1M fp8 KV cache
(64 GiB) do not, fp8 weights (~7.5 GiB for the layers) and the same cache do.
"""

from __future__ import annotations

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 [M, K], fp32 scales [M, 1]) with each row's absolute max mapped to 448."""
    scale = (x.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
    return (x / scale.to(x.dtype)).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8Linear(nn.Module):
    """Drop-in replacement for an `nn.Linear`, with the weight stored as e4m3 plus per-channel scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight, scale = _quantize_rows(linear.weight.data)  # [out, in], [out, 1]
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.data, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        m = rows.shape[0]
        if m % 16:  # the fp8 GEMM wants row counts in multiples of 16 (decode has one row)
            rows = torch.nn.functional.pad(rows, (0, 0, 0, 16 - m % 16))
        xq, x_scale = _quantize_rows(rows)
        y = torch._scaled_mm(xq, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale,
                             out_dtype=x.dtype if x.dtype != torch.float32 else torch.bfloat16)
        y = y[:m].to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def quantize_layers(model) -> int:
    """Replace every nn.Linear inside the decoder layers with an Fp8Linear, one at a time. Returns bytes saved."""
    saved = 0
    for layer in model.model.layers:
        for parent in layer.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    saved += child.weight.numel() * (child.weight.element_size() - 1)
                    setattr(parent, name, Fp8Linear(child))
                    del child
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return saved
