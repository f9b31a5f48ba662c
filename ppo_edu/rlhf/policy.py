"""A language model as a policy (Chapter 8): sampling, per-token log-probs, and a value head.

The sequence MDP: the state is the prompt plus the tokens generated so far, an action is the next
token, and the episode ends at ``<|endoftext|>`` or after ``max_new_tokens``. Shapes: ``(B, P)``
for prompts (left padded), ``(B, R)`` for responses (right padded after the end token).

Details that matter (each is tested):

* **Left padding and position ids.** Prompts of different lengths are padded on the left so that
  every row generates at the same column; position ids count only real tokens
  (``cumsum(mask) - 1``), so a padded prompt is seen exactly as an unpadded one.
* **Temperature in the log-probs.** Sampling at temperature tau draws from softmax(z / tau); the
  log-probs used in the PPO ratio and the KL must be of that same distribution.
* **Plain sampling.** No top-k, no minimum length: the KL to the reference is then an honest
  estimate, because both log-probs describe the distribution the tokens were really drawn from.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import packed

__all__ = ["Samples", "PolicyWithValue", "Critic", "encode_prompts", "sample", "position_ids", "response_mask",
           "response_logprobs", "trunk", "last_hidden_state"]


@dataclass
class Samples:
    """A batch of prompts and sampled responses."""
    query: torch.Tensor          # (B, P) left-padded prompt ids
    query_mask: torch.Tensor     # (B, P) 1 for real prompt tokens
    response: torch.Tensor       # (B, R) sampled ids, pad after the end token
    response_mask: torch.Tensor  # (B, R) 1 up to and including the end token
    ended: torch.Tensor          # (B,) True where the end token was generated

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query, self.response], dim=1)  # (B, P + R)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    def index(self, idx) -> "Samples":
        return Samples(self.query[idx], self.query_mask[idx], self.response[idx], self.response_mask[idx],
                       self.ended[idx])


def trunk(model: nn.Module) -> nn.Module:
    """The transformer body of a causal LM (``GPT2LMHeadModel.transformer``) or of a value model."""
    return model.transformer if hasattr(model, "transformer") else model


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: ``cumsum(mask) - 1``, clamped at 0 on pads."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def last_hidden_state(body: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The trunk's output ``(B, T, C)`` for left-padded ids, 0 on pads; a GPT-2 trunk runs on the real
    tokens only (``packed.hidden_states``: the same numbers as its own forward pass, less work)."""
    return packed.hidden_states(body, input_ids, mask, position_ids(mask))


def encode_prompts(tok, prompts: list[str], max_positions: int, max_new_tokens: int, device="cpu"):
    """Left-padded prompt ids and mask, with clear errors for empty or too-long prompts."""
    if not prompts:
        raise ValueError("prompts is empty; give at least one prompt string")
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        bad = next(p for p in prompts if not isinstance(p, str) or not p.strip())
        raise ValueError(f"every prompt must be a non-empty string; got {bad!r}")
    enc = tok(prompts, return_tensors="pt", padding=True)
    longest = int(enc["attention_mask"].sum(1).max())
    if longest + max_new_tokens > max_positions:
        raise ValueError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the model's "
                         f"context of {max_positions} positions; shorten the prompt or lower max_new_tokens")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def sample(model, query: torch.Tensor, query_mask: torch.Tensor, max_new_tokens: int, eos_id: int, pad_id: int,
           temperature: float = 1.0, generator: torch.Generator | None = None) -> Samples:
    """Plain ancestral sampling with a KV cache; rows stop at ``eos_id`` and are padded after it.

    Each token is drawn with the Gumbel-max trick, ``argmax(z / tau + g)`` with g ~ Gumbel(0, 1):
    exactly a draw from softmax(z / tau), and on a CPU about 3x cheaper than ``torch.multinomial``.
    ``packed.Decoder`` runs the prompts once and then only the rows still writing, one token at a time."""
    B, vocab = len(query), model.lm_head.out_features
    u = torch.rand((max_new_tokens, B, vocab), generator=generator, device=query.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))        # (R, B, V)
    response = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=query.device)
    decoder = packed.Decoder(trunk(model), query, query_mask, max_new_tokens, position_ids(query_mask))
    h, rows = decoder.h, torch.arange(B, device=query.device)          # (n, C) for the n rows still writing
    for t in range(max_new_tokens):
        nxt = torch.argmax(model.lm_head(h).float() / temperature + gumbel[t, rows], dim=-1)  # (n,) ~ softmax(z / tau)
        response[rows, t] = nxt
        rows, nxt = rows[nxt != eos_id], nxt[nxt != eos_id]           # a row that wrote the end token is done
        if t == max_new_tokens - 1 or len(rows) == 0:
            break
        h = decoder(nxt, rows)
    return Samples(query, query_mask, response, response_mask(response, eos_id, pad_id),
                   (response == eos_id).any(dim=1))


def response_mask(response: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """1 for every token up to and including the first end token (pad ids that were sampled stay real)."""
    is_eos = (response == eos_id).long()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0                      # strictly after the first eos
    return (~after_eos).long()


def response_logprobs(model, s: Samples, temperature: float = 1.0, with_entropy: bool = False,
                      with_dist: bool = False):
    """log pi(a_t | s_t) of every response token at ``temperature``: ``(B, R)``, 0 on pads; plus values if
    the model has a value head (``PolicyWithValue``), the entropy if asked, and with ``with_dist`` the
    log-probs of the whole vocabulary at every response state, ``logp_all``: ``(B, R, V)``. The
    vocabulary head runs on the real response tokens only (``m``)."""
    P, m = s.query.shape[1], s.response_mask.bool()
    h = last_hidden_state(trunk(model), s.input_ids, s.attention_mask)
    h_act = h[:, P - 1:-1]                                            # (B, R, C): states before each token
    logits = model.lm_head(h_act[m]).float() / temperature            # (n, V) at the n real tokens
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, s.response[m].unsqueeze(-1)).squeeze(-1)  # (n,)
    out = {"logp": unpack(logp, m)}
    if isinstance(model, PolicyWithValue):
        out["values"] = model.value_head(h_act).squeeze(-1).float()
    if with_entropy:
        out["entropy"] = unpack(-(logp_all.exp() * logp_all).sum(-1), m)
    if with_dist:
        out["logp_all"] = unpack(logp_all, m)
    return out


def unpack(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Values ``(n, ...)`` at the n True places of a mask ``(B, R)`` back into ``(B, R, ...)``, 0 elsewhere."""
    return x.new_zeros(m.shape + x.shape[1:]).index_put((m,), x)


def zero_head(width: int) -> nn.Linear:
    """A scalar value head initialised to zero: V = 0 everywhere before training."""
    head = nn.Linear(width, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class PolicyWithValue(nn.Module):
    """A causal LM and a zero-initialised scalar value head on its last hidden state (shared trunk)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.value_head = zero_head(lm.config.n_embd)

    @property
    def transformer(self):
        return self.lm.transformer

    @property
    def lm_head(self):
        return self.lm.lm_head

    @property
    def config(self):
        return self.lm.config


class Critic(nn.Module):
    """A separate value model: its own transformer body (copied from a given one) and a zero-initialised head."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.transformer = body
        self.value_head = zero_head(body.config.n_embd)

    def forward(self, s: Samples) -> torch.Tensor:
        P = s.query.shape[1]
        h = last_hidden_state(self.transformer, s.input_ids, s.attention_mask)
        return self.value_head(h[:, P - 1:-1]).squeeze(-1).float()     # (B, R)
