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

__all__ = ["supports", "hidden_states", "KVCache", "Decoder"]


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


def attention(attn: nn.Module, h: torch.Tensor, real: torch.Tensor, allowed: torch.Tensor, shape,
              kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One GPT-2 attention layer on packed tokens: ``h`` is ``(N, C)`` at the flat positions ``real``
    of a ``(B, T)`` batch; returns ``(N, C)``. With ``kv``, a layer's ``(keys, values)`` cache of
    ``(B, H, L, d)`` each, the keys and values of the T positions are also written into its first T columns."""
    (B, T), (N, C) = shape, h.shape
    H = attn.num_heads
    qkv = attn.c_attn(h)                                              # (N, 3C)
    full = qkv.new_zeros(B * T, 3 * C).index_copy(0, real, qkv)      # (B T, 3C), pads 0
    q, k, v = full.view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)   # each (B, H, T, d)
    if kv is not None:
        kv[0][:, :, :T], kv[1][:, :, :T] = k, v
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=attn.scaling)  # (B, H, T, d)
    o = o.transpose(1, 2).reshape(B * T, C).index_select(0, real)    # (N, C)
    return attn.c_proj(o)


def hidden_states(body: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor,
                  position_ids: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
    """The trunk's last hidden state ``(B, T, C)``, 0 on pads, computed on the real tokens only: each
    block adds attention and then the MLP to the residual stream, ``x <- x + attn(ln_1(x))``,
    ``x <- x + mlp(ln_2(x))``, and ``ln_f`` ends the trunk (GPT-2's pre-norm block). A ``cache``
    (GPT-2 trunks only) receives every layer's keys and values."""
    if not supports(body):
        out = body(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
        return out * mask[..., None].to(out.dtype)
    B, T = input_ids.shape
    real = mask.reshape(-1).nonzero().squeeze(1)                     # (N,) flat positions of real tokens
    allowed = attention_mask(mask)
    x = (body.wte(input_ids) + body.wpe(position_ids)).view(B * T, -1).index_select(0, real)  # (N, C)
    for i, block in enumerate(body.h):
        kv = None if cache is None else (cache.keys[i], cache.values[i])
        x = x + attention(block.attn, block.ln_1(x), real, allowed, (B, T), kv)
        x = x + block.mlp(block.ln_2(x))
    x = body.ln_f(x)
    return x.new_zeros(B * T, x.shape[1]).index_copy(0, real, x).view(B, T, -1)


# ---------------------------------------------------------------- sampling: one token at a time
class KVCache:
    """Every layer's keys and values for B rows and up to L positions, preallocated: ``(B, H, L, d)``
    each, and ``mask`` ``(B, L)``, True where a position holds a real token."""

    def __init__(self, body: nn.Module, B: int, L: int, device, dtype):
        H, C = body.config.n_head, body.config.n_embd
        self.keys = [torch.zeros(B, H, L, C // H, device=device, dtype=dtype) for _ in body.h]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.mask = torch.zeros(B, L, dtype=torch.bool, device=device)


class Decoder:
    """The network half of sampling with a KV cache (Chapter 8): built on the prompts ``(B, P)``, it
    holds ``h``, the last hidden state ``(B, C)`` of each prompt; ``decoder(tokens, rows)`` appends one
    token to each of the rows still writing and returns their next hidden states ``(n, C)``.

    Rows that have finished run no more: with a GPT-2 trunk each step computes the n rows in ``rows``
    only, against a preallocated cache; another trunk runs all B rows with its own ``past_key_values``."""

    def __init__(self, body: nn.Module, query: torch.Tensor, query_mask: torch.Tensor, max_new_tokens: int,
                 position_ids: torch.Tensor):
        self.body, self.col = body, query.shape[1]                    # col: the next token's column
        self.pos = position_ids[:, -1] + 1                            # (B,) the next token's position
        if supports(body):
            self.cache = KVCache(body, len(query), self.col + max_new_tokens, query.device, body.wte.weight.dtype)
            self.cache.mask[:, :self.col] = query_mask.bool()
            self.h = hidden_states(body, query, query_mask, position_ids, self.cache)[:, -1]
        else:
            self.cache = None
            self.mask = torch.cat([query_mask, query_mask.new_ones(len(query), max_new_tokens)], 1)
            self.out = body(input_ids=query, attention_mask=query_mask, position_ids=position_ids, use_cache=True)
            self.h = self.out.last_hidden_state[:, -1]

    def __call__(self, tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            return self._full_batch(tokens, rows)
        body, c, pos = self.body, self.col, self.pos[rows]
        self.cache.mask[rows, c] = True
        allowed = self.cache.mask[rows, None, None, :c + 1]           # (n, 1, 1, c + 1): real keys
        x = body.wte(tokens) + body.wpe(pos)                          # (n, C)
        for i, block in enumerate(body.h):
            x = x + self._attend(block.attn, block.ln_1(x), i, rows, allowed)
            x = x + block.mlp(block.ln_2(x))
        self.col += 1
        self.pos += 1
        return body.ln_f(x)

    def _attend(self, attn: nn.Module, h: torch.Tensor, i: int, rows: torch.Tensor, allowed) -> torch.Tensor:
        """Attention of the n new tokens ``(n, C)`` over their rows' cached keys and values of layer i."""
        (n, C), H, c = h.shape, attn.num_heads, self.col
        q, k, v = attn.c_attn(h).view(n, 3, H, C // H).unbind(1)      # each (n, H, d)
        keys, values = self.cache.keys[i], self.cache.values[i]
        keys[rows, :, c], values[rows, :, c] = k, v
        o = F.scaled_dot_product_attention(q[:, :, None], keys[rows, :, :c + 1], values[rows, :, :c + 1],
                                           attn_mask=allowed, scale=attn.scaling)   # (n, H, 1, d)
        return attn.c_proj(o.reshape(n, C))

    def _full_batch(self, tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Any trunk: all B rows through its own forward pass with ``past_key_values``; finished rows get pads."""
        ids = torch.full_like(self.pos, self.body.config.pad_token_id or 0).index_copy(0, rows, tokens)
        self.col += 1
        self.out = self.body(input_ids=ids[:, None], attention_mask=self.mask[:, :self.col],
                             position_ids=self.pos[:, None], past_key_values=self.out.past_key_values, use_cache=True)
        self.pos = self.pos + 1
        return self.out.last_hidden_state[rows, -1]
