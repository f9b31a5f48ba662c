"""Checks for Part I of the book (Chapters 2-7): returns, GAE, advantages, the PPO losses,
distributions, the KL estimators and running moments."""
from __future__ import annotations

import torch

from .. import distributions as D
from ..gae import compute_gae, discounted_returns
from ..losses import clipped_surrogate_loss, kl_k1, kl_k3, normalize_advantages, value_loss
from ..normalization import merge_moments
from .harness import Case, Hint, Spec, _randn, _rng, _t, _flags, make_check


# ----------------------------------------------------------------------------- returns and GAE
def _returns_cases():
    cases = [
        Case("one step", dict(rewards=_t([[2.0]]), dones=_t([[0.0]]), gamma=0.9), 1),
        Case("one env, three steps, no episode end", dict(rewards=_t([[1.0], [2.0], [3.0]]),
                                                          dones=_t([[0.0], [0.0], [0.0]]), gamma=0.5), 3),
        Case("one env, the episode ends after step 1", dict(rewards=_t([[1.0], [2.0], [3.0], [4.0]]),
                                                             dones=_t([[0.0], [1.0], [0.0], [0.0]]), gamma=0.5), 4),
        Case("float64, two envs", dict(rewards=_randn((5, 2), 1, torch.float64),
                                       dones=_flags((5, 2), 0.3, 2).double(), gamma=0.99), 10),
    ]
    for seed in range(3):
        cases.append(Case(f"random (T=12, N=3), seed {seed}", dict(
            rewards=_randn((12, 3), 10 + seed), dones=_flags((12, 3), 0.2, 20 + seed).float(), gamma=0.95), 36))
    return cases


def _returns_ignore_dones(rewards, dones, gamma):
    return discounted_returns(rewards, torch.zeros_like(dones), gamma)


def _returns_forward(rewards, dones, gamma):
    out, run = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in range(len(rewards)):
        run = rewards[t] + gamma * run
        out[t] = run
        run = run * (1 - dones[t])
    return out


def _returns_no_gamma(rewards, dones, gamma):
    return discounted_returns(rewards, dones, 1.0)


def _returns_off_by_one(rewards, dones, gamma):
    shifted = torch.cat([dones[1:], torch.zeros_like(dones[:1])])
    return discounted_returns(rewards, shifted, gamma)


RETURNS = Spec("discounted_returns", discounted_returns, _returns_cases, [
    Hint("the return flows across an episode boundary: multiply the future part by (1 - done_t).",
         _returns_ignore_dones),
    Hint("you accumulated forwards from the start of the episode; G_t sums the rewards from t to the "
         "episode's end, so iterate t backwards.", _returns_forward),
    Hint("no discount: G_t = r_t + gamma * (1 - done_t) * G_{t+1}.", _returns_no_gamma),
    Hint("off by one: the done flag of step t cuts the return after r_t (use done_t, not done_{t+1}).",
         _returns_off_by_one),
    Hint("the reward of step t itself is not discounted: G_t = r_t + gamma * (1 - done_t) * G_{t+1}, "
         "not gamma * (r_t + ...).", lambda rewards, dones, gamma: gamma * discounted_returns(rewards, dones, gamma)),
])


def _gae_case(label, T, N, seed, p_term=0.15, p_trunc=0.1, dtype=torch.float32, gamma=0.99, lam=0.95):
    term = _flags((T, N), p_term, seed + 1)
    trunc = _flags((T, N), p_trunc, seed + 2) & ~term
    return Case(label, dict(rewards=_randn((T, N), seed + 3, dtype), values=_randn((T, N), seed + 4, dtype),
                            next_values=_randn((T, N), seed + 5, dtype), terminated=term, truncated=trunc,
                            gamma=gamma, lam=lam), T * N)


def _gae_cases():
    f, tr = torch.zeros(3, 1, dtype=torch.bool), torch.tensor([[False], [True], [False]])
    base = dict(rewards=_t([[1.0], [1.0], [1.0]]), values=_t([[0.5], [0.4], [0.3]]),
                next_values=_t([[0.4], [2.0], [0.2]]), gamma=0.9, lam=0.8)
    return [
        Case("one step, one env", dict(rewards=_t([[1.0]]), values=_t([[0.5]]), next_values=_t([[2.0]]),
                                       terminated=torch.tensor([[False]]), truncated=torch.tensor([[False]]),
                                       gamma=0.9, lam=0.8), 1),
        Case("one env, the episode terminates at step 1", dict(base, terminated=tr, truncated=f), 3),
        Case("one env, the episode is truncated at step 1 (time limit: bootstrap from next_values)",
             dict(base, terminated=f, truncated=tr), 3),
        _gae_case("float64, two envs", 6, 2, 7, dtype=torch.float64),
        _gae_case("random (T=16, N=4)", 16, 4, 30),
        _gae_case("random (T=16, N=4), gamma=1, lam=1", 16, 4, 40, gamma=1.0, lam=1.0),
    ]


def _gae_bootstrap_terminal(rewards, values, next_values, terminated, truncated, gamma, lam):
    done = terminated | truncated
    return compute_gae(rewards, values, next_values, torch.zeros_like(done), done, gamma, lam)


def _gae_truncation_as_termination(rewards, values, next_values, terminated, truncated, gamma, lam):
    return compute_gae(rewards, values, next_values, terminated | truncated, torch.zeros_like(truncated), gamma, lam)


def _gae_recursion_through_truncation(rewards, values, next_values, terminated, truncated, gamma, lam):
    # delta bootstraps correctly, but the recursion only stops at termination
    adv, _ = compute_gae(rewards, values, next_values, terminated, torch.zeros_like(truncated), gamma, lam)
    return adv, adv + values


def _gae_no_lambda(rewards, values, next_values, terminated, truncated, gamma, lam):
    return compute_gae(rewards, values, next_values, terminated, truncated, gamma, 1.0)


def _gae_loop(rewards, values, next_values, terminated, truncated, gamma, lam, delta_gamma=None,
              rec_gamma=True, reset=True, order="backward"):
    """A plain loop with one known mistake switched on: ``delta_gamma`` replaces gamma inside the TD
    residual only; ``rec_gamma=False`` drops gamma from the recursion (lam alone); ``reset=False``
    carries the recursion across episode ends; ``order`` is "backward", "forward", or an off-by-one
    reversed loop that skips the last ("skip_last") or the first ("skip_first") step."""
    g = gamma if delta_gamma is None else delta_gamma
    T = len(rewards)
    steps = {"backward": reversed(range(T)), "forward": range(T), "skip_last": reversed(range(T - 1)),
             "skip_first": reversed(range(1, T))}[order]
    adv, run = torch.zeros_like(values), torch.zeros_like(values[0])
    for t in steps:
        delta = rewards[t] + g * (~terminated[t]).to(values.dtype) * next_values[t] - values[t]
        alive = (~(terminated[t] | truncated[t])).to(values.dtype) if reset else 1.0
        run = delta + (gamma if rec_gamma else 1.0) * lam * alive * run
        adv[t] = run
    return adv, adv + values


def _gae_next_row_values(rewards, values, next_values, terminated, truncated, gamma, lam):
    shifted = torch.cat([values[1:], next_values[-1:]])
    return compute_gae(rewards, values, shifted, terminated, truncated, gamma, lam)


def _gae_returns_without_values(rewards, values, next_values, terminated, truncated, gamma, lam):
    adv, _ = compute_gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    return adv, adv


GAE = Spec("compute_gae", compute_gae, _gae_cases, [
    Hint("you bootstrapped through a terminal state: delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) "
         "- V(s_t); after termination there is no future value.", _gae_bootstrap_terminal),
    Hint("truncation treated as termination: a time limit is not a terminal state, so a truncated step still "
         "bootstraps from next_values (only the recursion stops).", _gae_truncation_as_termination),
    Hint("the recursion must stop at truncation too: A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1} with "
         "done_t = terminated_t or truncated_t (the next row is a new episode).", _gae_recursion_through_truncation),
    Hint("lambda is missing from the recursion: A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}.",
         _gae_no_lambda),
    Hint("the returns are the value targets: returns = advantages + values.", _gae_returns_without_values),
    Hint("bootstrap from next_values[t], the value of the observation that really followed step t; values[t + 1] "
         "is the next row, which after a time limit is the reset observation of a new episode.", _gae_next_row_values),
    Hint("gamma is missing from the TD residual: delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t).",
         lambda **kw: _gae_loop(**kw, delta_gamma=1.0)),
    Hint("lam without gamma: the recursion discounts by gamma * lam, A_t = delta_t + gamma * lam * (1 - done_t) "
         "* A_{t+1}.", lambda **kw: _gae_loop(**kw, rec_gamma=False)),
    Hint("no reset at episode ends: the advantage of the last step of an episode must not include the next "
         "episode's; multiply A_{t+1} by (1 - done_t), done_t = terminated_t or truncated_t.",
         lambda **kw: _gae_loop(**kw, reset=False)),
    Hint("forward loop: A_t depends on A_{t+1}, so iterate t from T - 1 down to 0 (reversed(range(T))).",
         lambda **kw: _gae_loop(**kw, order="forward")),
    Hint("off by one in the reversed loop: reversed(range(T)) visits every t from T - 1 down to 0; your loop "
         "skipped the last step.", lambda **kw: _gae_loop(**kw, order="skip_last")),
    Hint("off by one in the reversed loop: reversed(range(T)) visits every t from T - 1 down to 0; your loop "
         "skipped the first step.", lambda **kw: _gae_loop(**kw, order="skip_first")),
])


# ----------------------------------------------------------------------------- advantages and losses
def _adv_cases():
    return [Case("four values", dict(advantages=_t([1.0, 2.0, 3.0, 6.0])), 4),
            Case("float64 (T=5, N=3): normalise over all elements", dict(advantages=_randn((5, 3), 3, torch.float64) * 3 + 1), 15),
            Case("random batch of 64", dict(advantages=_randn((64,), 4) * 5 - 2), 64),
            Case("all advantages equal (std 0: the 1e-8 keeps it finite)", dict(advantages=torch.full((6,), 2.5)), 6)]


ADV = Spec("normalize_advantages", normalize_advantages, _adv_cases, [
    Hint("normalised over the wrong axis: whiten over all elements of the batch, not per column.",
         lambda advantages: (advantages - advantages.mean(0)) / (advantages.std(0, unbiased=False) + 1e-8)),
    Hint("normalised over the wrong axis: whiten over all elements of the batch, not per row.",
         lambda advantages: (advantages - advantages.mean(-1, keepdim=True))
         / (advantages.std(-1, unbiased=False, keepdim=True) + 1e-8)),
    Hint("torch.std is unbiased (divides by n - 1) by default; the reference uses the population std "
         "(unbiased=False).", lambda advantages: (advantages - advantages.mean()) / (advantages.std() + 1e-8)),
    Hint("subtract the mean before dividing by the std.", lambda advantages: advantages / (advantages.std(unbiased=False) + 1e-8)),
    Hint("divide by the standard deviation, not the variance.",
         lambda advantages: (advantages - advantages.mean()) / (advantages.var(unbiased=False) + 1e-8)),
])


def _surrogate_cases():
    logp_old = _t([-0.7, -0.7, -0.7, -0.7, -0.7, -0.7])
    ratios = _t([0.5, 0.9, 1.1, 1.5, 1.5, 0.5])
    adv = _t([2.0, 0.5, -1.5, 1.0, -0.7, -2.0])
    return [
        Case("ratio = 1 (first epoch): the loss is -mean(A)", dict(logp_new=_t([-0.5, -1.2]), logp_old=_t([-0.5, -1.2]),
                                                                  advantages=_t([1.0, -2.0]), clip_eps=0.2), 2),
        Case("ratios inside and outside [1 - eps, 1 + eps], both signs of A",
             dict(logp_new=logp_old + ratios.log(), logp_old=logp_old, advantages=adv, clip_eps=0.2), 6),
        Case("random batch of 32, clip_eps=0.1", dict(logp_new=_randn((32,), 5) * 0.3 - 1, logp_old=_randn((32,), 6) * 0.3 - 1,
                                                       advantages=_randn((32,), 7), clip_eps=0.1), 32),
    ]


def _surr(logp_new, logp_old, advantages, clip_eps, combine=torch.min, sign=-1.0):
    ratio = torch.exp(logp_new - logp_old)
    return sign * combine(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages).mean()


SURROGATE = Spec("clipped_surrogate_loss", clipped_surrogate_loss, _surrogate_cases, [
    Hint("the ratio is inverted: r = pi_new / pi_old = exp(logp_new - logp_old), not exp(logp_old - logp_new).",
         lambda logp_new, logp_old, advantages, clip_eps: _surr(logp_old, logp_new, advantages, clip_eps)),
    Hint("max where min belongs: PPO keeps the pessimistic (smaller) of the two surrogates.",
         lambda **kw: _surr(**kw, combine=torch.max)),
    Hint("sign error: return the loss to minimise, -mean(min(r A, clip(r) A)), not the objective.",
         lambda **kw: _surr(**kw, sign=1.0)),
    Hint("clip the probability ratio, not the advantage.",
         lambda logp_new, logp_old, advantages, clip_eps: -torch.min(
             torch.exp(logp_new - logp_old) * advantages,
             torch.exp(logp_new - logp_old) * advantages.clamp(1 - clip_eps, 1 + clip_eps)).mean()),
    Hint("the ratio is exp(logp_new - logp_old), not a quotient of log-probabilities.",
         lambda logp_new, logp_old, advantages, clip_eps: _surr(torch.log(logp_new / logp_old), 0.0 * logp_old,
                                                                advantages, clip_eps)),
    Hint("without the min, the clipped term alone has zero gradient where the policy got worse: "
         "take min(r A, clip(r) A).", lambda logp_new, logp_old, advantages, clip_eps: -(
             torch.exp(logp_new - logp_old).clamp(1 - clip_eps, 1 + clip_eps) * advantages).mean()),
    Hint("no clipping: without clip(r, 1 - eps, 1 + eps) nothing keeps the new policy near the old one.",
         lambda logp_new, logp_old, advantages, clip_eps: -(torch.exp(logp_new - logp_old) * advantages).mean()),
    Hint("the ratio is exp(logp_new - logp_old): you used the log-ratio itself.",
         lambda logp_new, logp_old, advantages, clip_eps: _surr(torch.log(logp_new - logp_old), 0.0 * logp_old,
                                                                advantages, clip_eps)),
    Hint("average over the batch (mean), do not sum.", lambda **kw: _surr(**kw) * len(kw["advantages"])),
], grad_wrt=("logp_new",), first_output_only=True)


def _vloss_cases():
    # values 0, 1: clipping makes the error larger (max keeps it); value 4: clipping makes it smaller
    v, r, o = _t([1.0, 2.0, 0.0, -1.0, 0.5]), _t([1.5, 0.0, 0.3, -1.0, 1.5]), _t([0.5, 2.5, 0.1, -1.25, 1.4])
    return [
        Case("unclipped, one value", dict(values=_t([2.5]), returns=_t([1.0])), 1),
        Case("unclipped, four values", dict(values=v, returns=r), 4),
        Case("clipped with vf_clip=0.2 (some values moved further than 0.2)",
             dict(values=v, returns=r, old_values=o, vf_clip=0.2), 5),
        Case("random batch of 32, clipped with vf_clip=0.5", dict(values=_randn((32,), 8), returns=_randn((32,), 9),
                                                                    old_values=_randn((32,), 10), vf_clip=0.5), 33),
    ]


def _vloss_variant(values, returns, old_values=None, vf_clip=None, half=0.5, combine=torch.max, absolute=False):
    err = (values - returns).abs() if absolute else (values - returns) ** 2
    if old_values is None or vf_clip is None:
        return half * err.mean()
    clipped = old_values + (values - old_values).clamp(-vf_clip, vf_clip)
    err_c = (clipped - returns).abs() if absolute else (clipped - returns) ** 2
    return half * combine(err, err_c).mean()


VALUE = Spec("value_loss", value_loss, _vloss_cases, [
    Hint("the value loss is 0.5 * mean((V - R)^2): the 0.5 is missing.", lambda **kw: _vloss_variant(**kw, half=1.0)),
    Hint("min where max belongs: value clipping keeps the larger (pessimistic) of the two errors.",
         lambda **kw: _vloss_variant(**kw, combine=torch.min)),
    Hint("clip the change V - V_old to [-eps, eps] around the old value, not V itself.",
         lambda values, returns, old_values=None, vf_clip=None: 0.5 * torch.max(
             (values - returns) ** 2, (values.clamp(-vf_clip, vf_clip) - returns) ** 2).mean()
         if vf_clip is not None else 0.5 * ((values - returns) ** 2).mean()),
    Hint("squared error, not absolute error.", lambda **kw: _vloss_variant(**kw, absolute=True)),
    Hint("squared error, not absolute error.", lambda **kw: 2 * _vloss_variant(**kw, absolute=True)),
    Hint("with old_values and vf_clip given, the loss must clip V around the old value V_old (clipping around "
         "the returns changes nothing under the max): 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) "
         "- R)^2)).",
         lambda values, returns, old_values=None, vf_clip=None: 0.5 * ((values - returns) ** 2).mean()),
], grad_wrt=("values",))


# ----------------------------------------------------------------------------- distributions
def _logits_cases():
    return [Case("one state, two actions", dict(logits=_t([[0.0, 1.0]])), 2),
            Case("large logits (overflow test: use logsumexp / log_softmax)", dict(logits=_t([[1000.0, 0.0, -5.0]])), 3),
            Case("float64, batch of 4, 3 actions", dict(logits=_randn((4, 3), 11, torch.float64) * 2), 12),
            Case("random batch of 16, 5 actions", dict(logits=_randn((16, 5), 12) * 3), 80)]


ENTROPY_CAT = Spec("categorical_entropy", D.categorical_entropy, _logits_cases, [
    Hint("sign error: H = -sum_a pi(a) log pi(a) is never negative.", lambda logits: -D.categorical_entropy(logits)),
    Hint("summed over the batch instead of over actions: the entropy has one value per state (sum over the last axis).",
         lambda logits: D.categorical_entropy(logits).sum()),
    Hint("summed over the batch instead of over actions: the entropy has one value per state (sum over the last axis).",
         lambda logits: -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(0)),
    Hint("sum over the actions, do not average: H = -sum_a pi(a) log pi(a).",
         lambda logits: D.categorical_entropy(logits) / logits.shape[-1]),
    Hint("use the probabilities pi(a) = softmax(logits), not the logits, as weights.",
         lambda logits: -(logits * torch.log_softmax(logits, -1)).sum(-1)),
], default_hint="H = -sum_a pi(a) log pi(a) with log pi = log_softmax(logits).")


def _cat_logp_cases():
    return [Case("one state", dict(logits=_t([[0.0, 1.0]]), actions=torch.tensor([1])), 2),
            Case("large logits (overflow test)", dict(logits=_t([[1000.0, 0.0, -5.0]]), actions=torch.tensor([1])), 3),
            Case("float64, batch of 4", dict(logits=_randn((4, 3), 13, torch.float64), actions=torch.tensor([0, 2, 1, 2])), 12),
            Case("random batch of 16", dict(logits=_randn((16, 5), 14) * 2,
                                            actions=torch.randint(0, 5, (16,), generator=_rng(15))), 80)]


CAT_LOGP = Spec("categorical_log_prob", D.categorical_log_prob, _cat_logp_cases, [
    Hint("you returned the raw logit of the action; subtract logsumexp(logits) to normalise.",
         lambda logits, actions: logits.gather(-1, actions.long()[:, None]).squeeze(-1)),
    Hint("you returned the probability, not its logarithm.",
         lambda logits, actions: D.categorical_log_prob(logits, actions).exp()),
    Hint("pick one entry per row, log_probs[arange(B), actions]; log_probs[:, actions] makes a (B, B) matrix.",
         lambda logits, actions: torch.log_softmax(logits, -1)[:, actions.long()]),
    Hint("normalise over the actions (the last axis), not over the batch.",
         lambda logits, actions: torch.log_softmax(logits, 0).gather(-1, actions.long()[:, None]).squeeze(-1)),
])


def _gauss_cases():
    return [Case("one action dim", dict(mean=_t([[0.0]]), log_std=_t([0.0]), actions=_t([[1.0]])), 1),
            Case("two dims, sigma != 1", dict(mean=_t([[0.5, -1.0]]), log_std=_t([0.3, -0.7]), actions=_t([[1.0, -1.5]])), 2),
            Case("float64, batch of 4, 3 dims", dict(mean=_randn((4, 3), 16, torch.float64),
                                                     log_std=_randn((3,), 17, torch.float64) * 0.5,
                                                     actions=_randn((4, 3), 18, torch.float64)), 12),
            Case("random batch of 16, 2 dims", dict(mean=_randn((16, 2), 19), log_std=_randn((2,), 20) * 0.5,
                                                    actions=_randn((16, 2), 21) * 2), 32)]


def _gauss_variant(mean, log_std, actions, use_var=False, with_norm=True, summed=True):
    scale = torch.exp(2 * log_std) if use_var else torch.exp(log_std)
    lp = -0.5 * ((actions - mean) / scale) ** 2 - (log_std if with_norm else 0.0) - 0.5 * D.LOG_2PI
    return lp.sum(-1) if summed else lp


GAUSS_LOGP = Spec("gaussian_log_prob", D.gaussian_log_prob, _gauss_cases, [
    Hint("independent action dimensions: sum the per-dimension log-probs over the last axis.",
         lambda **kw: _gauss_variant(**kw, summed=False)),
    Hint("the normaliser -log sigma is missing from each dimension's log-density.",
         lambda **kw: _gauss_variant(**kw, with_norm=False)),
    Hint("divide (a - mu) by sigma = exp(log_std), not by the variance.", lambda **kw: _gauss_variant(**kw, use_var=True)),
    Hint("the constant -log(2 pi) / 2 per dimension is missing.",
         lambda mean, log_std, actions: D.gaussian_log_prob(mean, log_std, actions) + 0.5 * D.LOG_2PI * mean.shape[-1]),
    Hint("divide the squared error by 2 sigma^2, not 2 sigma.",
         lambda mean, log_std, actions: (-((actions - mean) ** 2) / (2 * log_std.exp()) - log_std
                                         - 0.5 * D.LOG_2PI).sum(-1)),
])


def _gauss_ent_cases():
    return [Case("one dim, sigma = 1", dict(log_std=_t([0.0])), 1),
            Case("three dims", dict(log_std=_t([0.5, -1.0, 0.1])), 3),
            Case("float64, four dims", dict(log_std=_randn((4,), 22, torch.float64)), 4)]


GAUSS_ENT = Spec("gaussian_entropy", D.gaussian_entropy, _gauss_ent_cases, [
    Hint("sum the per-dimension entropies over the last axis.", lambda log_std: log_std + 0.5 * (1 + D.LOG_2PI)),
    Hint("the entropy grows with log sigma, not sigma: H = sum_d log sigma_d + (1 + log 2 pi) / 2.",
         lambda log_std: (log_std.exp() + 0.5 * (1 + D.LOG_2PI)).sum(-1)),
    Hint("the constant is (1 + log 2 pi) / 2 per dimension.", lambda log_std: (log_std + 0.5 * D.LOG_2PI).sum(-1)),
    Hint("the half is missing: H = sum_d (1/2) log(2 pi e sigma_d^2).", lambda log_std: 2 * D.gaussian_entropy(log_std)),
])


# ----------------------------------------------------------------------------- KL and moments
def _kl_cases():
    return [Case("identical policies: both estimates are 0", dict(logp_new=_t([-0.5, -1.0]), logp_old=_t([-0.5, -1.0])), 2),
            Case("three samples", dict(logp_new=_t([-0.2, -1.5, -0.9]), logp_old=_t([-0.4, -1.0, -0.9])), 3),
            Case("float64 batch of 8", dict(logp_new=_randn((8,), 23, torch.float64) * 0.2 - 1,
                                            logp_old=_randn((8,), 24, torch.float64) * 0.2 - 1), 8)]


KL1 = Spec("kl_k1", kl_k1, _kl_cases, [
    Hint("sign: k1 = -log r = log pi_old(a) - log pi_new(a) for a sampled from pi_old.",
         lambda logp_new, logp_old: (logp_new - logp_old).mean()),
    Hint("average over the samples (mean), do not sum.", lambda logp_new, logp_old: (logp_old - logp_new).sum()),
    Hint("k1 = log pi_old(a) - log pi_new(a): subtract the log-probabilities, do not divide them.",
         lambda logp_new, logp_old: (-torch.log(logp_new / logp_old)).mean()),
])
KL3 = Spec("kl_k3", kl_k3, _kl_cases, [
    Hint("this is k1 = -log r = log pi_old - log pi_new, the plain estimator; k3 = (r - 1) - log r adds r - 1, "
         "which keeps every sample's estimate non-negative.", lambda logp_new, logp_old: kl_k1(logp_new, logp_old)),
    Hint("k3 = (r - 1) - log r with r = pi_new / pi_old; you used the inverse ratio.",
         lambda logp_new, logp_old: kl_k3(logp_old, logp_new)),
    Hint("the -1 is missing: k3 = (r - 1) - log r, which is 0 when r = 1.",
         lambda logp_new, logp_old: (torch.exp(logp_new - logp_old) - (logp_new - logp_old)).mean()),
    Hint("average over the samples (mean), do not sum.",
         lambda logp_new, logp_old: (torch.expm1(logp_new - logp_old) - (logp_new - logp_old)).sum()),
    Hint("k3 = (r - 1) - log r: subtract the log-ratio, do not add it.",
         lambda logp_new, logp_old: (torch.expm1(logp_new - logp_old) + (logp_new - logp_old)).mean()),
])


def _moments_cases():
    d = torch.float64
    return [Case("scalar statistics", dict(mean=_t(0.0, d), var=_t(1.0, d), count=_t(1.0, d), batch_mean=_t(2.0, d),
                                           batch_var=_t(0.5, d), batch_count=_t(3.0, d)), 1),
            Case("three features", dict(mean=_t([0.0, 1.0, -1.0], d), var=_t([1.0, 2.0, 0.5], d), count=_t(10.0, d),
                                        batch_mean=_t([1.0, 1.0, 0.0], d), batch_var=_t([0.2, 2.0, 1.0], d),
                                        batch_count=_t(5.0, d)), 3)]


MOMENTS = Spec("merge_moments", merge_moments, _moments_cases, [
    Hint("the variance of a merged set also carries the spread between the two means: add "
         "delta^2 * n * n_b / (n + n_b) before dividing by the total count.",
         lambda mean, var, count, batch_mean, batch_var, batch_count: (
             mean + (batch_mean - mean) * batch_count / (count + batch_count),
             (var * count + batch_var * batch_count) / (count + batch_count), count + batch_count)),
    Hint("weights swapped: the new mean moves towards the batch mean by n_b / (n + n_b).",
         lambda mean, var, count, batch_mean, batch_var, batch_count: merge_moments(
             mean, var, batch_count, batch_mean, batch_var, count)),
    Hint("weights swapped: the new mean moves towards the batch mean by n_b / (n + n_b).",
         lambda mean, var, count, batch_mean, batch_var, batch_count: (
             mean + (batch_mean - mean) * count / (count + batch_count),
             *merge_moments(mean, var, count, batch_mean, batch_var, batch_count)[1:])),
    Hint("population variance: divide M2 by n + n_b, not n + n_b - 1.",
         lambda mean, var, count, batch_mean, batch_var, batch_count: (lambda m, v, n: (m, v * n / (n - 1), n))(
             *merge_moments(mean, var, count, batch_mean, batch_var, batch_count))),
    Hint("the count must grow by the batch size: return n + n_b.",
         lambda mean, var, count, batch_mean, batch_var, batch_count: merge_moments(
             mean, var, count, batch_mean, batch_var, batch_count)[:2] + (count,)),
])


SPECS = (RETURNS, GAE, ADV, SURROGATE, VALUE, ENTROPY_CAT, CAT_LOGP, GAUSS_LOGP, GAUSS_ENT, KL1, KL3, MOMENTS)
check_discounted_returns = make_check(RETURNS)
check_compute_gae = check_gae = make_check(GAE)
check_normalize_advantages = make_check(ADV)
check_clipped_surrogate_loss = make_check(SURROGATE)
check_value_loss = make_check(VALUE)
check_categorical_entropy = make_check(ENTROPY_CAT)
check_categorical_log_prob = make_check(CAT_LOGP)
check_gaussian_log_prob = make_check(GAUSS_LOGP)
check_gaussian_entropy = make_check(GAUSS_ENT)
check_kl_k1 = make_check(KL1)
check_kl_k3 = make_check(KL3)
check_merge_moments = check_running_mean_std = make_check(MOMENTS)
