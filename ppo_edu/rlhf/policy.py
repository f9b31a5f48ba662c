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
* **Real tokens only.** A GPT-2 trunk runs on the batch's real tokens packed together
  (``packed_hidden_states``), and sampling runs only the rows still writing (``Decoder``): pads and
  finished rows cost nothing, and every real token gets the model's own numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Samples", "PolicyWithValue", "Critic", "encode_prompts", "sample", "position_ids", "response_mask",
           "response_logprobs", "response_states", "states_before_tokens", "trunk", "last_hidden_state", "packable",
           "packed_hidden_states", "Queries", "KVCache", "Decoder"]


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


def last_hidden_state(body: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor,
                      at: torch.Tensor | None = None) -> torch.Tensor:
    """The trunk's output ``(B, T, C)`` for left-padded ids, 0 on pads; a GPT-2 trunk runs on the real
    tokens only (``packed_hidden_states``: the same numbers as its own forward pass, less work). With
    ``at``, a ``(B, T)`` bool mask, only the states there: ``(k, C)`` in row-major order."""
    return packed_hidden_states(body, input_ids, mask, position_ids(mask), at=at)


def response_states(s: "Samples") -> torch.Tensor:
    """``(B, P + R)`` bool: the positions whose states choose the real response tokens (the last prompt
    token and every real response token but the last), in the order of ``response_mask``."""
    P, at = s.query.shape[1], torch.zeros_like(s.attention_mask, dtype=torch.bool)
    at[:, P - 1:-1] = s.response_mask.bool()
    return at


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
    ``Decoder`` runs the prompts once and then only the rows still writing, one token at a time.
    Every step draws B x V uniforms, but turns only the rows still writing into Gumbel noise; after
    the last step, the uniforms of the steps not taken are drawn too, so that the generator ends
    where a full-length run leaves it (on a CPU, R draws of (B, V) are one draw of (R, B, V))."""
    B, vocab, device = len(query), model.lm_head.out_features, query.device
    response = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    decoder = Decoder(trunk(model), query, query_mask, max_new_tokens, position_ids(query_mask))
    h, rows = decoder.h, torch.arange(B, device=device)                # (n, C) for the n rows still writing
    t = -1
    for t in range(max_new_tokens):
        u = torch.rand((B, vocab), generator=generator, device=device)[rows]                 # (n, V)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
        nxt = torch.argmax(model.lm_head(h).float() / temperature + gumbel, dim=-1)  # (n,) ~ softmax(z / tau)
        response[rows, t] = nxt
        rows, nxt = rows[nxt != eos_id], nxt[nxt != eos_id]           # a row that wrote the end token is done
        if t == max_new_tokens - 1 or len(rows) == 0:
            break
        h = decoder(nxt, rows)
    if t < max_new_tokens - 1:                                        # the unused steps' uniforms
        torch.rand((max_new_tokens - 1 - t, B, vocab), generator=generator, device=device)
    return Samples(query, query_mask, response, response_mask(response, eos_id, pad_id),
                   (response == eos_id).any(dim=1))


def response_mask(response: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """1 for every token up to and including the first end token (pad ids that were sampled stay real)."""
    is_eos = (response == eos_id).long()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0                      # strictly after the first eos
    return (~after_eos).long()


def response_logprobs(model, s: Samples, temperature: float = 1.0, with_entropy: bool = False,
                      with_dist: bool | str = False):
    """log pi(a_t | s_t) of every response token at ``temperature``: ``(B, R)``, 0 on pads; plus values if
    the model has a value head (``PolicyWithValue``), the entropy if asked, and with ``with_dist`` the
    log-probs of the whole vocabulary at every response state, ``logp_all``: ``(B, R, V)``, or with
    ``with_dist="real"`` at the n real response tokens only, ``(n, V)`` in the order of ``response_mask``.
    The vocabulary head runs on the real response tokens only (``m``), at the states
    ``states_before_tokens`` gives (only those, when no gradient is taken)."""
    m = s.response_mask.bool()
    h_act = states_before_tokens(trunk(model), s)                     # (B, R, C)
    logits = model.lm_head(h_act[m]).float() / temperature            # (n, V) at the n real tokens
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, s.response[m].unsqueeze(-1)).squeeze(-1)  # (n,)
    out = {"logp": unpack(logp, m)}
    if isinstance(model, PolicyWithValue):
        out["values"] = model.value_head(h_act).squeeze(-1).float()
    if with_entropy:
        out["entropy"] = unpack(-(logp_all.exp() * logp_all).sum(-1), m)
    if with_dist:
        out["logp_all"] = logp_all if with_dist == "real" else unpack(logp_all, m)
    return out


def states_before_tokens(body: nn.Module, s: Samples) -> torch.Tensor:
    """The trunk's states before each response token, ``(B, R, C)``: column t is the state that chooses
    response token t, read one column early. Without gradients the trunk computes only those at the real
    tokens (``response_states``: the same numbers, less work; 0 elsewhere). With gradients it runs whole,
    so that the weight gradients sum over the same rows in the same order as they always have (dropping
    rows reorders those sums)."""
    if torch.is_grad_enabled():
        return last_hidden_state(body, s.input_ids, s.attention_mask)[:, s.query.shape[1] - 1:-1]
    m = s.response_mask.bool()
    return unpack(last_hidden_state(body, s.input_ids, s.attention_mask, at=response_states(s)), m)


def unpack(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Values ``(n, ...)`` at the n True places of a mask ``(B, R)`` back into ``(B, R, ...)``, 0 elsewhere."""
    return x.new_zeros(m.shape + x.shape[1:]).index_put_((m,), x)


# ---------------------------------------------------------------- GPT-2 on the real tokens only
# The same numbers as the model's own forward pass, less work. A batch of left-padded prompts and right-padded responses is largely padding: on cpu-tiny about half
# of a PPO minibatch's ``(B, T)`` positions are pads. Every matrix product of a transformer block
# (the attention projections and the MLP) and every layer norm acts on each token alone, so they can
# run on the real tokens packed into one ``(N, C)`` matrix, N = number of real tokens. Only attention
# mixes tokens; it scatters the packed queries, keys and values back into the ``(B, T)`` layout for one
# ``scaled_dot_product_attention`` call, masked to causal attention over real keys, and gathers the
# real rows again.
#
# At every real token the result equals ``GPT2Model``'s own forward pass with the same ``attention_mask``
# and ``position_ids`` (the same operations on the same rows; tests/test_rlhf.py checks it); pads come
# out as 0. A trunk that is not a plain GPT-2 (another architecture, cross-attention, dropout while
# training) runs its own forward pass instead.


def packable(body: nn.Module) -> bool:
    """Whether ``body`` is a plain GPT-2 trunk that :func:`packed_hidden_states` can run packed."""
    from transformers import GPT2Model

    if not isinstance(body, GPT2Model) or body.config.add_cross_attention:
        return False
    if not all(hasattr(block.attn, "scaling") and hasattr(block.attn, "num_heads") for block in body.h):
        return False                                                  # a transformers version that names them otherwise
    cfg = body.config
    return not body.training or cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0


def packed_attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """``(B, 1, T, T)``: query i sees key j <= i when key j is real; a pad query sees itself only
    (its row is thrown away, but an all-masked row would give NaN)."""
    T = mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
    diagonal = torch.eye(T, dtype=torch.bool, device=mask.device)
    return (causal & (mask.bool()[:, None, :] | diagonal))[:, None]


def packed_attention(attn: nn.Module, h: torch.Tensor, real: torch.Tensor, allowed: torch.Tensor, shape,
              kv: tuple[torch.Tensor, torch.Tensor] | None = None, queries: "Queries | None" = None) -> torch.Tensor:
    """One GPT-2 attention layer on packed tokens: ``h`` is ``(N, C)`` at the flat positions ``real``
    of a ``(B, T)`` batch; returns ``(N, C)``. With ``kv``, a layer's ``(keys, values)`` cache of
    ``(B, H, L, d)`` each, the keys and values of the T positions are also written into its first T columns.
    With ``queries``, only those positions ask: every real token still gives its key and value, and the
    result is ``(k, C)`` at the k positions of ``queries`` (each row the same numbers as without it)."""
    (B, T), (N, C) = shape, h.shape
    H = attn.num_heads
    qkv = attn.c_attn(h)                                              # (N, 3C)
    full = qkv.new_zeros(B * T, 3 * C).index_copy_(0, real, qkv)     # (B T, 3C), pads 0
    # each (B, H, T, d); split on dim 2, the backward stacks the three gradients straight into full's
    # layout (one copy, where permute + unbind needed two)
    q, k, v = (x.transpose(1, 2) for x in full.view(B, T, 3, H, C // H).unbind(2))
    if kv is not None:
        kv[0][:, :, :T], kv[1][:, :, :T] = k, v
    rows = real
    if queries is not None:                                           # only the columns c0:c1 ask
        q, allowed, rows = q[:, :, queries.c0:queries.c1], allowed[:, :, queries.c0:queries.c1], queries.rows
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=attn.scaling)  # (B, H, Tq, d)
    o = o.transpose(1, 2).reshape(-1, C).index_select(0, rows)       # (N, C), or (k, C)
    return attn.c_proj(o)


@dataclass
class Queries:
    """The positions of a ``(B, T)`` batch whose last-block states are wanted (``packed_hidden_states``'s
    ``at``): the columns ``c0:c1`` that hold them all, their flat places ``rows`` in that ``(B, c1 - c0)``
    window, and ``packed``, their places among the N tokens the trunk runs (``mask``)."""
    c0: int
    c1: int
    rows: torch.Tensor
    packed: torch.Tensor

    @classmethod
    def of(cls, at: torch.Tensor, mask: torch.Tensor) -> "Queries":
        if bool((at & ~mask.bool()).any()):
            raise ValueError("packed_hidden_states: every position in `at` must be a real token (mask = 1)")
        b, t = at.nonzero(as_tuple=True)                              # row-major order
        if len(t) == 0:
            raise ValueError("packed_hidden_states: `at` selects no position; give at least one")
        c0, c1 = int(t.min()), int(t.max()) + 1
        packed = (mask.reshape(-1).long().cumsum(0) - 1)[b * mask.shape[1] + t]
        return cls(c0, c1, b * (c1 - c0) + t - c0, packed)


def needed_tokens(at: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The real tokens that the states at ``at`` depend on: in each row, those up to its last wanted position
    (attention is causal, so a later token is a key to no wanted state)."""
    cols = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(at, cols, -1).amax(1, keepdim=True)           # (B, 1); -1 where a row wants nothing
    return mask.bool() & (cols <= last)


def packed_hidden_states(body: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor,
                  position_ids: torch.Tensor, cache: "KVCache | None" = None,
                  at: torch.Tensor | None = None) -> torch.Tensor:
    """The trunk's last hidden state ``(B, T, C)``, 0 on pads, computed on the real tokens only: each
    block adds attention and then the MLP to the residual stream, ``x <- x + attn(ln_1(x))``,
    ``x <- x + mlp(ln_2(x))``, and ``ln_f`` ends the trunk (GPT-2's pre-norm block). A ``cache``
    (GPT-2 trunks only) receives every layer's keys and values.

    ``at``, a ``(B, T)`` bool mask of real positions, asks for those states only: ``(k, C)``, in row-major
    order. The tokens after a row's last wanted position are left out (without a cache), and the last block
    runs its queries, projections and MLP at the k positions alone; the earlier blocks run at every token
    kept, because each is a key to the tokens after it. Each row is, bit for bit, the full pass's number
    there: every operation but attention acts on each token alone, and a left-out token is a key the
    wanted queries never see (causal). On cpu-tiny's batches of 64 this takes 7-10% off PPO's log-prob
    pass and 14% off a reward model's last-token score."""
    if not packable(body):
        out = body(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
        return out * mask[..., None].to(out.dtype) if at is None else out[at]
    B, T = input_ids.shape
    queries = None
    if at is not None:                                                # a cache keeps every token's keys and values
        mask = mask if cache is not None else needed_tokens(at, mask)
        queries = Queries.of(at, mask)
    real = mask.reshape(-1).nonzero().squeeze(1)                     # (N,) flat positions of real tokens
    allowed = packed_attention_mask(mask)
    x = (body.wte(input_ids) + body.wpe(position_ids)).view(B * T, -1).index_select(0, real)  # (N, C)
    for i, block in enumerate(body.h):
        kv = None if cache is None else (cache.keys[i], cache.values[i])
        if queries is not None and i == len(body.h) - 1:              # the last block, at the wanted rows only
            o = packed_attention(block.attn, block.ln_1(x), real, allowed, (B, T), kv, queries)
            x = x.index_select(0, queries.packed) + o
        else:
            x = x + packed_attention(block.attn, block.ln_1(x), real, allowed, (B, T), kv)
        x = x + block.mlp(block.ln_2(x))
    x = body.ln_f(x)
    if queries is not None:
        return x
    return x.new_zeros(B * T, x.shape[1]).index_copy_(0, real, x).view(B, T, -1)


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
        if packable(body):
            self.cache = KVCache(body, len(query), self.col + max_new_tokens, query.device, body.wte.weight.dtype)
            self.cache.mask[:, :self.col] = query_mask.bool()
            last = torch.zeros_like(query_mask, dtype=torch.bool)
            last[:, -1] = True                                        # left padded: every prompt ends there
            self.h = packed_hidden_states(body, query, query_mask, position_ids, self.cache, at=last)
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
        """V(s_t) before each response token: ``(B, R)``; pads are masked wherever values are used."""
        return self.value_head(states_before_tokens(self.transformer, s)).squeeze(-1).float()
