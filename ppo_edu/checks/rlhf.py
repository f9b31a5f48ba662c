"""Checks for Part II of the book (Chapters 9-11): the Bradley-Terry loss, KL-shaped rewards,
token-level GAE and GRPO's group advantages."""
from __future__ import annotations

import torch

from ..rlhf.grpo import group_advantages as grpo_group_advantages
from ..rlhf.ppo import shaped_rewards as ppo_shaped_rewards
from ..rlhf.ppo import token_gae as ppo_token_gae
from ..rlhf.reward import bradley_terry_loss as reward_bradley_terry_loss
from .harness import Case, Hint, Spec, _randn, _rng, _t, make_check


# ----------------------------------------------------------------------------- RLHF (Chapters 9-11)
def _seq_mask(lengths, width):
    return (torch.arange(width)[None] < _t(lengths)[:, None]).float()


def _shaping_cases():
    m = _seq_mask([3, 1, 4], 4)
    return [
        Case("one sample of 2 tokens", dict(score=_t([1.0]), logp=_t([[-1.0, -2.0]]), ref_logp=_t([[-1.5, -1.0]]),
                                             mask=_t([[1.0, 1.0]]), kl_coef=0.1), 2),
        Case("3 samples of lengths 3, 1, 4 (padded to 4)",
             dict(score=_t([0.5, -1.0, 2.0]), logp=_randn((3, 4), 21) - 2, ref_logp=_randn((3, 4), 22) - 2, mask=m,
                  kl_coef=0.2), 12),
        Case("random batch of 16 x 10, kl_coef=0.05",
             dict(score=_randn((16,), 23), logp=_randn((16, 10), 24) - 3, ref_logp=_randn((16, 10), 25) - 3,
                  mask=_seq_mask(torch.randint(1, 11, (16,), generator=_rng(26)).tolist(), 10), kl_coef=0.05), 160),
    ]


def _shaping_variant(score, logp, ref_logp, mask, kl_coef, where="last", sign=1.0, use_mask=True, coef=True,
                     penalty=-1.0, overwrite=False):
    kl = sign * (logp - ref_logp) * (mask if use_mask else 1.0)
    rewards = penalty * (kl_coef if coef else 1.0) * kl
    if where == "every":
        rewards = rewards + score[:, None] * mask
    else:
        col = torch.full_like(score, mask.shape[1] - 1).long() if where == "column" else (mask.sum(1) - 1).long()
        rows = torch.arange(len(score))
        rewards[rows, col] = score if overwrite else rewards[rows, col] + score
    return rewards, kl


SHAPING = Spec("shaped_rewards", ppo_shaped_rewards, _shaping_cases, [
    Hint("the score belongs on the last real token of each response only, not on every token.",
         lambda **kw: _shaping_variant(**kw, where="every")),
    Hint("the score goes on the last *real* token (mask.sum(1) - 1), not the last column: shorter responses are padded.",
         lambda **kw: _shaping_variant(**kw, where="column")),
    Hint("KL sign: the per-token estimate is log pi(a_t|s_t) - log pi_ref(a_t|s_t), and the reward is minus beta times it.",
         lambda **kw: _shaping_variant(**kw, sign=-1.0)),
    Hint("KL penalty sign: the reward is the score minus beta times the KL, r_t = -beta * kl_t (+ score on the "
         "last token); you added the KL.", lambda **kw: _shaping_variant(**kw, penalty=1.0)),
    Hint("add the score to the last real token's reward, do not overwrite it: that token also carries its own "
         "KL penalty, r_last = score - beta * kl_last.", lambda **kw: _shaping_variant(**kw, overwrite=True)),
    Hint("multiply the KL by the mask: padding after the end token carries no KL and no reward.",
         lambda **kw: _shaping_variant(**kw, use_mask=False)),
    Hint("the KL penalty is scaled by kl_coef (beta).", lambda **kw: _shaping_variant(**kw, coef=False)),
])


def _token_gae_cases():
    return [
        Case("one response of 3 tokens, gamma 1", dict(rewards=_t([[0.0, 0.0, 1.0]]), values=_t([[0.5, 0.2, 0.8]]),
                                                      mask=_t([[1.0, 1.0, 1.0]]), gamma=1.0, lam=0.95), 3),
        Case("two responses of 3 tokens, no padding: each response is its own episode",
             dict(rewards=_t([[0.0, 0.5, 1.0], [0.2, 0.0, -1.0]]), values=_t([[0.1, 0.4, 0.3], [0.6, -0.2, 0.5]]),
                  mask=_t([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), gamma=1.0, lam=0.9), 6),
        Case("lengths 2 and 4 (padded), values on pads must not leak",
             dict(rewards=_randn((2, 4), 31), values=_randn((2, 4), 32), mask=_seq_mask([2, 4], 4), gamma=1.0,
                  lam=0.9), 8),
        Case("random batch of 8 x 12, gamma 0.99",
             dict(rewards=_randn((8, 12), 33), values=_randn((8, 12), 34),
                  mask=_seq_mask(torch.randint(1, 13, (8,), generator=_rng(35)).tolist(), 12), gamma=0.99, lam=0.95),
             96),
    ]


def _token_gae_loop(rewards, values, mask, gamma, lam, mask_values=True, terminal=True, lam_on=True, add_values=True,
                    carry=False, gamma_on=True):
    B, R = rewards.shape
    adv, run = torch.zeros_like(rewards), 0.0
    v = values * mask if mask_values else values
    for i in range(B):
        n, run = int(mask[i].sum()), (run if carry else 0.0)
        last = n if terminal else R
        for t in reversed(range(last)):
            nxt = v[i, t + 1] if t + 1 < (n if terminal else R) else 0.0
            delta = rewards[i, t] * mask[i, t] + gamma * nxt - v[i, t]
            run = delta + (gamma if gamma_on else 1.0) * (lam if lam_on else 1.0) * run
            adv[i, t] = run
    adv = adv * mask
    return adv, (adv + v) * mask if add_values else adv


TOKEN_GAE = Spec("token_gae", ppo_token_gae, _token_gae_cases, [
    Hint("the last real token is terminal: do not bootstrap from (or run the recursion through) the padding after it.",
         lambda **kw: _token_gae_loop(**kw, terminal=False, mask_values=False)),
    Hint("reset the accumulator for each response: the advantage of one response must not flow into the one "
         "before it in the batch (each response is its own episode).", lambda **kw: _token_gae_loop(**kw, carry=True)),
    Hint("lambda is missing from the recursion: A_t = delta_t + gamma * lam * A_{t+1}.",
         lambda **kw: _token_gae_loop(**kw, lam_on=False)),
    Hint("lam without gamma: the recursion discounts by gamma * lam, A_t = delta_t + gamma * lam * A_{t+1}.",
         lambda **kw: _token_gae_loop(**kw, gamma_on=False)),
    Hint("the returns are the value targets: returns = advantages + values.",
         lambda **kw: _token_gae_loop(**kw, add_values=False)),
])


def _group_cases():
    return [
        Case("one group of 4", dict(scores=_t([1.0, 0.0, 0.5, -0.5]), group_size=4), 4),
        Case("two groups of 2 with different means", dict(scores=_t([3.0, 1.0, -1.0, -2.0]), group_size=2), 4),
        Case("6 groups of 4 (random)", dict(scores=_randn((24,), 41) * 2 + 1, group_size=4), 24),
        Case("a group whose scores are all equal (std 0: eps keeps it finite)",
             dict(scores=_t([0.3, 0.3, 0.3, 1.0, 2.0, 0.0]), group_size=3), 6),
    ]


def _group_variant(scores, group_size, eps=1e-4, scope="group", unbiased=True, center=True, layout="rows"):
    g = scores.view(-1, group_size) if layout == "rows" else scores.view(group_size, -1).T
    if scope == "batch":
        g = scores.view(1, -1)
    mean = g.mean(1, keepdim=True) if center else 0.0
    out = (g - mean) / (g.std(1, keepdim=True, unbiased=unbiased) + eps)
    return out.T.reshape(-1) if layout == "strided" else out.reshape(-1)


GROUP = Spec("group_advantages", grpo_group_advantages, _group_cases, [
    Hint("normalise within each group of group_size consecutive samples, not over the whole batch.",
         lambda **kw: _group_variant(**kw, scope="batch")),
    Hint("groups are consecutive: samples [0, G) share a prompt, then [G, 2G) ... (view(-1, G), not view(G, -1)).",
         lambda **kw: _group_variant(**kw, layout="strided")),
    Hint("subtract the group mean before dividing by the group std.", lambda **kw: _group_variant(**kw, center=False)),
    Hint("the reference uses torch's default (unbiased, n - 1) std within each group.",
         lambda **kw: _group_variant(**kw, unbiased=False)),
])


def _bt_cases():
    return [
        Case("one pair", dict(r_chosen=_t([1.0]), r_rejected=_t([0.0])), 1),
        Case("pairs in both orders", dict(r_chosen=_t([2.0, -1.0, 0.0, 0.5]), r_rejected=_t([0.0, 1.0, 0.0, 3.0])), 4),
        Case("random batch of 32", dict(r_chosen=_randn((32,), 51) * 2, r_rejected=_randn((32,), 52) * 2), 32),
        Case("confident mistakes (differences of -120): needs a stable log-sigmoid",
             dict(r_chosen=_t([-60.0, 1.0]), r_rejected=_t([60.0, 0.0])), 2),
    ]


BT = Spec("bradley_terry_loss", reward_bradley_terry_loss, _bt_cases, [
    Hint("sign: the loss is -log sigmoid(r_chosen - r_rejected); you rewarded the rejected sample.",
         lambda r_chosen, r_rejected: -torch.nn.functional.logsigmoid(r_rejected - r_chosen).mean()),
    Hint("the Bradley-Terry likelihood needs the log-sigmoid of the difference, not the difference itself.",
         lambda r_chosen, r_rejected: -(r_chosen - r_rejected).mean()),
    Hint("average over pairs (mean), do not sum.",
         lambda r_chosen, r_rejected: -torch.nn.functional.logsigmoid(r_chosen - r_rejected).sum()),
], grad_wrt=("r_chosen",))


SPECS = (SHAPING, TOKEN_GAE, GROUP, BT)
check_shaped_rewards = make_check(SHAPING)
check_token_gae = make_check(TOKEN_GAE)
check_group_advantages = make_check(GROUP)
check_bradley_terry_loss = make_check(BT)
