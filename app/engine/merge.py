"""Two softmax attentions over disjoint key sets, combined exactly through their log-sum-exps: the one merge that
the cached/new split, the key blocks, the shards and FlashAttention-3's fp8 path all use."""

from __future__ import annotations

import torch


def merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor,
          layout: str = "bhtd") -> tuple[torch.Tensor, torch.Tensor]:
    """Combine (out_a, lse_a) and (out_b, lse_b): out [B, H, T, D] ("bhtd") or [B, T, H, D] ("bthd"), any float
    dtype; lse [B, H, T] fp32. Returns (out fp32 in the same layout, lse)."""
    lse = torch.logaddexp(lse_a, lse_b)
    wa, wb = torch.exp(lse_a - lse), torch.exp(lse_b - lse)  # [B, H, T]
    if layout == "bthd":
        wa, wb = wa.transpose(1, 2), wb.transpose(1, 2)  # [B, T, H]
    return out_a.float() * wa.unsqueeze(-1) + out_b.float() * wb.unsqueeze(-1), lse
