"""Reward models from preferences (Chapter 9).

Simulated humans: a *gold* scorer that the reward model never sees directly (VADER's compound
sentiment, in [-1, 1]) compares two samples for the same prompt; the one it scores higher by at
least ``margin`` is "chosen". A reward model r_phi (a GPT-2 body with a scalar head, read at the
last real token) learns from these pairs with the Bradley-Terry likelihood (eq. 9.1)::

    P(chosen > rejected) = sigmoid(r_phi(chosen) - r_phi(rejected))
    loss = -mean log sigmoid(r_phi(chosen) - r_phi(rejected))

Only differences of r_phi are identified, so after training it is normalised to mean 0 and
std 1 on samples of the reference policy (eq. 9.2); the two numbers live in the model's config,
so the saved model is already normalised.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..progress import progress
from .policy import Samples, position_ids

__all__ = ["gold_scores", "PreferencePairs", "label_pairs", "bradley_terry_loss", "new_reward_model",
           "reward_scores", "score_last_token", "last_real", "normalised_score", "train_reward_model", "pair_accuracy",
           "normalize_reward_model"]

_VADER = None


def gold_scores(texts: list[str]) -> torch.Tensor:
    """VADER compound sentiment of each text, in [-1, 1] (the simulated human's taste)."""
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return torch.tensor([_VADER.polarity_scores(t)["compound"] for t in texts], dtype=torch.float32)


@dataclass
class PreferencePairs:
    """Token ids of chosen and rejected samples, each ``(N, L)`` with masks, plus their gold scores."""
    chosen: torch.Tensor
    chosen_mask: torch.Tensor
    rejected: torch.Tensor
    rejected_mask: torch.Tensor
    gold_chosen: torch.Tensor
    gold_rejected: torch.Tensor

    def __len__(self) -> int:
        return self.chosen.shape[0]

    def split(self, n_first: int) -> tuple["PreferencePairs", "PreferencePairs"]:
        fields = ("chosen", "chosen_mask", "rejected", "rejected_mask", "gold_chosen", "gold_rejected")
        a = PreferencePairs(*(getattr(self, f)[:n_first] for f in fields))
        b = PreferencePairs(*(getattr(self, f)[n_first:] for f in fields))
        return a, b


def label_pairs(a: Samples, b: Samples, gold_a: torch.Tensor, gold_b: torch.Tensor,
                margin: float = 0.2) -> PreferencePairs:
    """Pairs (a_i, b_i) share a prompt; keep those whose gold scores differ by at least ``margin``
    and put the preferred one first."""
    gold_a, gold_b = gold_a.to(a.query.device), gold_b.to(a.query.device)  # VADER scores come from the CPU
    keep = (gold_a - gold_b).abs() >= margin
    a_wins = (gold_a > gold_b)[keep]
    ids_a, mask_a, ids_b, mask_b = a.input_ids[keep], a.attention_mask[keep], b.input_ids[keep], b.attention_mask[keep]
    pick = a_wins[:, None]
    return PreferencePairs(
        chosen=torch.where(pick, ids_a, ids_b), chosen_mask=torch.where(pick, mask_a, mask_b),
        rejected=torch.where(pick, ids_b, ids_a), rejected_mask=torch.where(pick, mask_b, mask_a),
        gold_chosen=torch.where(a_wins, gold_a[keep], gold_b[keep]),
        gold_rejected=torch.where(a_wins, gold_b[keep], gold_a[keep]))


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(r_chosen - r_rejected) (eq. 9.1)."""
    return -torch.nn.functional.logsigmoid(r_chosen - r_rejected).mean()


def new_reward_model(lm):
    """A ``GPT2ForSequenceClassification`` (one label) whose body is a copy of ``lm``'s (InstructGPT's
    choice: start the reward model from the pretrained policy)."""
    from transformers import GPT2ForSequenceClassification

    cfg = copy.deepcopy(lm.config)
    cfg.num_labels = 1
    rm = GPT2ForSequenceClassification(cfg)
    rm.transformer.load_state_dict(lm.transformer.state_dict())
    torch.nn.init.normal_(rm.score.weight, std=1.0 / (cfg.n_embd ** 0.5))
    return rm.eval()


def reward_scores(rm, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """r_phi of each sequence, read at its last real token (the end token when there is one): ``(B,)``."""
    h = rm.transformer(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids(attention_mask)).last_hidden_state
    return score_last_token(rm, h, attention_mask)


def score_last_token(rm, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The reward model's head on each row's last real token of its hidden states ``h`` ``(B, T, C)``,
    in the normalised units of eq. 9.2: ``(B,)``."""
    h_last = h[torch.arange(h.shape[0], device=h.device), last_real(attention_mask)]  # (B, C)
    return normalised_score(rm, h_last)


def last_real(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` the column of each row's last real token (the rightmost 1)."""
    return attention_mask.shape[1] - 1 - attention_mask.flip(1).long().argmax(1)


def normalised_score(rm, h_last: torch.Tensor) -> torch.Tensor:
    """The reward model's head on last-token states ``(B, C)``, in the normalised units of eq. 9.2: ``(B,)``."""
    raw = rm.score(h_last).squeeze(-1).float()
    return (raw - getattr(rm.config, "score_mean", 0.0)) / getattr(rm.config, "score_std", 1.0)


def _pair_scores(rm, pairs: PreferencePairs, idx):
    both = torch.cat([pairs.chosen[idx], pairs.rejected[idx]])
    both_mask = torch.cat([pairs.chosen_mask[idx], pairs.rejected_mask[idx]])
    r = reward_scores(rm, both, both_mask)
    return r[: len(idx)], r[len(idx):]


def train_reward_model(rm, pairs: PreferencePairs, epochs: int = 3, lr: float = 1e-3, batch_size: int = 32,
                       seed: int = 0, progress_bar: bool = True) -> list[float]:
    """Bradley-Terry training; returns the loss per step."""
    if len(pairs) < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} preference pairs, got {len(pairs)}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * (len(pairs) // batch_size)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=steps)
    losses = []
    with progress(steps, progress_bar, desc="reward model", unit="step") as bar:
        for _ in range(epochs):
            order = torch.randperm(len(pairs), generator=gen)
            for k in range(len(pairs) // batch_size):
                r_c, r_r = _pair_scores(rm, pairs, order[k * batch_size:(k + 1) * batch_size])
                loss = bradley_terry_loss(r_c, r_r)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                bar.update(1)
    return losses


@torch.no_grad()
def pair_accuracy(rm, pairs: PreferencePairs, batch_size: int = 256) -> float:
    """Fraction of pairs where r_phi(chosen) > r_phi(rejected)."""
    wins = 0
    for k in range(0, len(pairs), batch_size):
        r_c, r_r = _pair_scores(rm, pairs, torch.arange(k, min(k + batch_size, len(pairs))))
        wins += int((r_c > r_r).sum())
    return wins / max(1, len(pairs))


@torch.no_grad()
def normalize_reward_model(rm, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[float, float]:
    """Set (r - mean) / std over the given (reference) samples as the model's output (eq. 9.2).

    The mean and std are stored in ``rm.config`` (``score_mean``, ``score_std``), so they are saved
    with ``save_pretrained`` and applied by ``reward_scores``; returns (mean, std)."""
    rm.config.score_mean, rm.config.score_std = 0.0, 1.0
    r = reward_scores(rm, input_ids, attention_mask)
    mean, std = r.mean().item(), r.std().item()
    if not std > 0:
        raise ValueError(f"reward scores on the reference samples have std {std}; cannot normalise")
    rm.config.score_mean, rm.config.score_std = mean, std
    return mean, std
