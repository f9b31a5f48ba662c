"""RLHF (Chapters 8-11): the maths against naive loops, the sequence-policy details, the reward
model, the trainers on the micro preset, memory accounting, bad input and the CLI."""
import copy
import json
import math

import pytest
import torch

from ppo_edu.rlhf import data, memory, pipeline, policy, reward
from ppo_edu.rlhf.grpo import GRPO, GRPOConfig, group_advantages, grpo_loss
from ppo_edu.rlhf.ppo import (AdaptiveKLController, PPORLHF, RLHFConfig, masked_whiten, shaped_rewards,
                              token_gae, update_kl)
from ppo_edu.rlhf.trainer import clip_grad_norm_

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The micro preset's tokenizer, pretrained policy and reward model, built once (seconds)."""
    return pipeline.load_assets("micro", 0, "rm", progress_bar=False, device="cpu",
                                cache_dir=tmp_path_factory.mktemp("rlhf-cache"))


def _random_case(seed, B=5, R=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, R + 1, (B,), generator=g)
    mask = (torch.arange(R)[None] < lengths[:, None]).float()
    return g, lengths, mask


# ---------------------------------------------------------------- pure maths vs naive loops
@pytest.mark.parametrize("seed", range(5))
def test_shaped_rewards_match_a_naive_loop(seed):
    g, lengths, mask = _random_case(seed)
    B, R = mask.shape
    logp, ref, score = torch.randn(B, R, generator=g), torch.randn(B, R, generator=g), torch.randn(B, generator=g)
    rewards, kl = shaped_rewards(score, logp, ref, mask, kl_coef=0.3)
    for i in range(B):
        for t in range(R):
            if t >= lengths[i]:
                assert rewards[i, t] == 0 and kl[i, t] == 0
                continue
            expected = -0.3 * (logp[i, t] - ref[i, t]) + (score[i] if t == lengths[i] - 1 else 0.0)
            assert rewards[i, t] == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_token_gae_matches_a_naive_backward_loop(seed, gamma, lam):
    g, lengths, mask = _random_case(seed)
    B, R = mask.shape
    rewards, values = torch.randn(B, R, generator=g), torch.randn(B, R, generator=g)
    adv, ret = token_gae(rewards, values, mask, gamma, lam)
    for i in range(B):
        n, a = int(lengths[i]), 0.0
        for t in reversed(range(n)):
            v_next = values[i, t + 1].item() if t + 1 < n else 0.0          # the last token is terminal
            delta = rewards[i, t].item() + gamma * v_next - values[i, t].item()
            a = delta + gamma * lam * a
            assert adv[i, t].item() == pytest.approx(a, abs=1e-5)
            assert ret[i, t].item() == pytest.approx(a + values[i, t].item(), abs=1e-5)
        assert (adv[i, n:] == 0).all() and (ret[i, n:] == 0).all()


def test_masked_whiten_uses_only_real_tokens():
    _, _, mask = _random_case(3, B=6, R=9)
    x = torch.randn(6, 9) * 5 + 3
    w = masked_whiten(x, mask)
    real = w[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert real.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert (w[~mask.bool()] == 0).all()
    x2 = x.clone()
    x2[~mask.bool()] = 1e6                                               # pads must not leak into the stats
    assert torch.allclose(masked_whiten(x2, mask), w)


@pytest.mark.parametrize("G", [2, 4, 8])
def test_group_advantages_match_a_naive_loop(G):
    scores = torch.randn(5 * G, generator=torch.Generator().manual_seed(G))
    adv = group_advantages(scores, G)
    for k in range(5):
        grp = scores[k * G:(k + 1) * G].tolist()
        mean = sum(grp) / G
        std = math.sqrt(sum((s - mean) ** 2 for s in grp) / (G - 1))
        for j in range(G):
            assert adv[k * G + j].item() == pytest.approx((grp[j] - mean) / (std + 1e-4), abs=1e-5)
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(10), 3)


def test_grpo_loss_at_ratio_one_and_zero_kl():
    g, _, mask = _random_case(7, B=4, R=6)
    logp = torch.randn(4, 6, generator=g, requires_grad=True)
    adv = torch.randn(4, generator=g)
    loss, info = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, clip_eps=0.2, kl_coef=0.5)
    m = mask.bool()
    expected = -(adv[:, None].expand(4, 6)[m]).mean()                   # ratio 1: minus the mean advantage
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert info["kl_k3"].item() == 0.0
    _, info2 = grpo_loss(logp, logp.detach(), logp.detach() + torch.randn(4, 6, generator=g), adv, mask, 0.2, 0.5)
    assert info2["kl_k3"].item() > 0                                     # k3 is never negative


def test_adaptive_kl_controller_moves_toward_target_and_is_clipped():
    c = AdaptiveKLController(0.1, target=4.0, horizon=100)
    c.update(8.0, n_samples=10)                                          # error +1 clipped to +0.2
    assert c.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    c2 = AdaptiveKLController(0.1, target=4.0, horizon=100)
    c2.update(3.6, n_samples=10)                                         # error -0.1, inside the clip
    assert c2.value == pytest.approx(0.1 * (1 - 0.1 * 10 / 100))
    c3 = AdaptiveKLController(0.1, target=4.0, horizon=100)
    c3.update(0.0, n_samples=10)                                         # error -1 clipped to -0.2
    assert c3.value == pytest.approx(0.1 * (1 - 0.2 * 10 / 100))


def test_bradley_terry_loss_matches_the_formula():
    rc, rr = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    expected = sum(math.log(1 + math.exp(-(a - b))) for a, b in zip(rc.tolist(), rr.tolist())) / 3
    assert reward.bradley_terry_loss(rc, rr).item() == pytest.approx(expected, abs=1e-6)


def test_gold_scorer_reads_sentiment():
    g = reward.gold_scores(["The movie was wonderful and great.", "The movie was awful and boring.", "The movie was"])
    assert g[0] > 0.5 and g[1] < -0.5 and g[2] == 0


# ---------------------------------------------------------------- data, tokenizer, sampling
def test_corpus_is_seeded_and_varied():
    a, b = data.generate_reviews(200, seed=3), data.generate_reviews(200, seed=3)
    assert a == b and a != data.generate_reviews(200, seed=4)
    gold = reward.gold_scores(a)
    assert (gold > 0.5).sum() > 20 and (gold < -0.5).sum() > 20         # glowing and scathing reviews
    assert all(any(r.startswith(o) for o in data.OPENINGS) for r in a)


def test_tokenizer_round_trip_with_from_pretrained(assets, tmp_path):
    tok = assets.tok
    assert tok.pad_token != tok.eos_token and tok.padding_side == "left"
    tok.save_pretrained(tmp_path)
    again = data.load_tokenizer(tmp_path)
    text = "The movie was great."
    assert again(text)["input_ids"] == tok(text)["input_ids"] and again.decode(tok(text)["input_ids"]) == text


def test_left_padding_and_position_ids_do_not_change_log_probs(assets):
    lm, tok = assets.policy, assets.tok
    q, m = policy.encode_prompts(tok, ["The movie was", "Honestly, the plot was"], 64, 8)
    assert m[0, 0] == 0 and m[1].all()                                   # the short prompt is left padded
    s = policy.sample(lm, q, m, 8, tok.eos_token_id, tok.pad_token_id, 1.0, torch.Generator().manual_seed(0))
    both = policy.response_logprobs(lm, s)["logp"]
    alone_q, alone_m = policy.encode_prompts(tok, ["The movie was"], 64, 8)
    alone = policy.response_logprobs(lm, policy.Samples(alone_q, alone_m, s.response[:1], s.response_mask[:1],
                                                        s.ended[:1]))["logp"]
    real = s.response_mask[0].bool()
    torch.testing.assert_close(both[0][real], alone[0][real], atol=1e-5, rtol=0)


def test_log_probs_use_the_sampling_temperature(assets):
    lm, tok = assets.policy, assets.tok
    q, m = policy.encode_prompts(tok, ["The movie was"], 64, 4)
    s = policy.sample(lm, q, m, 4, tok.eos_token_id, tok.pad_token_id, 0.7, torch.Generator().manual_seed(1))
    got = policy.response_logprobs(lm, s, temperature=0.7)["logp"][0, 0]
    logits = lm(input_ids=q, attention_mask=m).logits[0, -1]
    expected = torch.log_softmax(logits / 0.7, -1)[s.response[0, 0]]
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)


def test_sampler_draws_from_softmax_at_the_temperature(assets):
    """Gumbel-max sampling is exact: first-token frequencies over 32000 draws match softmax(z / tau)."""
    lm, tok = assets.policy, assets.tok
    q, m = policy.encode_prompts(tok, ["The movie was"] * 32000, 64, 1)
    s = policy.sample(lm, q, m, 1, tok.eos_token_id, tok.pad_token_id, 0.7, torch.Generator().manual_seed(5))
    freq = torch.bincount(s.response[:, 0], minlength=len(tok)).float() / 32000
    probs = torch.softmax(lm(input_ids=q[:1], attention_mask=m[:1]).logits[0, -1] / 0.7, -1)
    tv = 0.5 * (freq[:len(probs)] - probs).abs().sum().item()
    assert tv < 0.03, tv                               # torch.multinomial's own draws give 0.020 here


def _padded_batch(assets, n=12, seed=3):
    """Samples of left-padded prompts (several lengths) and right-padded responses."""
    tok = assets.tok
    q, m = policy.encode_prompts(tok, [assets.prompts[i % len(assets.prompts)] for i in range(n)], 64, 10)
    return policy.sample(assets.policy, q, m, 10, tok.eos_token_id, tok.pad_token_id, 1.0,
                         torch.Generator().manual_seed(seed))


def test_packed_trunk_equals_the_models_own_forward_at_every_real_token(assets):
    """policy.packed_hidden_states runs GPT-2 on the real tokens only: bit for bit the numbers of
    GPT2Model's forward pass there, 0 on pads; a trunk it does not support runs its own forward."""
    s, body = _padded_batch(assets), assets.policy.transformer
    ids, mask = s.input_ids, s.attention_mask
    assert not mask.all()                                              # there is padding to skip
    with torch.no_grad():
        own = body(input_ids=ids, attention_mask=mask, position_ids=policy.position_ids(mask)).last_hidden_state
        fast = policy.packed_hidden_states(body, ids, mask, policy.position_ids(mask))
    real = mask.bool()
    assert torch.equal(fast[real], own[real]) and not fast[~real].any()
    assert policy.packable(body) and not policy.packable(torch.nn.Linear(2, 2))


def test_packed_trunk_gradients_match_the_models_own(assets):
    s = _padded_batch(assets)
    body = copy.deepcopy(assets.policy.transformer).requires_grad_(True)
    ids, mask = s.input_ids, s.attention_mask
    w = torch.randn(ids.shape + (body.config.n_embd,), generator=torch.Generator().manual_seed(0)) * mask[..., None]
    grads = []
    for run in (lambda: body(input_ids=ids, attention_mask=mask, position_ids=policy.position_ids(mask)).last_hidden_state,
                lambda: policy.packed_hidden_states(body, ids, mask, policy.position_ids(mask))):
        body.zero_grad()
        (run() * w).sum().backward()
        grads.append([p.grad.clone() for p in body.parameters()])
    for own, fast in zip(*grads):                                    # equal up to the order of float sums
        torch.testing.assert_close(fast, own, rtol=1e-4, atol=1e-6)


def test_sampler_writes_the_same_tokens_with_or_without_the_packed_decoder(assets, monkeypatch):
    """policy.Decoder (only unfinished rows, preallocated cache) and the model's own past_key_values
    (every row) draw the same tokens from the same Gumbel noise."""
    fast = _padded_batch(assets, n=16, seed=4)
    monkeypatch.setattr(policy, "packable", lambda body: False)
    own = _padded_batch(assets, n=16, seed=4)
    assert torch.equal(fast.response, own.response) and fast.ended.any() and not fast.ended.all()


def _wanted_positions(s, seed=0):
    """Three ``at`` masks: the states before each real response token, each row's last real token, and a
    random subset of the real tokens."""
    mask = s.attention_mask.bool()
    last = torch.zeros_like(mask)
    last[torch.arange(len(mask)), reward.last_real(s.attention_mask)] = True
    some = mask & (torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed)) < 0.3)
    return {"response states": policy.response_states(s), "last token": last, "random subset": some}


def test_the_packed_trunk_at_chosen_positions_gives_the_full_passs_numbers_bit_for_bit(assets, monkeypatch):
    """``packed_hidden_states(..., at=...)`` leaves out the tokens after each row's last wanted position and
    runs the last block at the wanted rows only: the same numbers there, bit for bit, in row-major order;
    a trunk it cannot pack runs whole and is indexed the same way."""
    s, body = _padded_batch(assets, n=16), assets.policy.transformer
    ids, mask, pos = s.input_ids, s.attention_mask, policy.position_ids(s.attention_mask)
    with torch.no_grad():
        full = policy.packed_hidden_states(body, ids, mask, pos)
        for name, at in _wanted_positions(s).items():
            assert at.any() and not at.all(), name
            part = policy.packed_hidden_states(body, ids, mask, pos, at=at)
            assert part.shape == (int(at.sum()), body.config.n_embd), name
            assert torch.equal(part, full[at]), name
        monkeypatch.setattr(policy, "packable", lambda body: False)
        at = policy.response_states(s)
        torch.testing.assert_close(policy.packed_hidden_states(body, ids, mask, pos, at=at), full[at])


@pytest.mark.parametrize("bad, message", [("pad", "must be a real token"), ("none", "selects no position")])
def test_the_packed_trunk_refuses_positions_it_cannot_give(assets, bad, message):
    s, body = _padded_batch(assets), assets.policy.transformer
    mask = s.attention_mask
    at = ~mask.bool() if bad == "pad" else torch.zeros_like(mask, dtype=torch.bool)
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        policy.packed_hidden_states(body, s.input_ids, mask, policy.position_ids(mask), at=at)


def test_log_probs_and_values_without_gradients_equal_those_with_them(assets):
    """Without gradients response_logprobs and the critic run only the states they need: the same log-probs,
    entropies, whole-vocabulary log-probs and values at every real token as the whole pass that training takes."""
    s = _padded_batch(assets, n=16)
    m = s.response_mask.bool()
    model = policy.PolicyWithValue(copy.deepcopy(assets.policy)).eval()
    torch.nn.init.normal_(model.value_head.weight, generator=torch.Generator().manual_seed(0))
    critic = policy.Critic(copy.deepcopy(assets.policy.transformer)).eval()
    torch.nn.init.normal_(critic.value_head.weight, generator=torch.Generator().manual_seed(1))
    run = lambda: (policy.response_logprobs(model, s, 0.7, with_entropy=True, with_dist="real"), critic(s))
    with_grad = run()
    with torch.no_grad():
        without = run()
    for key in ("logp", "entropy", "logp_all", "values"):
        assert torch.equal(without[0][key], with_grad[0][key].detach()) if key == "logp_all" else \
            torch.equal(without[0][key][m], with_grad[0][key].detach()[m]), key
    assert torch.equal(without[1][m], with_grad[1].detach()[m])
    assert with_grad[0]["logp"].requires_grad and with_grad[1].requires_grad


@pytest.mark.parametrize("scale", [0.1, 10.0, float("nan")], ids=["within", "clipped", "nan"])
def test_clip_grad_norm_gives_torchs_numbers_bit_for_bit(scale):
    """The trainers' clip skips the multiply by 1 when nothing is clipped; gradients and norm are torch's, also
    for a clipped step and a non-finite norm (torch scales by NaN then; so does ours)."""
    g = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in ((7, 3), (5,), (2, 2, 2))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape, generator=g) * scale
        b.grad = a.grad.clone()
    ours.append(torch.nn.Parameter(torch.zeros(3)))                  # a parameter without a gradient is skipped
    norm = clip_grad_norm_(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0, foreach=True)
    assert torch.equal(norm, expected) or (norm.isnan() and expected.isnan())
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad) or (a.grad.isnan().all() and b.grad.isnan().all())
    assert (scale == 10.0) == bool(norm > 1.0)                       # the clipped case really clips


def test_the_trainers_reward_scorer_gives_reward_scores_numbers(assets):
    s = _padded_batch(assets)
    with torch.no_grad():
        expected = reward.reward_scores(assets.reward_model, s.input_ids, s.attention_mask)
    assert torch.equal(pipeline.RewardModelScorer(assets.reward_model)(s), expected)


def test_response_mask_ends_after_the_end_token():
    eos, pad = 5, 6
    resp = torch.tensor([[1, 2, eos, 3, 4], [1, 2, 3, 4, 1], [eos, 1, 1, 1, 1]])
    mask = policy.response_mask(resp, eos, pad)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


# ---------------------------------------------------------------- reward model
def test_reward_model_beats_chance_on_heldout_pairs(assets):
    info = assets.info["rm"]
    assert info["heldout_pairs"] >= 100
    assert info["heldout_accuracy"] >= 0.7, info["heldout_accuracy"]


def test_label_pairs_prefers_higher_gold_with_a_margin():
    ids = torch.arange(12).view(4, 3)
    s_a = policy.Samples(ids[:, :1], torch.ones(4, 1, dtype=torch.long), ids[:, 1:], torch.ones(4, 2, dtype=torch.long),
                         torch.ones(4, dtype=torch.bool))
    s_b = policy.Samples(ids[:, :1], torch.ones(4, 1, dtype=torch.long), ids[:, 1:] + 100,
                         torch.ones(4, 2, dtype=torch.long), torch.ones(4, dtype=torch.bool))
    pairs = reward.label_pairs(s_a, s_b, torch.tensor([0.9, 0.1, 0.5, -0.5]), torch.tensor([0.1, 0.9, 0.45, 0.5]),
                               margin=0.2)
    assert len(pairs) == 3                                               # 0.5 vs 0.45 is below the margin
    assert (pairs.gold_chosen > pairs.gold_rejected).all()
    assert pairs.chosen[0, 1] == 1 and pairs.chosen[1, 1] == 104        # a won the first, b the second


def test_reward_model_is_normalised_on_reference_samples(assets):
    s = pipeline.draw_samples(assets.policy, assets.tok, assets.prompts, 256, 12, 99, "cpu")
    r = torch.cat([reward.reward_scores(assets.reward_model, x.input_ids, x.attention_mask) for x in s])
    assert abs(r.mean().item()) < 0.3 and 0.7 < r.std().item() < 1.3


# ---------------------------------------------------------------- trainers
def _ppo(assets, **cfg):
    config = pipeline.PRESETS["micro"].ppo.replace(**cfg)
    return PPORLHF(copy.deepcopy(assets.policy), assets.tok, assets.prompts,
                   pipeline.RewardModelScorer(assets.reward_model), config, ref=assets.policy, seed=0)


def test_kl_is_zero_before_the_first_update(assets):
    t = _ppo(assets)
    stats = t.step()
    assert stats["kl"] == 0.0 and stats["non_score_reward"] == 0.0
    assert stats["approx_kl"] > 0                                        # the policy did move during the update
    second = t.step()                                                    # last_kl: that batch's per-token k1
    assert t.last_kl.shape == t.last_samples.response.shape and (t.last_kl * (1 - t.last_samples.response_mask)).abs().max() == 0
    assert second["kl"] > 0 and t.last_kl.sum(1).mean().item() == pytest.approx(second["kl"], rel=1e-6)


def test_a_few_ppo_iterations_raise_the_reward(assets):
    hist = _ppo(assets, lr=3e-3, kl_coef=0.01).train(12, progress_bar=False)
    first, last = sum(h["score"] for h in hist[:3]) / 3, sum(h["score"] for h in hist[-3:]) / 3
    assert last > first + 0.3, (first, last)


def test_a_few_grpo_steps_raise_the_reward(assets):
    cfg = pipeline.PRESETS["micro"].grpo.replace(lr=3e-3)
    t = GRPO(copy.deepcopy(assets.policy), assets.tok, assets.prompts, pipeline.RewardModelScorer(assets.reward_model),
             cfg, ref=assets.policy, seed=0)
    hist = t.train(12, progress_bar=False)
    first, last = sum(h["score"] for h in hist[:3]) / 3, sum(h["score"] for h in hist[-3:]) / 3
    assert last > first + 0.3, (first, last)


def test_grpo_adaptive_kl_steers_beta_with_the_batch_kl_and_a_fixed_beta_logs_nothing_new(assets):
    cfg = pipeline.PRESETS["micro"].grpo.replace(adaptive_kl=True, kl_coef=0.1, adaptive_kl_target=2.0, kl_horizon=100)
    t = GRPO(copy.deepcopy(assets.policy), assets.tok, assets.prompts, pipeline.RewardModelScorer(assets.reward_model),
             cfg, ref=assets.policy, seed=0)
    first, second = t.step(), t.step()
    assert first["kl"] == 0.0 and first["kl_coef"] == 0.1                 # pi = pi_ref at the first step
    assert second["kl_coef"] == pytest.approx(0.1 * (1 - 0.2 * 16 / 100))  # KL 0 is far below 2: the full step down
    fixed = GRPO(copy.deepcopy(assets.policy), assets.tok, assets.prompts,
                 pipeline.RewardModelScorer(assets.reward_model), cfg.replace(adaptive_kl=False), ref=assets.policy)
    assert "kl_coef" not in fixed.step() and fixed.kl_ctl.value == 0.1


def test_grpo_with_several_minibatches_uses_the_rollout_policy_as_pi_old(assets):
    """After the first minibatch's update the policy has moved, so later minibatches need pi_old's
    log-probs from before the update: their ratios then differ from 1 and clipping can act."""
    cfg = pipeline.PRESETS["micro"].grpo.replace(n_minibatches=4, lr=1e-2)
    t = GRPO(copy.deepcopy(assets.policy), assets.tok, assets.prompts, pipeline.RewardModelScorer(assets.reward_model),
             cfg, ref=assets.policy, seed=0)
    seen = []
    orig = t.minibatch_step

    def spy(s, mask, logp_old, ref_logp, adv):
        with torch.no_grad():
            now = policy.response_logprobs(t.model, s)["logp"]
        seen.append(None if logp_old is None else ((now - logp_old).abs() * mask).max().item())
        return orig(s, mask, logp_old, ref_logp, adv)

    t.minibatch_step = spy
    t.step()
    assert len(seen) == 4 and None not in seen
    assert seen[0] < 1e-4 and min(seen[1:]) > 1e-3     # the first sees pi_old itself, later ones a moved policy


def test_update_kl_is_the_exact_kl_and_sees_mass_moved_onto_unsampled_tokens():
    old = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.5, 0.25, 0.25]]))
    new = torch.log(torch.tensor([[0.45, 0.5, 0.05], [0.5, 0.25, 0.25]]))   # state 1: mass moved to token 1
    want = sum(p * math.log(p / q) for p, q in zip((0.45, 0.5, 0.05), (0.9, 0.05, 0.05))) / 2
    assert update_kl(new, old).item() == pytest.approx(want, rel=1e-5)
    assert update_kl(old, old).item() == pytest.approx(0.0, abs=1e-7)


def test_max_update_kl_ends_the_epochs_once_the_policy_moved_that_far(assets):
    free = _ppo(assets, lr=1e-2, max_update_kl=1e9).step()
    assert free["n_minibatch_steps"] == 4 and not free["early_stop"] and free["update_kl"] > 0
    t = _ppo(assets, lr=1e-2, max_update_kl=1e-6)
    seen = []
    orig = t.minibatch_step
    t.minibatch_step = lambda *args, **kw: seen.append(orig(*args, **kw)["update_kl"]) or {"update_kl": seen[-1]}
    stats = t.step()
    # the first minibatch sees pi_old itself (KL 0, below the limit), the second a moved policy: stop there
    assert stats["n_minibatch_steps"] == 2 and stats["early_stop"]
    assert seen[0] < 1e-6 < seen[1]


def test_without_max_update_kl_the_statistics_are_unchanged(assets):
    stats = _ppo(assets).step()
    assert not {"update_kl", "n_minibatch_steps", "early_stop"} & set(stats)


def _exact_kl_to(model, ref, s):
    """KL(model || ref) per response token, over the whole vocabulary, on the samples ``s``."""
    with torch.no_grad():
        new = policy.response_logprobs(model, s, with_dist=True)["logp_all"]
        old = policy.response_logprobs(ref, s, with_dist=True)["logp_all"]
    m = s.response_mask.bool()
    return update_kl(new[m], old[m]).item()


def test_ref_kl_loss_reports_the_exact_kl_and_holds_the_policy_near_the_reference(assets):
    runs = {c: _ppo(assets, lr=1e-2, ref_kl_coef=c) for c in (0.0, 3.0)}
    hist = {c: t.train(3, progress_bar=False) for c, t in runs.items()}
    assert "ref_kl" not in hist[0.0][0]                                   # off: nothing new is computed or logged
    probe = runs[0.0].prompts.draw(16)
    s = policy.sample(assets.policy, *probe, 12, runs[0.0].prompts.eos_id, runs[0.0].prompts.pad_id, 1.0,
               torch.Generator().manual_seed(5))
    far, near = (_exact_kl_to(runs[c].model, assets.policy, s) for c in (0.0, 3.0))
    assert near < 0.5 * far, (near, far)


def test_ppo_is_deterministic_under_a_seed(assets):
    a, b = _ppo(assets).train(2, progress_bar=False), _ppo(assets).train(2, progress_bar=False)
    keys = ("score", "kl", "policy_loss", "value_loss", "entropy")
    assert [[h[k] for k in keys] for h in a] == [[h[k] for k in keys] for h in b]


def test_separate_critic_trains_its_own_body(assets):
    t = _ppo(assets, critic="separate")
    before = copy.deepcopy(t.critic.state_dict())
    t.step()
    assert any(not torch.equal(before[k], v) for k, v in t.critic.state_dict().items())
    assert not hasattr(t.model, "critic") and t.critic.transformer is not t.model.transformer


def test_missing_end_token_is_penalised(assets):
    calls = []

    def constant(s):
        calls.append(s)
        return torch.zeros(len(s.response))

    t = PPORLHF(copy.deepcopy(assets.policy), assets.tok, assets.prompts, constant,
                pipeline.PRESETS["micro"].ppo.replace(max_new_tokens=2, missing_eos_penalty=1.5, n_epochs=1),
                ref=assets.policy)
    t.step()
    s = calls[-1]
    assert (~s.ended).any()                                              # 2 tokens rarely reach the end token
    # the penalised score enters the last token's reward: check through shaped_rewards
    score = torch.zeros(len(s.ended)) - 1.5 * (~s.ended).float()
    r, _ = shaped_rewards(score, torch.zeros(s.response.shape), torch.zeros(s.response.shape),
                          s.response_mask.float(), 0.0)
    assert r.sum(1).tolist() == score.tolist()


# ---------------------------------------------------------------- memory
def test_memory_accounting_counts_what_exists(assets):
    t = _ppo(assets)
    m = memory.measure_trainer(t, assets.reward_model)
    pol = m["models"]["policy"]
    assert pol["grads"] == pytest.approx(pol["params"]) and pol["optimizer"] == pytest.approx(2 * pol["params"])
    assert m["models"]["reference"]["grads"] == 0 and m["models"]["reference"]["optimizer"] == 0
    assert m["activations"] > 0 and "critic" not in m["models"]
    sep = memory.measure_trainer(_ppo(assets, critic="separate"), assets.reward_model)
    assert sep["models"]["critic"]["params"] > 0.5 * pol["params"]
    g = GRPO(copy.deepcopy(assets.policy), assets.tok, assets.prompts, pipeline.RewardModelScorer(assets.reward_model),
             pipeline.PRESETS["micro"].grpo, ref=assets.policy)
    mg = memory.measure_trainer(g, assets.reward_model)
    assert "critic" not in mg["models"] and mg["models"]["policy"]["params"] < pol["params"]  # no value head


def test_minibatch_hook_wraps_every_minibatch_step_and_is_removed_after(assets):
    import contextlib

    t = _ppo(assets)
    events = []

    @contextlib.contextmanager
    def hook():
        events.append("enter")
        yield
        events.append("exit")

    with t.minibatch_hook(hook):
        t.step()
    cfg = t.cfg
    assert events == ["enter", "exit"] * (cfg.n_epochs * cfg.n_minibatches)
    t.step()
    assert len(events) == 2 * cfg.n_epochs * cfg.n_minibatches             # gone after the with block


def test_trainers_share_one_base_and_grpo_needs_nothing_private_from_ppo():
    import inspect

    from ppo_edu.rlhf import grpo
    from ppo_edu.rlhf import ppo as rlhf_ppo
    from ppo_edu.rlhf import trainer

    assert issubclass(PPORLHF, trainer.LMTrainer) and issubclass(GRPO, trainer.LMTrainer)
    assert "from .ppo import" not in inspect.getsource(grpo)
    for name in ("check_scores", "PromptSampler", "trim"):                # still importable from rlhf.ppo
        assert getattr(rlhf_ppo, name) is getattr(trainer, name)
    assert PPORLHF._minibatch is PPORLHF.minibatch_step                    # the old name chapter 10 shows


def test_saved_tensor_counter_counts_activations_once():
    x = torch.randn(100, 50, requires_grad=True)
    with memory.SavedTensorCounter() as c:
        y = torch.tanh(x)                                               # saves its output: 100*50*4 bytes
        z = (y * y).sum()                                               # saves y (twice, same storage)
    assert c.bytes == 100 * 50 * 4
    z.backward()


# ---------------------------------------------------------------- bad input
def test_bad_prompts_are_rejected_before_training(assets):
    scorer = pipeline.RewardModelScorer(assets.reward_model)
    with pytest.raises(ValueError, match="prompts is empty"):
        PPORLHF(copy.deepcopy(assets.policy), assets.tok, [], scorer)
    with pytest.raises(ValueError, match="non-empty string"):
        PPORLHF(copy.deepcopy(assets.policy), assets.tok, ["The movie was", "  "], scorer)
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        PPORLHF(copy.deepcopy(assets.policy), assets.tok, ["The movie was " * 20], scorer)


@pytest.mark.parametrize("bad,match", [
    (lambda s: torch.full((len(s.response),), float("nan")), "non-finite"),
    (lambda s: torch.zeros(len(s.response), 1), r"shape \(2, 1\); expected \(2,\)"),
    (lambda s: [0.0] * len(s.response), "must return a torch.Tensor"),
])
def test_bad_reward_functions_are_rejected_before_training(assets, bad, match):
    for cls in (PPORLHF, GRPO):
        with pytest.raises((ValueError, TypeError), match=match):
            cls(copy.deepcopy(assets.policy), assets.tok, assets.prompts, bad)


def test_from_pretrained_adds_a_pad_token_like_gpt2_needs(assets, tmp_path):
    """The loading path a user with real GPT-2 takes (``from_pretrained("gpt2")``), on a saved
    folder whose tokenizer, like GPT-2's, pads with the end-of-text token."""
    from ppo_edu.rlhf.models import from_pretrained

    tok = copy.deepcopy(assets.tok)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(tmp_path)
    assets.policy.save_pretrained(tmp_path)
    tok2, lm = from_pretrained(str(tmp_path))
    assert tok2.pad_token_id != tok2.eos_token_id and tok2.padding_side == "left"
    assert lm.get_input_embeddings().num_embeddings >= len(tok2) and lm.config.pad_token_id == tok2.pad_token_id
    q, m = policy.encode_prompts(tok2, ["The movie was", "I found the film"], 64, 4)
    s = policy.sample(lm, q, m, 4, tok2.eos_token_id, tok2.pad_token_id, 1.0, torch.Generator().manual_seed(0))
    assert s.response.shape == (2, 4)


def test_tokenizer_without_a_distinct_pad_token_is_rejected(assets):
    tok = copy.deepcopy(assets.tok)
    tok.pad_token = tok.eos_token
    with pytest.raises(ValueError, match="pad_token == eos_token"):
        PPORLHF(copy.deepcopy(assets.policy), tok, assets.prompts, pipeline.RewardModelScorer(assets.reward_model))
    tok.pad_token = None
    with pytest.raises(ValueError, match="pad_token is None"):
        GRPO(copy.deepcopy(assets.policy), tok, assets.prompts, pipeline.RewardModelScorer(assets.reward_model))


@pytest.mark.parametrize("field,value,match", [
    ("n_minibatches", 3, "RLHFConfig.n_minibatches=3 does not divide batch_size = 64: allowed values are its divisors"),
    ("lam", 1.5, r"RLHFConfig.lam=1.5 is invalid: allowed values are a number in \(0, 1\]"),
    ("kl_coef", -0.1, "RLHFConfig.kl_coef=-0.1 is invalid: allowed values are a number >= 0"),
    ("vf_clip", 0.0, "RLHFConfig.vf_clip=0.0 is invalid: allowed values are None or a number > 0"),
    ("n_epochs", 1.5, "RLHFConfig.n_epochs=1.5 is invalid: allowed values are integers >= 1"),
    ("lr", "fast", "RLHFConfig.lr='fast' is invalid: allowed values are a number > 0"),
    ("critic", "both", "RLHFConfig.critic='both' is invalid: allowed values are 'shared' and 'separate'"),
    ("max_update_kl", 0.0, "RLHFConfig.max_update_kl=0.0 is invalid: allowed values are None or a number > 0"),
    ("ref_kl_coef", -1.0, "RLHFConfig.ref_kl_coef=-1.0 is invalid: allowed values are a number >= 0"),
])
def test_rlhf_config_names_field_value_and_range(field, value, match):
    with pytest.raises(ValueError, match=match):
        RLHFConfig(**{field: value})


@pytest.mark.parametrize("field,value,match", [
    ("group_size", 1, "GRPOConfig.group_size=1 is invalid: allowed values are integers >= 2"),
    ("n_minibatches", 3, "GRPOConfig.n_minibatches=3 does not divide prompts_per_step \\* group_size = 64"),
    ("kl_coef", -1.0, "GRPOConfig.kl_coef=-1.0 is invalid: allowed values are a number >= 0"),
    ("adaptive_kl_target", 0.0, "GRPOConfig.adaptive_kl_target=0.0 is invalid: allowed values are a number > 0"),
    ("kl_horizon", 0, "GRPOConfig.kl_horizon=0 is invalid: allowed values are integers >= 1"),
])
def test_grpo_config_names_field_value_and_range(field, value, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**{field: value})


@pytest.mark.parametrize("cls,old,new,value,new_value", [
    (RLHFConfig, "epochs", "n_epochs", 2, 2),
    (RLHFConfig, "minibatches", "n_minibatches", 8, 8),
    (RLHFConfig, "target_kl", "adaptive_kl_target", 4.0, 4.0),
    (RLHFConfig, "value_clip_eps", "vf_clip", 0.3, 0.3),
    (RLHFConfig, "value_clip_eps", "vf_clip", 0.0, None),              # 0 = off became None = off
    (GRPOConfig, "beta", "kl_coef", 0.1, 0.1),
    (GRPOConfig, "epochs", "n_epochs", 2, 2),
    (GRPOConfig, "minibatches", "n_minibatches", 2, 2),
])
def test_old_config_names_still_work_with_a_warning(cls, old, new, value, new_value):
    """The names chapters 10 and 11 used: constructor, replace and attribute reads warn, and mean the new field."""
    with pytest.warns(DeprecationWarning, match=f"{cls.__name__}.{old} is deprecated: use {new}"):
        a = cls(**{old: value})
    with pytest.warns(DeprecationWarning, match=f"use {new}"):
        b = cls().replace(**{old: value})
    assert getattr(a, new) == getattr(b, new) == new_value and a == b == cls(**{new: new_value})
    with pytest.warns(DeprecationWarning, match=f"use {new}"):
        assert getattr(a, old) == value
    with pytest.raises(TypeError, match=f"both {old}"), pytest.warns(DeprecationWarning):
        cls(**{old: value, new: new_value})
    with pytest.raises(ValueError, match="unknown"):
        cls().replace(no_such_field=1)


def test_grpo_loss_old_beta_keyword_still_works_with_a_warning():
    g = torch.Generator().manual_seed(0)
    logp, ref, adv = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    mask = torch.ones(3, 5)
    new, _ = grpo_loss(logp, logp, ref, adv, mask, 0.2, kl_coef=0.3)
    with pytest.warns(DeprecationWarning, match=r"grpo_loss\(beta=\) is deprecated: use kl_coef="):
        old, _ = grpo_loss(logp, logp, ref, adv, mask, 0.2, beta=0.3)
    assert old.item() == new.item()


# ---------------------------------------------------------------- the whole pipeline from the CLI
def test_cli_rlhf_micro_writes_a_run_folder(tmp_path, capsys, monkeypatch):
    from ppo_edu.cli import main

    monkeypatch.setenv("PPO_EDU_CACHE", str(tmp_path / "cache"))
    code = main(["rlhf", "--preset", "micro", "--out", str(tmp_path / "run"), "--no-progress",
                 "--ppo-iterations", "3", "--grpo-steps", "3"])
    assert code == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("rm_heldout_accuracy", "before", "ppo", "grpo", "peak_memory_mb", "wall_seconds"):
        assert key in s
    for k in ("ppo", "grpo"):
        assert {"gold", "rm", "kl", "sec_per_iter_median", "memory_mb"} <= set(s[k])
    assert (tmp_path / "run" / "rlhf.png").stat().st_size > 5000
    assert "PPO" in capsys.readouterr().out
    assert main(["rlhf", "--preset", "huge", "--out", str(tmp_path / "x"), "--no-progress"]) == 2


@pytest.mark.parametrize("field,value,match", [
    ("n_head", 3, "ModelSize.n_head=3 does not divide n_embd = 32"),
    ("n_layer", 0, "ModelSize.n_layer=0 is invalid: allowed values are integers >= 1"),
    ("rm_lr", -1.0, "ModelSize.rm_lr=-1.0 is invalid: allowed values are a number > 0"),
])
def test_model_size_names_field_value_and_range(field, value, match):
    from ppo_edu.rlhf.models import ModelSize

    with pytest.raises(ValueError, match=match):
        ModelSize(**{"n_layer": 1, "n_head": 2, "n_embd": 32, field: value})
