"""ppo_edu.checks can fail: each check rejects a catalogue of realistic student mistakes with the
hint that names the mistake, passes an independently written correct implementation, and never
crashes on a broken student function (raises, hangs, wrong shape / dtype, NaN, in-place, NumPy).

Every student function below is written from the equations, the way a student would write it; none
calls the library reference or the checks' own buggy variants.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ppo_edu import checks
from ppo_edu.checks import (CheckResult, check_categorical_entropy, check_categorical_log_prob,
                            check_clipped_surrogate_loss, check_compute_gae, check_discounted_returns,
                            check_gae, check_gaussian_entropy, check_gaussian_log_prob, check_kl_k1,
                            check_kl_k3, check_merge_moments, check_normalize_advantages,
                            check_running_mean_std, check_value_loss)

LOG_2PI = math.log(2 * math.pi)


# =============================================================================== correct students
def returns_ok(rewards, dones, gamma):
    G = torch.zeros_like(rewards)
    future = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        future = rewards[t] + gamma * future * (1 - dones[t])
        G[t] = future
    return G


def gae_ok(rewards, values, next_values, terminated, truncated, gamma, lam):
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        not_terminal = 1.0 - terminated[t].to(rewards.dtype)
        not_done = 1.0 - (terminated[t] | truncated[t]).to(rewards.dtype)
        delta = rewards[t] + gamma * next_values[t] * not_terminal - values[t]
        last = delta + gamma * lam * not_done * last
        adv[t] = last
    return adv, adv + values


def normalize_ok(advantages):
    mu = advantages.mean()
    sigma = ((advantages - mu) ** 2).mean().sqrt()
    return (advantages - mu) / (sigma + 1e-8)


def surrogate_ok(logp_new, logp_old, advantages, clip_eps):
    ratio = (logp_new - logp_old).exp()
    surr1 = ratio * advantages
    surr2 = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages
    return -torch.min(surr1, surr2).mean()


def surrogate_ok_with_info(logp_new, logp_old, advantages, clip_eps):
    """Same loss, returned as (loss, info) like the library's."""
    ratio = (logp_new - logp_old).exp()
    loss = -torch.minimum(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages).mean()
    return loss, {"clip_fraction": ((ratio - 1).abs() > clip_eps).float().mean().detach()}


def value_loss_ok(values, returns, old_values=None, clip_eps=None):
    err = (values - returns) ** 2
    if old_values is None or clip_eps is None:
        return 0.5 * err.mean()
    v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    err_clipped = (v_clipped - returns) ** 2
    return 0.5 * torch.maximum(err, err_clipped).mean()


def _log_softmax_by_hand(logits):
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    return shifted - shifted.exp().sum(dim=-1, keepdim=True).log()


def cat_entropy_ok(logits):
    logp = _log_softmax_by_hand(logits)
    return -(logp.exp() * logp).sum(dim=-1)


def cat_logp_ok(logits, actions):
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return logp[torch.arange(len(actions)), actions]


def gauss_logp_ok(mean, log_std, actions):
    std = torch.exp(log_std)
    lp = -((actions - mean) ** 2) / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.sum(dim=-1)


def gauss_entropy_ok(log_std):
    sigma = torch.exp(log_std)
    return (0.5 * torch.log(2 * math.pi * math.e * sigma ** 2)).sum(dim=-1)


def k1_ok(logp_new, logp_old):
    ratio = torch.exp(logp_new - logp_old)
    return (-torch.log(ratio)).mean()


def k3_ok(logp_new, logp_old):
    ratio = torch.exp(logp_new - logp_old)
    return ((ratio - 1) - torch.log(ratio)).mean()


def merge_ok(mean, var, count, batch_mean, batch_var, batch_count):
    """Through the pooled second moment E[x^2] rather than Chan et al.'s M2 update."""
    n = count + batch_count
    new_mean = (count * mean + batch_count * batch_mean) / n
    second = (count * (var + mean ** 2) + batch_count * (batch_var + batch_mean ** 2)) / n
    return new_mean, second - new_mean ** 2, n


# ---- RLHF (written from eqs. 9.1, 10.1, 11.1 and the token GAE of Chapter 10)
def shaping_ok(score, logp, ref_logp, mask, kl_coef):
    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    for i in range(len(score)):
        last = int(mask[i].sum().item()) - 1
        rewards[i, last] = rewards[i, last] + score[i]
    return rewards, kl


def shaping_score_everywhere(score, logp, ref_logp, mask, kl_coef):
    kl = (logp - ref_logp) * mask
    return (-kl_coef * kl + score[:, None]) * mask, kl


def shaping_last_column(score, logp, ref_logp, mask, kl_coef):
    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    rewards[:, -1] += score
    return rewards, kl


def shaping_kl_reversed(score, logp, ref_logp, mask, kl_coef):
    return shaping_ok(score, ref_logp, logp, mask, kl_coef)


def shaping_no_mask(score, logp, ref_logp, mask, kl_coef):
    rewards, _ = shaping_ok(score, logp, ref_logp, torch.ones_like(mask), kl_coef)
    kl = logp - ref_logp
    rewards = -kl_coef * kl
    for i in range(len(score)):
        rewards[i, int(mask[i].sum().item()) - 1] += score[i]
    return rewards, kl


def token_gae_ok(rewards, values, mask, gamma, lam):
    adv = torch.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        n, future = int(mask[i].sum().item()), 0.0
        for t in range(n - 1, -1, -1):
            v_next = values[i, t + 1] if t < n - 1 else 0.0
            future = rewards[i, t] + gamma * v_next - values[i, t] + gamma * lam * future
            adv[i, t] = future
    return adv, (adv + values) * mask


def token_gae_through_padding(rewards, values, mask, gamma, lam):
    adv = torch.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        future = 0.0
        for t in range(rewards.shape[1] - 1, -1, -1):
            v_next = values[i, t + 1] if t + 1 < rewards.shape[1] else 0.0
            future = rewards[i, t] * mask[i, t] + gamma * v_next - values[i, t] + gamma * lam * future
            adv[i, t] = future
    return adv * mask, (adv + values) * mask


def token_gae_no_lambda(rewards, values, mask, gamma, lam):
    return token_gae_ok(rewards, values, mask, gamma, 1.0)


def token_gae_returns_are_advantages(rewards, values, mask, gamma, lam):
    adv, _ = token_gae_ok(rewards, values, mask, gamma, lam)
    return adv, adv


def group_ok(scores, group_size, eps=1e-4):
    out = torch.empty_like(scores)
    for start in range(0, len(scores), group_size):
        g = scores[start:start + group_size]
        mu = g.mean()
        sd = (((g - mu) ** 2).sum() / (len(g) - 1)).sqrt()
        out[start:start + group_size] = (g - mu) / (sd + eps)
    return out


def group_whole_batch(scores, group_size, eps=1e-4):
    return (scores - scores.mean()) / (scores.std() + eps)


def group_strided(scores, group_size, eps=1e-4):
    g = scores.reshape(group_size, -1)
    return ((g - g.mean(0)) / (g.std(0) + eps)).reshape(-1)


def group_not_centred(scores, group_size, eps=1e-4):
    g = scores.reshape(-1, group_size)
    return (g / (g.std(1, keepdim=True) + eps)).reshape(-1)


def group_population_std(scores, group_size, eps=1e-4):
    g = scores.reshape(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, unbiased=False) + eps)).reshape(-1)


def bt_ok(r_chosen, r_rejected):
    return torch.nn.functional.softplus(r_rejected - r_chosen).mean()


def bt_sign(r_chosen, r_rejected):
    return torch.nn.functional.softplus(r_chosen - r_rejected).mean()


def bt_difference(r_chosen, r_rejected):
    return (r_rejected - r_chosen).mean()


def bt_sum(r_chosen, r_rejected):
    return torch.nn.functional.softplus(r_rejected - r_chosen).sum()


def bt_naive_log_sigmoid(r_chosen, r_rejected):
    return -torch.log(1.0 / (1.0 + torch.exp(r_rejected - r_chosen))).mean()


CORRECT = {
    "check_discounted_returns": (check_discounted_returns, returns_ok),
    "check_compute_gae": (check_compute_gae, gae_ok),
    "check_gae": (check_gae, gae_ok),
    "check_normalize_advantages": (check_normalize_advantages, normalize_ok),
    "check_clipped_surrogate_loss": (check_clipped_surrogate_loss, surrogate_ok),
    "check_value_loss": (check_value_loss, value_loss_ok),
    "check_categorical_entropy": (check_categorical_entropy, cat_entropy_ok),
    "check_categorical_log_prob": (check_categorical_log_prob, cat_logp_ok),
    "check_gaussian_log_prob": (check_gaussian_log_prob, gauss_logp_ok),
    "check_gaussian_entropy": (check_gaussian_entropy, gauss_entropy_ok),
    "check_kl_k1": (check_kl_k1, k1_ok),
    "check_kl_k3": (check_kl_k3, k3_ok),
    "check_merge_moments": (check_merge_moments, merge_ok),
    "check_running_mean_std": (check_running_mean_std, merge_ok),
    "check_shaped_rewards": (checks.check_shaped_rewards, shaping_ok),
    "check_token_gae": (checks.check_token_gae, token_gae_ok),
    "check_group_advantages": (checks.check_group_advantages, group_ok),
    "check_bradley_terry_loss": (checks.check_bradley_terry_loss, bt_ok),
}


# =============================================================================== buggy students
# ---- discounted returns
def returns_ignores_dones(rewards, dones, gamma):
    G, future = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        future = rewards[t] + gamma * future
        G[t] = future
    return G


def returns_forward(rewards, dones, gamma):
    G, running = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in range(len(rewards)):
        running = running * gamma + rewards[t]
        G[t] = running
        running = running * (1 - dones[t])
    return G


def returns_no_gamma(rewards, dones, gamma):
    G, future = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        future = rewards[t] + future * (1 - dones[t])
        G[t] = future
    return G


def returns_reset_after_store(rewards, dones, gamma):
    """Resets the running return after storing G_t: the done flag cuts one step too late."""
    G, future = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        future = rewards[t] + gamma * future
        G[t] = future
        future = future * (1 - dones[t])
    return G


def returns_discounts_current_reward(rewards, dones, gamma):
    G, future = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        future = gamma * (rewards[t] + future * (1 - dones[t]))
        G[t] = future
    return G


# ---- GAE
def _gae_student(rewards, values, next_values, terminated, truncated, gamma, lam, *, bootstrap_done="term",
                 cut_recursion="done", use_lam=True, returns_plus_values=True, next_from_values=False,
                 gamma_in_delta=True):
    adv, last = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    T = rewards.shape[0]
    for t in reversed(range(T)):
        done = terminated[t] | truncated[t]
        stop_bootstrap = {"term": terminated[t], "done": done, "never": torch.zeros_like(done)}[bootstrap_done]
        stop_recursion = {"term": terminated[t], "done": done}[cut_recursion]
        v_next = values[t + 1] if next_from_values and t + 1 < T else next_values[t]
        g = gamma if gamma_in_delta else 1.0
        delta = rewards[t] + g * v_next * (1.0 - stop_bootstrap.to(rewards.dtype)) - values[t]
        last = delta + gamma * (lam if use_lam else 1.0) * (1.0 - stop_recursion.to(rewards.dtype)) * last
        adv[t] = last
    return adv, (adv + values if returns_plus_values else adv)


def gae_bootstraps_terminal(rewards, values, next_values, terminated, truncated, gamma, lam):
    return _gae_student(rewards, values, next_values, terminated, truncated, gamma, lam, bootstrap_done="never")


def gae_truncation_as_termination(rewards, values, next_values, terminated, truncated, gamma, lam):
    dones = terminated | truncated
    adv, last = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        nonterminal = 1.0 - dones[t].to(rewards.dtype)
        delta = rewards[t] + gamma * next_values[t] * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv, adv + values


def gae_recursion_through_truncation(rewards, values, next_values, terminated, truncated, gamma, lam):
    return _gae_student(rewards, values, next_values, terminated, truncated, gamma, lam, cut_recursion="term")


def gae_no_lambda(rewards, values, next_values, terminated, truncated, gamma, lam):
    return _gae_student(rewards, values, next_values, terminated, truncated, gamma, lam, use_lam=False)


def gae_returns_are_advantages(rewards, values, next_values, terminated, truncated, gamma, lam):
    return _gae_student(rewards, values, next_values, terminated, truncated, gamma, lam, returns_plus_values=False)


def gae_bootstrap_from_values_t_plus_1(rewards, values, next_values, terminated, truncated, gamma, lam):
    """CleanRL-style V(s_{t+1}) = values[t + 1]: wrong after a truncation (that row is the reset state)."""
    return _gae_student(rewards, values, next_values, terminated, truncated, gamma, lam, next_from_values=True)


def gae_no_gamma_in_delta(rewards, values, next_values, terminated, truncated, gamma, lam):
    return _gae_student(rewards, values, next_values, terminated, truncated, gamma, lam, gamma_in_delta=False)


# ---- normalise advantages
def normalize_per_column(advantages):
    return (advantages - advantages.mean(dim=0)) / (advantages.std(dim=0, unbiased=False) + 1e-8)


def normalize_unbiased_std(advantages):
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def normalize_no_centering(advantages):
    return advantages / (advantages.std(unbiased=False) + 1e-8)


def normalize_by_variance(advantages):
    mu = advantages.mean()
    return (advantages - mu) / (((advantages - mu) ** 2).mean() + 1e-8)


def normalize_per_row(advantages):
    return (advantages - advantages.mean(dim=-1, keepdim=True)) / (
        advantages.std(dim=-1, unbiased=False, keepdim=True) + 1e-8)


# ---- clipped surrogate
def surrogate_max(logp_new, logp_old, advantages, clip_eps):
    ratio = torch.exp(logp_new - logp_old)
    return -torch.max(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages).mean()


def surrogate_objective_not_loss(logp_new, logp_old, advantages, clip_eps):
    ratio = torch.exp(logp_new - logp_old)
    return torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages).mean()


def surrogate_clips_advantage(logp_new, logp_old, advantages, clip_eps):
    ratio = torch.exp(logp_new - logp_old)
    return -torch.min(ratio * advantages, ratio * torch.clamp(advantages, 1 - clip_eps, 1 + clip_eps)).mean()


def surrogate_clipped_term_only(logp_new, logp_old, advantages, clip_eps):
    ratio = torch.exp(logp_new - logp_old)
    return -(torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages).mean()


def surrogate_no_clipping(logp_new, logp_old, advantages, clip_eps):
    """The vanilla importance-sampled policy gradient: clip_eps is never used."""
    return -(torch.exp(logp_new - logp_old) * advantages).mean()


def surrogate_ratio_as_quotient(logp_new, logp_old, advantages, clip_eps):
    ratio = logp_new / logp_old
    return -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages).mean()


def surrogate_ratio_without_exp(logp_new, logp_old, advantages, clip_eps):
    ratio = logp_new - logp_old
    return -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages).mean()


def surrogate_sum(logp_new, logp_old, advantages, clip_eps):
    ratio = torch.exp(logp_new - logp_old)
    return -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages).sum()


# ---- value loss
def _vl(values, returns, old_values, clip_eps, *, half=0.5, combine=torch.maximum, err=lambda d: d ** 2,
        centre="old"):
    e = err(values - returns)
    if old_values is None or clip_eps is None:
        return half * e.mean()
    if centre == "old":
        v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    elif centre == "returns":
        v_clipped = returns + torch.clamp(values - returns, -clip_eps, clip_eps)
    else:  # clamp V itself
        v_clipped = torch.clamp(values, -clip_eps, clip_eps)
    return half * combine(e, err(v_clipped - returns)).mean()


def value_loss_no_half(values, returns, old_values=None, clip_eps=None):
    return _vl(values, returns, old_values, clip_eps, half=1.0)


def value_loss_min(values, returns, old_values=None, clip_eps=None):
    return _vl(values, returns, old_values, clip_eps, combine=torch.minimum)


def value_loss_clamps_value(values, returns, old_values=None, clip_eps=None):
    return _vl(values, returns, old_values, clip_eps, centre="value")


def value_loss_half_abs(values, returns, old_values=None, clip_eps=None):
    return _vl(values, returns, old_values, clip_eps, err=torch.abs)


def value_loss_l1(values, returns, old_values=None, clip_eps=None):
    """F.l1_loss in place of F.mse_loss: mean |V - R|."""
    return _vl(values, returns, old_values, clip_eps, err=torch.abs, half=1.0)


def value_loss_clips_around_returns(values, returns, old_values=None, clip_eps=None):
    return _vl(values, returns, old_values, clip_eps, centre="returns")


def value_loss_ignores_clipping(values, returns, old_values=None, clip_eps=None):
    """The optional clipping is never implemented."""
    return 0.5 * ((values - returns) ** 2).mean()


def value_loss_always_clips(values, returns, old_values=None, clip_eps=None):
    v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2).mean()


# ---- categorical entropy
def cat_entropy_sign(logits):
    logp = torch.log_softmax(logits, dim=-1)
    return (logp.exp() * logp).sum(dim=-1)


def cat_entropy_sum_all(logits):
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum()


def cat_entropy_logit_weights(logits):
    return -(logits * torch.log_softmax(logits, dim=-1)).sum(dim=-1)


def cat_entropy_naive_log(logits):
    p = torch.exp(logits) / torch.exp(logits).sum(dim=-1, keepdim=True)
    return -(p * torch.log(p)).sum(dim=-1)


def cat_entropy_sum_axis0(logits):
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=0)


def cat_entropy_mean_over_actions(logits):
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).mean(dim=-1)


# ---- categorical log-prob
def cat_logp_raw_logit(logits, actions):
    return logits[torch.arange(len(actions)), actions]


def cat_logp_probability(logits, actions):
    return torch.softmax(logits, dim=-1)[torch.arange(len(actions)), actions]


def cat_logp_naive(logits, actions):
    p = torch.exp(logits) / torch.exp(logits).sum(dim=-1, keepdim=True)
    return torch.log(p[torch.arange(len(actions)), actions])


def cat_logp_column_index(logits, actions):
    return torch.log_softmax(logits, dim=-1)[:, actions]


def cat_logp_softmax_over_batch(logits, actions):
    return torch.log_softmax(logits, dim=0)[torch.arange(len(actions)), actions]


# ---- Gaussian log-prob
def gauss_logp_not_summed(mean, log_std, actions):
    std = log_std.exp()
    return -((actions - mean) ** 2) / (2 * std ** 2) - log_std - 0.5 * LOG_2PI


def gauss_logp_no_log_sigma(mean, log_std, actions):
    std = log_std.exp()
    return (-((actions - mean) ** 2) / (2 * std ** 2) - 0.5 * LOG_2PI).sum(-1)


def gauss_logp_divides_by_variance(mean, log_std, actions):
    var = torch.exp(log_std) ** 2
    z = (actions - mean) / var
    return (-0.5 * z ** 2 - log_std - 0.5 * LOG_2PI).sum(-1)


def gauss_logp_no_constant(mean, log_std, actions):
    std = log_std.exp()
    return (-((actions - mean) ** 2) / (2 * std ** 2) - log_std).sum(-1)


def gauss_logp_sigma_not_squared(mean, log_std, actions):
    std = log_std.exp()
    return (-((actions - mean) ** 2) / (2 * std) - log_std - 0.5 * LOG_2PI).sum(-1)


# ---- Gaussian entropy
def gauss_entropy_not_summed(log_std):
    return log_std + 0.5 * (1 + LOG_2PI)


def gauss_entropy_sigma(log_std):
    return (torch.exp(log_std) + 0.5 * (1 + LOG_2PI)).sum(-1)


def gauss_entropy_forgot_e(log_std):
    sigma = torch.exp(log_std)
    return (0.5 * torch.log(2 * math.pi * sigma ** 2)).sum(-1)


def gauss_entropy_forgot_half(log_std):
    sigma = torch.exp(log_std)
    return torch.log(2 * math.pi * math.e * sigma ** 2).sum(-1)


# ---- KL k1
def k1_sign(logp_new, logp_old):
    return (logp_new - logp_old).mean()


def k1_sum(logp_new, logp_old):
    return (logp_old - logp_new).sum()


def k1_log_quotient(logp_new, logp_old):
    return (-torch.log(logp_new / logp_old)).mean()


# ---- KL k3
def k3_inverse_ratio(logp_new, logp_old):
    r = torch.exp(logp_old - logp_new)
    return ((r - 1) - torch.log(r)).mean()


def k3_no_minus_one(logp_new, logp_old):
    r = torch.exp(logp_new - logp_old)
    return (r - torch.log(r)).mean()


def k3_sum(logp_new, logp_old):
    r = torch.exp(logp_new - logp_old)
    return ((r - 1) - torch.log(r)).sum()


def k3_plus_log(logp_new, logp_old):
    r = torch.exp(logp_new - logp_old)
    return ((r - 1) + torch.log(r)).mean()


# ---- merge moments
def merge_no_mean_shift(mean, var, count, batch_mean, batch_var, batch_count):
    n = count + batch_count
    new_mean = (count * mean + batch_count * batch_mean) / n
    new_var = (count * var + batch_count * batch_var) / n
    return new_mean, new_var, n


def merge_counts_swapped(mean, var, count, batch_mean, batch_var, batch_count):
    """Each set weighted by the other's count, in the mean and in the variance."""
    n = count + batch_count
    delta = batch_mean - mean
    new_mean = mean + delta * count / n
    m2 = var * batch_count + batch_var * count + delta ** 2 * count * batch_count / n
    return new_mean, m2 / n, n


def merge_count_not_updated(mean, var, count, batch_mean, batch_var, batch_count):
    n = count + batch_count
    delta = batch_mean - mean
    new_mean = mean + delta * batch_count / n
    m2 = var * count + batch_var * batch_count + delta ** 2 * count * batch_count / n
    return new_mean, m2 / n, count


def merge_mean_weight_swapped(mean, var, count, batch_mean, batch_var, batch_count):
    """Only the mean step uses the wrong weight n / (n + n_b); the variance is right."""
    n = count + batch_count
    delta = batch_mean - mean
    m2 = var * count + batch_var * batch_count + delta ** 2 * count * batch_count / n
    return mean + delta * count / n, m2 / n, n


def merge_sample_variance(mean, var, count, batch_mean, batch_var, batch_count):
    n = count + batch_count
    delta = batch_mean - mean
    m2 = var * count + batch_var * batch_count + delta ** 2 * count * batch_count / n
    return mean + delta * batch_count / n, m2 / (n - 1), n


# Each bug: (check, student function, substring of the hint that names this mistake).
DIAGNOSED = [
    (check_discounted_returns, returns_ignores_dones, "episode boundary"),
    (check_discounted_returns, returns_forward, "iterate t backwards"),
    (check_discounted_returns, returns_no_gamma, "no discount"),
    (check_discounted_returns, returns_reset_after_store, "off by one"),
    (check_compute_gae, gae_bootstraps_terminal, "bootstrapped through a terminal state"),
    (check_compute_gae, gae_truncation_as_termination, "truncation treated as termination"),
    (check_compute_gae, gae_recursion_through_truncation, "recursion must stop at truncation"),
    (check_compute_gae, gae_no_lambda, "lambda is missing"),
    (check_compute_gae, gae_returns_are_advantages, "returns = advantages + values"),
    (check_normalize_advantages, normalize_per_column, "wrong axis"),
    (check_normalize_advantages, normalize_unbiased_std, "unbiased"),
    (check_normalize_advantages, normalize_no_centering, "subtract the mean"),
    (check_normalize_advantages, normalize_by_variance, "not the variance"),
    (check_clipped_surrogate_loss, surrogate_max, "max where min belongs"),
    (check_clipped_surrogate_loss, surrogate_objective_not_loss, "sign error"),
    (check_clipped_surrogate_loss, surrogate_clips_advantage, "clip the probability ratio, not the advantage"),
    (check_value_loss, value_loss_no_half, "0.5 is missing"),
    (check_value_loss, value_loss_min, "min where max belongs"),
    (check_value_loss, value_loss_clamps_value, "clip the change V - V_old"),
    (check_categorical_entropy, cat_entropy_sign, "sign error"),
    (check_categorical_entropy, cat_entropy_sum_all, "summed over the batch"),
    (check_categorical_entropy, cat_entropy_logit_weights, "not the logits, as weights"),
    (check_categorical_log_prob, cat_logp_raw_logit, "raw logit"),
    (check_categorical_log_prob, cat_logp_probability, "probability, not its logarithm"),
    (check_gaussian_log_prob, gauss_logp_not_summed, "sum the per-dimension log-probs"),
    (check_gaussian_log_prob, gauss_logp_no_log_sigma, "-log sigma is missing"),
    (check_gaussian_log_prob, gauss_logp_divides_by_variance, "not by the variance"),
    (check_gaussian_entropy, gauss_entropy_not_summed, "sum the per-dimension entropies"),
    (check_gaussian_entropy, gauss_entropy_sigma, "grows with log sigma"),
    (check_gaussian_entropy, gauss_entropy_forgot_e, "the constant is (1 + log 2 pi) / 2"),
    (check_kl_k1, k1_sign, "sign"),
    (check_kl_k1, k1_sum, "do not sum"),
    (check_kl_k3, k3_inverse_ratio, "inverse ratio"),
    (check_kl_k3, k3_no_minus_one, "the -1 is missing"),
    (check_kl_k3, k3_sum, "do not sum"),
    (check_merge_moments, merge_no_mean_shift, "spread between the two means"),
    (check_merge_moments, merge_counts_swapped, "weights swapped"),
    (check_merge_moments, merge_count_not_updated, "count must grow"),
]

# Mistakes added to the catalogue after the first review (each used to get a generic or wrong hint).
DIAGNOSED += [
    (check_discounted_returns, returns_discounts_current_reward, "reward of step t itself is not discounted"),
    (check_compute_gae, gae_bootstrap_from_values_t_plus_1, "values[t + 1]"),
    (check_compute_gae, gae_no_gamma_in_delta, "gamma is missing from the TD residual"),
    (check_normalize_advantages, normalize_per_row, "wrong axis"),
    (check_clipped_surrogate_loss, surrogate_clipped_term_only, "without the min"),
    (check_clipped_surrogate_loss, surrogate_no_clipping, "no clipping"),
    (check_clipped_surrogate_loss, surrogate_ratio_as_quotient, "not a quotient of log-probabilities"),
    (check_clipped_surrogate_loss, surrogate_ratio_without_exp, "log-ratio itself"),
    (check_clipped_surrogate_loss, surrogate_sum, "do not sum"),
    (check_value_loss, value_loss_half_abs, "squared error, not absolute error"),
    (check_value_loss, value_loss_l1, "squared error, not absolute error"),
    (check_value_loss, value_loss_clips_around_returns, "around the old value"),
    (check_value_loss, value_loss_ignores_clipping, "the loss must clip"),
    (check_categorical_entropy, cat_entropy_sum_axis0, "summed over the batch"),
    (check_categorical_entropy, cat_entropy_mean_over_actions, "do not average"),
    (check_categorical_log_prob, cat_logp_column_index, "(B, B)"),
    (check_categorical_log_prob, cat_logp_softmax_over_batch, "not over the batch"),
    (check_gaussian_log_prob, gauss_logp_no_constant, "-log(2 pi) / 2"),
    (check_gaussian_log_prob, gauss_logp_sigma_not_squared, "2 sigma^2"),
    (check_gaussian_entropy, gauss_entropy_forgot_half, "the half is missing"),
    (check_kl_k1, k1_log_quotient, "do not divide"),
    (check_kl_k3, k3_plus_log, "do not add"),
    (check_merge_moments, merge_mean_weight_swapped, "weights swapped"),
    (check_merge_moments, merge_sample_variance, "population variance"),
]
DIAGNOSED += [
    (checks.check_shaped_rewards, shaping_score_everywhere, "not on every token"),
    (checks.check_shaped_rewards, shaping_last_column, "not the last column"),
    (checks.check_shaped_rewards, shaping_kl_reversed, "KL sign"),
    (checks.check_shaped_rewards, shaping_no_mask, "multiply the KL by the mask"),
    (checks.check_token_gae, token_gae_through_padding, "the last real token is terminal"),
    (checks.check_token_gae, token_gae_no_lambda, "lambda is missing"),
    (checks.check_token_gae, token_gae_returns_are_advantages, "returns = advantages + values"),
    (checks.check_group_advantages, group_whole_batch, "not over the whole batch"),
    (checks.check_group_advantages, group_strided, "groups are consecutive"),
    (checks.check_group_advantages, group_not_centred, "subtract the group mean"),
    (checks.check_group_advantages, group_population_std, "unbiased"),
    (checks.check_bradley_terry_loss, bt_sign, "you rewarded the rejected sample"),
    (checks.check_bradley_terry_loss, bt_difference, "not the difference itself"),
    (checks.check_bradley_terry_loss, bt_sum, "do not sum"),
    (checks.check_bradley_terry_loss, bt_naive_log_sigmoid, "exp of a large number"),
]
# --------------------------------------------------------------- mistakes diagnosed since issue 11
def _gae_loop_student(rewards, values, next_values, terminated, truncated, gamma, lam, coef=None, reset=True, steps=None):
    T = rewards.shape[0]
    adv, last = torch.zeros_like(values), torch.zeros_like(values[0])
    for t in (reversed(range(T)) if steps is None else steps(T)):
        delta = rewards[t] + gamma * next_values[t] * (1.0 - terminated[t].to(values.dtype)) - values[t]
        keep = (1.0 - (terminated[t] | truncated[t]).to(values.dtype)) if reset else 1.0
        last = delta + (gamma * lam if coef is None else coef(gamma, lam)) * keep * last
        adv[t] = last
    return adv, adv + values


def gae_lam_without_gamma(*args):
    return _gae_loop_student(*args, coef=lambda gamma, lam: lam)


def gae_no_reset(*args):
    return _gae_loop_student(*args, reset=False)


def gae_forward_loop(*args):
    return _gae_loop_student(*args, steps=lambda T: range(T))


def gae_off_by_one(*args):
    return _gae_loop_student(*args, steps=lambda T: range(T - 2, -1, -1))


def surrogate_inverted_ratio(logp_new, logp_old, advantages, clip_eps):
    ratio = (logp_old - logp_new).exp()
    return -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages).mean()


def k3_is_k1(logp_new, logp_old):
    return (-(logp_new - logp_old)).mean()


def shaping_penalty_added(score, logp, ref_logp, mask, kl_coef):
    kl = (logp - ref_logp) * mask
    rewards = kl_coef * kl
    last = mask.sum(1).long() - 1
    for i in range(len(score)):
        rewards[i, last[i]] += score[i]
    return rewards, kl


def shaping_score_overwrites(score, logp, ref_logp, mask, kl_coef):
    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    last = mask.sum(1).long() - 1
    for i in range(len(score)):
        rewards[i, last[i]] = score[i]
    return rewards, kl


def token_gae_carried_accumulator(rewards, values, mask, gamma, lam):
    adv, running = torch.zeros_like(rewards), 0.0
    v = values * mask
    for i in range(rewards.shape[0]):
        n = int(mask[i].sum())
        for t in reversed(range(n)):
            v_next = v[i, t + 1] if t + 1 < n else 0.0
            running = rewards[i, t] + gamma * v_next - v[i, t] + gamma * lam * running
            adv[i, t] = running
    return adv, (adv + v) * mask


def token_gae_lam_without_gamma(rewards, values, mask, gamma, lam):
    adv = torch.zeros_like(rewards)
    v = values * mask
    for i in range(rewards.shape[0]):
        n, running = int(mask[i].sum()), 0.0
        for t in reversed(range(n)):
            v_next = v[i, t + 1] if t + 1 < n else 0.0
            running = rewards[i, t] + gamma * v_next - v[i, t] + lam * running
            adv[i, t] = running
    return adv, (adv + v) * mask


DIAGNOSED += [
    (check_compute_gae, gae_lam_without_gamma, "lam without gamma"),
    (check_compute_gae, gae_no_reset, "no reset at episode ends"),
    (check_compute_gae, gae_forward_loop, "forward loop"),
    (check_compute_gae, gae_off_by_one, "off by one in the reversed loop"),
    (check_clipped_surrogate_loss, surrogate_inverted_ratio, "the ratio is inverted"),
    (check_kl_k3, k3_is_k1, "this is k1"),
    (checks.check_shaped_rewards, shaping_penalty_added, "KL penalty sign"),
    (checks.check_shaped_rewards, shaping_score_overwrites, "do not overwrite it"),
    (checks.check_token_gae, token_gae_carried_accumulator, "reset the accumulator for each response"),
    (checks.check_token_gae, token_gae_lam_without_gamma, "lam without gamma"),
]


UNDIAGNOSED: list = []  # realistic mistakes rejected without a specific hint: none known


def _id(entry):
    check, fn, _ = entry
    return f"{check.__name__.removeprefix('check_')}-{fn.__name__}"


def _hint(result: CheckResult) -> str:
    lines = [line for line in result.message.splitlines() if line.startswith("Hint: ")]
    assert len(lines) == 1, result.message
    return lines[0]


# =============================================================================== correct ones pass
@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_student_passes(name):
    check, fn = CORRECT[name]
    result = check(fn)
    assert isinstance(result, CheckResult)
    assert result.passed is True, str(result)
    assert result.cases_run >= 2
    assert result.message.startswith(f"All {result.cases_run} cases agree")


def test_every_public_check_is_covered():
    public = {n for n in checks.__all__ if n.startswith("check_")}
    assert public == set(CORRECT)
    tested = {c for c, _, _ in DIAGNOSED + UNDIAGNOSED}
    assert all(CORRECT[name][0] in tested for name in public)  # check_gae etc. are the same objects


@pytest.mark.parametrize("name", list(CORRECT))
def test_at_least_three_realistic_bugs_per_check(name):
    check = CORRECT[name][0]
    assert sum(c is check for c, _, _ in DIAGNOSED + UNDIAGNOSED) >= 3


@pytest.mark.parametrize("name", list(CORRECT))
def test_at_least_three_bugs_per_check_get_their_hint(name):
    check = CORRECT[name][0]
    assert sum(c is check for c, _, _ in DIAGNOSED) >= 3


def test_aliases():
    assert check_gae is check_compute_gae
    assert check_running_mean_std is check_merge_moments
    assert "truncation treated as termination" in _hint(check_gae(gae_truncation_as_termination))
    assert "count must grow" in _hint(check_running_mean_std(merge_count_not_updated))


# =============================================================================== bugs are rejected
@pytest.mark.parametrize("entry", DIAGNOSED + UNDIAGNOSED, ids=_id)
def test_buggy_student_is_rejected(entry):
    check, fn, _ = entry
    result = check(fn)
    assert result.passed is False, f"{fn.__name__} passed {check.__name__}"
    assert not result
    assert "Case: " in result.message
    assert "Hint: " in result.message  # always some advice, never a crash


@pytest.mark.parametrize("entry", DIAGNOSED, ids=_id)
def test_buggy_student_gets_the_matching_hint(entry):
    check, fn, hint = entry
    result = check(fn)
    assert result.passed is False
    assert hint in _hint(result), result.message
    assert "Expected" in result.message and "Received" in result.message


# =============================================================================== failure messages
def test_message_shows_the_smallest_failing_case_first():
    result = check_compute_gae(gae_truncation_as_termination)
    assert result.message.startswith("Case: one env, the episode is truncated at step 1")
    assert "truncat" in result.message.splitlines()[0]
    assert result.cases_run == 3  # one step and the termination case passed first
    for part in ("Case:", "Input:", "Expected:", "Received:", "Hint:"):
        assert part in result.message
    assert result.message.index("Expected:") < result.message.index("Received:") < result.message.index("Hint:")

    result = check_discounted_returns(returns_ignores_dones)
    assert result.message.startswith("Case: one env, the episode ends after step 1")


def test_failure_message_values():
    # one step: A = r + gamma * V' - V = 1 + 0.9 * 2 - 0.5 = 2.3, returns = A + V = 2.8; the bug returns A twice
    result = check_compute_gae(gae_returns_are_advantages)
    assert result.message.startswith("Case: one step, one env")
    assert "[0] [[2.3]]" in result.message and "[1] [[2.8]]" in result.message
    expected, received = result.message.split("Expected:")[1].split("Received:")
    assert "[1] [[2.8]]" in expected and "[1] [[2.3]]" in received


# =============================================================================== robustness
def test_student_that_raises():
    def broken(rewards, dones, gamma):
        raise ValueError("I have not written this yet")

    result = check_discounted_returns(broken)
    assert result.passed is False
    assert "raised ValueError: I have not written this yet" in result.message
    assert 'raise ValueError("I have not written this yet")' in result.message  # the offending line


def test_student_that_raises_on_an_index():
    def reads_past_the_end(rewards, dones, gamma):
        G = torch.zeros_like(rewards)
        for t in reversed(range(len(rewards))):
            G[t] = rewards[t] + gamma * (1 - dones[t]) * G[t + 1]
        return G

    result = check_discounted_returns(reads_past_the_end)
    assert result.passed is False
    assert "raised IndexError" in result.message and "G[t + 1]" in result.message


def test_parameters_may_be_renamed():
    def renamed(r, d, g):  # the checks pass arguments by position, in the reference's order
        return returns_ok(r, d, g)

    assert check_discounted_returns(renamed).passed


def test_value_loss_that_ignores_the_optional_arguments_raises():
    result = check_value_loss(value_loss_always_clips)
    assert result.passed is False and "raised TypeError" in result.message
    assert result.message.startswith("Case: unclipped, one value")


def test_wrong_shape():
    def squeezed(rewards, dones, gamma):
        return returns_ok(rewards, dones, gamma).squeeze(-1)

    result = check_discounted_returns(squeezed)
    assert result.passed is False
    assert "Shape of the output is (1,); expected (1, 1)" in result.message


def test_wrong_number_of_outputs():
    def only_advantages(*args):
        return gae_ok(*args)[0]

    result = check_compute_gae(only_advantages)
    assert result.passed is False and "returned 1 value(s); expected 2" in result.message


def test_float32_for_float64_inputs_is_accepted_at_float32_tolerance():
    def float32_buffer(rewards, values, next_values, terminated, truncated, gamma, lam):
        T, N = rewards.shape
        adv, last = torch.zeros(T, N), torch.zeros(N)  # float32 whatever the inputs
        for t in reversed(range(T)):
            delta = rewards[t] + gamma * next_values[t] * (~terminated[t]) - values[t]
            last = delta + gamma * lam * (~(terminated[t] | truncated[t])) * last
            adv[t] = last
        return adv, adv + values.float()

    assert check_compute_gae(float32_buffer).passed  # any float dtype: compared at the lower precision

    def float32_buffer_wrong(*args):
        adv, ret = float32_buffer(*args)
        return adv, adv  # and a real mistake on top
    result = check_compute_gae(float32_buffer_wrong)
    assert result.passed is False
    assert "dtypes: expected torch.float32, received torch.float32" in result.message


def gae_float32_masks(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Masks built with .float(), as most PPO code does: float32 intermediates on float64 inputs."""
    adv, last = torch.zeros_like(values), torch.zeros_like(values[0])
    for t in reversed(range(rewards.shape[0])):
        nonterminal = 1.0 - terminated[t].float()
        nondone = 1.0 - (terminated[t] | truncated[t]).float()
        delta = rewards[t] + gamma * next_values[t] * nonterminal - values[t]
        last = delta + gamma * lam * nondone * last
        adv[t] = last
    return adv, adv + values


def test_float32_masks_pass_the_float64_case():
    assert check_compute_gae(gae_float32_masks).passed


def test_values_differ_prints_the_largest_difference_and_dtypes():
    def off_by_a_little(*args):
        adv, ret = gae_ok(*args)
        return adv + 1e-3, ret + 1e-3

    result = check_compute_gae(off_by_a_little)
    assert result.passed is False
    line = [ln for ln in result.message.splitlines() if ln.startswith("Values differ")][0]
    assert "largest difference 0.001 (absolute)" in line and "dtypes: expected torch.float32" in line


def test_nan_output():
    result = check_categorical_entropy(cat_entropy_naive_log)
    assert result.passed is False
    assert "NaN" in result.message and "overflow" in result.message.splitlines()[0]
    assert "log_softmax" in _hint(result)

    result = check_categorical_log_prob(cat_logp_naive)
    assert result.passed is False and "NaN" in result.message


def test_infinite_loop_times_out():
    def forgot_to_decrement(rewards, dones, gamma):
        G, t = torch.zeros_like(rewards), len(rewards) - 1
        while t >= 0:
            G[t] = rewards[t]
        return G

    result = check_discounted_returns(forgot_to_decrement, timeout=1)
    assert result.passed is False
    assert "more than 1 s" in result.message


def test_in_place_modification():
    def centres_in_place(advantages):
        advantages -= advantages.mean()
        return advantages / (advantages.std(unbiased=False) + 1e-8)

    result = check_normalize_advantages(centres_in_place)
    assert result.passed is False
    assert "modified its input `advantages` in place" in result.message


def test_numpy_loss_is_not_differentiable():
    def numpy_surrogate(logp_new, logp_old, advantages, clip_eps):
        ratio = np.exp(logp_new.detach().numpy() - logp_old.numpy())
        adv = advantages.numpy()
        return -np.minimum(ratio * adv, np.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv).mean()

    result = check_clipped_surrogate_loss(numpy_surrogate)
    assert result.passed is False
    assert "not differentiable" in result.message and "`logp_new`" in result.message


def test_detached_value_loss_is_not_differentiable():
    def detached(values, returns, old_values=None, clip_eps=None):
        return value_loss_ok(values.detach(), returns, old_values, clip_eps)

    result = check_value_loss(detached)
    assert result.passed is False and "not differentiable" in result.message


def test_item_loss_is_reported_as_not_differentiable():
    def item_loss(logp_new, logp_old, advantages, clip_eps):
        return surrogate_ok(logp_new, logp_old, advantages, clip_eps).item()

    result = check_clipped_surrogate_loss(item_loss)
    assert result.passed is False  # rejected either way
    assert "not differentiable" in result.message


def test_float32_tolerance_is_1e_4():
    def gae_rounded_differently(rewards, values, *rest):
        adv, ret = gae_ok(rewards, values, *rest)
        if adv.dtype == torch.float32:  # a float32 answer 3e-5 away (relative): within the intended 1e-4
            adv, ret = adv * (1 + 3e-5), ret * (1 + 3e-5)
        return adv, ret

    assert check_compute_gae(gae_rounded_differently).passed


def test_python_list():
    def as_list(rewards, dones, gamma):
        return returns_ok(rewards, dones, gamma).tolist()

    result = check_discounted_returns(as_list)
    assert result.passed is False and "expected a torch tensor" in result.message

    def moments_as_list(*args):
        return list(merge_ok(*args))

    result = check_merge_moments(moments_as_list)
    assert result.passed is False and "returned a list; expected a torch tensor" in result.message


def test_function_that_returns_nothing():
    def forgot_return(rewards, dones, gamma):
        returns_ok(rewards, dones, gamma)

    result = check_discounted_returns(forgot_return)
    assert result.passed is False and "returned a NoneType" in result.message


@pytest.mark.parametrize("not_a_function", [None, 3, "gae_ok", torch.zeros(1, 1)], ids=["None", "int", "str", "tensor"])
def test_not_callable(not_a_function):
    result = check_compute_gae(not_a_function)
    assert result.passed is False
    assert result.message.startswith("expected a function, got")
    assert result.cases_run == 0


def test_surrogate_accepts_loss_alone_and_loss_info_tuple():
    assert check_clipped_surrogate_loss(surrogate_ok).passed is True
    assert check_clipped_surrogate_loss(surrogate_ok_with_info).passed is True


# =============================================================================== CheckResult
def test_result_html_bool_and_assert_passed():
    ok = check_kl_k3(k3_ok)
    assert bool(ok) is True and ok.passed is True
    assert ok.assert_passed() is None
    assert "passed" in ok._repr_html_() and "failed" not in ok._repr_html_()
    assert str(ok).startswith("check_kl_k3: PASSED")

    bad = check_kl_k3(k3_sum)
    assert bool(bad) is False and bad.passed is False
    html = bad._repr_html_()
    assert "failed" in html and "passed" not in html
    assert "check_kl_k3" in html
    with pytest.raises(AssertionError) as info:
        bad.assert_passed()
    assert bad.message in str(info.value)
    assert str(info.value).startswith("check_kl_k3: FAILED")


def test_html_is_escaped():
    def shouty(logp_new, logp_old):
        raise ValueError("<script>alert('x')</script> & <b>")

    result = check_kl_k1(shouty)
    html = result._repr_html_()
    assert "<script>" not in html and "<b>" not in html.split("</b>", 1)[1]  # only the title is bold
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;" in html
