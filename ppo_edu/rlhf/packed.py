"""GPT-2's forward pass on the real tokens only (Chapter 8): the same numbers, less work.

A batch of left-padded prompts and right-padded responses is largely padding: on cpu-tiny about half
of a PPO minibatch's ``(B, T)`` positions are pads. Every matrix product of a transformer block
(the attention projections and the MLP) and every layer norm acts on each token alone, so they can
run on the real tokens packed into one ``(N, C)`` matrix, N = number of real tokens. Only attention
mixes tokens; it scatters the packed queries, keys and values back into the ``(B, T)`` layout for one
``scaled_dot_product_attention`` call, masked to causal attention over real keys, and gathers the
real rows again.

At every real token the result equals ``GPT2Model``'s own forward pass with the same ``attention_mask``
and ``position_ids`` (the same operations on the same rows; ``tests/test_rlhf.py`` checks it); pads come
out as 0. A trunk that is not a plain GPT-2 (another architecture, cross-attention, dropout while
training) runs its own forward pass instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["supports", "hidden_states"]


def supports(body: nn.Module) -> bool:
    """Whether ``body`` is a plain GPT-2 trunk that :func:`hidden_states` can run packed."""
    from transformers import GPT2Model

    if not isinstance(body, GPT2Model) or body.config.add_cross_attention:
        return False
    cfg = body.config
    return not body.training or cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0


def attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """``(B, 1, T, T)``: query i sees key j <= i when key j is real; a pad query sees itself only
    (its row is thrown away, but an all-masked row would give NaN)."""
    T = mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
    diagonal = torch.eye(T, dtype=torch.bool, device=mask.device)
    return (causal & (mask.bool()[:, None, :] | diagonal))[:, None]


def attention(attn: nn.Module, h: torch.Tensor, real: torch.Tensor, allowed: torch.Tensor, shape) -> torch.Tensor:
    """One GPT-2 attention layer on packed tokens: ``h`` is ``(N, C)`` at the flat positions ``real``
    of a ``(B, T)`` batch; returns ``(N, C)``."""
    (B, T), (N, C) = shape, h.shape
    H = attn.num_heads
    qkv = attn.c_attn(h)                                              # (N, 3C)
    full = qkv.new_zeros(B * T, 3 * C).index_copy(0, real, qkv)      # (B T, 3C), pads 0
    q, k, v = full.view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)   # each (B, H, T, d)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=attn.scaling)  # (B, H, T, d)
    o = o.transpose(1, 2).reshape(B * T, C).index_select(0, real)    # (N, C)
    return attn.c_proj(o)


def hidden_states(body: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor,
                  position_ids: torch.Tensor) -> torch.Tensor:
    """The trunk's last hidden state ``(B, T, C)``, 0 on pads, computed on the real tokens only: each
    block adds attention and then the MLP to the residual stream, ``x <- x + attn(ln_1(x))``,
    ``x <- x + mlp(ln_2(x))``, and ``ln_f`` ends the trunk (GPT-2's pre-norm block)."""
    if not supports(body):
        out = body(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
        return out * mask[..., None].to(out.dtype)
    B, T = input_ids.shape
    real = mask.reshape(-1).nonzero().squeeze(1)                     # (N,) flat positions of real tokens
    allowed = attention_mask(mask)
    x = (body.wte(input_ids) + body.wpe(position_ids)).view(B * T, -1).index_select(0, real)  # (N, C)
    for block in body.h:
        x = x + attention(block.attn, block.ln_1(x), real, allowed, (B, T))
        x = x + block.mlp(block.ln_2(x))
    x = body.ln_f(x)
    return x.new_zeros(B * T, x.shape[1]).index_copy(0, real, x).view(B, T, -1)
