"""nn.MultiheadAttention as calibration sees it: MHA applies its fused q|k|v projection and
out_proj functionally, so no hook would see them; `unfused` gives it a forward that calls both
as modules and otherwise computes what MHA computes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InProj", "unfused"]


class InProj(nn.Module):
    """The fused q|k|v projection of an `nn.MultiheadAttention`, as a module of its own: MHA
    applies it (and out_proj) functionally, so no hook would see them otherwise. It holds no
    parameters: it reads the attention module's own."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "tasklift aligns nn.MultiheadAttention with one fused q|k|v projection only "
                "(no kdim/vdim, bias_k/bias_v or add_zero_attn)"
            )
        self.owner = [mha]  # a list, so it is not registered as a child

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mha = self.owner[0]
        return F.linear(x, mha.in_proj_weight, mha.in_proj_bias)


def unfused(mha: nn.MultiheadAttention, in_proj: InProj):
    """A forward for self-attention `mha` that calls `in_proj` and `mha.out_proj` as modules
    (so their hooks fire) and otherwise computes what MHA computes."""

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):  # fmt: skip
        if not (query is key is value):
            raise ValueError("tasklift calibrates self-attention (query is key is value) only")
        x = query if mha.batch_first else query.transpose(0, 1)  # (B, T, d)
        b, t, d = x.shape
        h = mha.num_heads
        q, k, v = in_proj(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None
        for m in (attn_mask, None if key_padding_mask is None else key_padding_mask[:, None, None]):
            if m is not None:
                m = (
                    torch.zeros(m.shape, dtype=q.dtype, device=m.device).masked_fill(
                        m, float("-inf")
                    )
                    if m.dtype == torch.bool
                    else m
                )
                mask = m if mask is None else mask + m
        p = mha.dropout if mha.training else 0.0
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal
        )
        out = mha.out_proj(o.transpose(1, 2).reshape(b, t, d))
        return (out if mha.batch_first else out.transpose(0, 1)), None

    return forward
