"""PPO as a user drives it: config validation, determinism, the two update engines,
save/load and unsafe checkpoints, NaN detection, and the CLI."""
import json
import os
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch

from ppo_edu import PPO, PPOConfig, preset
from ppo_edu.checkpoint import CheckpointError
from ppo_edu.ppo import RL_ZOO

SMALL = PPOConfig(n_envs=4, n_steps=32, n_epochs=2, n_minibatches=2)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("field,value,allowed", [
    ("lr", 0.0, "> 0"), ("lr", -1e-3, "> 0"), ("clip_eps", 0, "> 0"),
    ("gamma", 1.5, "(0, 1]"), ("gamma", 0.0, "(0, 1]"), ("lam", -0.1, "(0, 1]"),
    ("n_envs", 0, ">= 1"), ("n_epochs", 2.5, ">= 1"), ("ent_coef", -1.0, ">= 0"),
    ("target_kl", 0.0, "None or"), ("backend", "jax", "'numpy'"), ("hidden", (), "positive"),
    ("hidden", (1.7,), "integer layer sizes"), ("log_std_init", float("nan"), "from -20 to 5"),
    ("log_std_init", 100.0, "from -20 to 5"),
])
def test_invalid_config_names_field_value_and_range(field, value, allowed):
    with pytest.raises(ValueError) as err:
        PPOConfig(**{field: value})
    msg = str(err.value)
    assert field in msg and repr(value) in msg and allowed in msg


def test_minibatches_must_divide_the_batch():
    with pytest.raises(ValueError, match=r"n_minibatches=3 does not divide .* 256"):
        PPOConfig(n_envs=8, n_steps=32, n_minibatches=3)


def test_replace_rejects_unknown_fields():
    with pytest.raises(ValueError, match="learning_rate"):
        PPOConfig().replace(learning_rate=1e-3)


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "Blackjack-v1"])
def test_unsupported_spaces_raise_type_error(env_id):
    with pytest.raises(TypeError, match="not supported"):
        PPO(env_id, SMALL)


def test_unknown_env_id_is_a_clear_error():
    with pytest.raises(ValueError, match="NoSuchEnv-v0"):
        PPO("NoSuchEnv-v0", SMALL)


def test_bad_total_timesteps():
    with pytest.raises(ValueError, match="total_timesteps"):
        PPO("CartPole-v1", SMALL).learn(0)


# ---------------------------------------------------------------------------- determinism
def _rows(agent):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in agent.history]


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_same_seed_same_numbers(env_id):
    a = PPO(env_id, SMALL, seed=3).learn(512)
    b = PPO(env_id, SMALL, seed=3).learn(512)
    c = PPO(env_id, SMALL, seed=4).learn(512)
    np.testing.assert_equal(_rows(a), _rows(b))
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert _rows(a) != _rows(c)


@pytest.mark.parametrize("env_id,extra", [("CartPole-v1", {}), ("Pendulum-v1", {"vf_clip": 0.2, "ent_coef": 0.01}),
                                          ("CartPole-v1", {"shared_network": True})])
def test_numpy_and_torch_backends_give_the_same_update(env_id, extra):
    cfg = SMALL.replace(**extra)
    a = PPO(env_id, cfg.replace(backend="numpy"), seed=0).learn(128)
    b = PPO(env_id, cfg.replace(backend="torch"), seed=0).learn(128)
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
        assert a.history[0][key] == pytest.approx(b.history[0][key], rel=1e-3, abs=1e-6), key


def test_metrics_rows_have_the_documented_columns():
    agent = PPO("CartPole-v1", SMALL, seed=0).learn(256)
    row = agent.history[-1]
    for key in ("env_steps", "wall_time", "episodic_return", "policy_loss", "value_loss", "entropy",
                "approx_kl", "clip_fraction", "explained_variance"):
        assert key in row
    assert row["env_steps"] == 256 and len(agent.history) == 2


def test_callback_can_stop_training():
    seen = []
    agent = PPO("CartPole-v1", SMALL, seed=0).learn(10_000, callback=lambda a, row: seen.append(row) or len(seen) < 3)
    assert len(seen) == 3 and agent.num_timesteps == 3 * SMALL.batch_size


def test_target_kl_stops_epochs_early():
    cfg = SMALL.replace(n_epochs=10, lr=3e-2, target_kl=1e-4)
    agent = PPO("CartPole-v1", cfg, seed=0).learn(128)
    assert agent.history[0]["early_stop"] is True


# ---------------------------------------------------------------------------- save / load
def test_save_load_round_trip_with_normalisation(tmp_path):
    agent = PPO("Pendulum-v1", SMALL.replace(norm_obs=True, norm_reward=True), seed=0).learn(512)
    path = tmp_path / "sub" / "agent.ckpt"
    agent.save(path)
    assert sorted(os.listdir(path.parent)) == ["agent.ckpt"]  # exactly that file, no temp left
    loaded = PPO.load(path)
    assert loaded.config == agent.config and loaded.num_timesteps == agent.num_timesteps
    np.testing.assert_allclose(loaded.obs_rms.mean, agent.obs_rms.mean)
    obs = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(obs)[0], agent.predict(obs)[0])
    assert loaded.evaluate(3) == agent.evaluate(3)
    np.testing.assert_array_equal(loaded.optimizer.m, agent.optimizer.m)


def test_loaded_agent_keeps_training(tmp_path):
    agent = PPO("CartPole-v1", SMALL, seed=0).learn(256)
    agent.save(tmp_path / "a.pt")
    loaded = PPO.load(tmp_path / "a.pt").learn(256, reset_num_timesteps=False)
    assert loaded.num_timesteps == 512
    assert PPO.load(tmp_path / "a.pt").learn(256).num_timesteps == 256  # SB3's default restarts the count


def test_missing_and_truncated_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        PPO.load(tmp_path / "nope.pt")
    agent = PPO("CartPole-v1", SMALL, seed=0)
    agent.save(tmp_path / "a.pt")
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        PPO.load(tmp_path / "cut.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_tampered_checkpoint_never_runs_code(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    torch.save({"format": "ppo_edu.checkpoint/1", "model": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not safe to load"):
        PPO.load(tmp_path / "evil.pt")
    assert not _Evil.marker.exists()
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        PPO.load(tmp_path / "plain.pkl")
    assert not _Evil.marker.exists()


def test_foreign_checkpoint_is_rejected(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a ppo_edu"):
        PPO.load(tmp_path / "other.pt")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    agent = PPO("CartPole-v1", SMALL, seed=0)
    path = tmp_path / "a.pt"
    agent.save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        agent.learn(128).save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["a.pt"]


# ---------------------------------------------------------------------------- NaN
class NaNReward(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), float("nan"), False, False, {}


class HugeReward(NaNReward):
    def step(self, action):
        return np.zeros(2, np.float32), 3e38, False, False, {}  # finite, but its returns overflow float32


def test_nan_in_a_loss_stops_training_with_a_message():
    env = gym.vector.SyncVectorEnv([HugeReward, HugeReward])
    with pytest.raises(FloatingPointError, match=r"update 1: (policy|value)_loss is (nan|inf)"):
        PPO(env, SMALL).learn(256)


class NaNObs(NaNReward):
    def step(self, action):
        return np.array([0.0, np.inf], np.float32), 1.0, False, False, {}


@pytest.mark.parametrize("env_cls,what", [(NaNReward, "reward"), (NaNObs, "observation")])
@pytest.mark.parametrize("norm", [False, True])
def test_non_finite_env_output_is_blamed_on_the_env_before_any_update(env_cls, what, norm):
    env = gym.vector.SyncVectorEnv([env_cls, env_cls])
    agent = PPO(env, SMALL.replace(norm_obs=norm, norm_reward=norm))
    before = agent.flat.data.copy()
    with pytest.raises(FloatingPointError, match=f"update 1: the environment 'SyncVectorEnv' returned a "
                                                 f"non-finite {what}"):
        agent.learn(256)
    np.testing.assert_array_equal(agent.flat.data, before)  # nothing learned from it


# ---------------------------------------------------------------------------- predict
def test_predict_single_and_batch():
    agent = PPO("CartPole-v1", SMALL)
    a, state = agent.predict(np.zeros(4, np.float32))
    assert state is None and np.ndim(a) == 0
    batch, _ = agent.predict(np.zeros((5, 4), np.float32))
    assert batch.shape == (5,)
    with pytest.raises(ValueError, match="expected"):
        agent.predict(np.zeros(3))


def test_presets_are_valid_and_cover_the_book_envs():
    for env_id in ("CartPole-v1", "Acrobot-v1", "Pendulum-v1"):
        cfg, steps = preset(env_id)
        assert isinstance(cfg, PPOConfig) and steps > 0
    cfg = RL_ZOO["CartPole-v1"][0]  # RL-Zoo CartPole settings, kept for the engine comparison
    assert (cfg.n_envs, cfg.n_steps, cfg.n_epochs, cfg.batch_size, cfg.gamma, cfg.lam) == (8, 32, 20, 256, 0.98, 0.8)
    cfg = preset("CartPole-v1")[0]  # the default: chosen for time to solve (bench/cartpole.py)
    assert (cfg.n_envs, cfg.n_steps, cfg.n_epochs, cfg.minibatch_size, cfg.lr) == (16, 64, 4, 512, 1e-2)
    assert PPO("CartPole-v1").config == cfg


# ---------------------------------------------------------------------------- CLI
def test_cli_train_writes_a_run_folder_and_eval_reloads_it(tmp_path, capsys):
    from ppo_edu.cli import main

    out = tmp_path / "run"
    assert main(["train", "CartPole-v1", "--timesteps", "1024", "--out", str(out), "--no-progress",
                 "--n-steps", "32", "--n-epochs", "2", "--eval-episodes", "3"]) == 0  # 16 envs x 32 steps
    assert sorted(os.listdir(out)) == ["config.json", "eval.json", "learning_curve.png", "metrics.csv", "model.pt",
                                       "status.json"]
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    printed = capsys.readouterr().out
    assert "greedy evaluation over 3 episodes" in printed
    header = (out / "metrics.csv").read_text().splitlines()
    assert len(header) == 1 + 1024 // 512 and "explained_variance" in header[0] and "clip_fraction" in header[0]
    assert json.loads((out / "config.json").read_text())["config"]["n_epochs"] == 2
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", str(out), "--episodes", "2"]) == 0
    assert "greedy return over 2 episodes" in capsys.readouterr().out


def test_cli_reports_bad_values_without_a_traceback(tmp_path, capsys):
    from ppo_edu.cli import main

    assert main(["train", "CartPole-v1", "--lr", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "PPOConfig.lr=-1" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing")]) == 2


# ---------------------------------------------------------------------------- resume and schedules
def _params(agent):
    return torch.cat([p.detach().flatten() for p in agent.model.parameters()])


@pytest.mark.parametrize("env_id,extra", [
    ("CartPole-v1", {"anneal_clip": True}),
    ("Pendulum-v1", {"backend": "torch", "norm_obs": True, "norm_reward": True}),
    ("Acrobot-v1", {"norm_obs": True, "norm_reward": True}),
])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, env_id, extra):
    cfg, total = SMALL.replace(**extra), 7 * SMALL.batch_size
    full = PPO(env_id, cfg, seed=3).learn(total)
    cut = PPO(env_id, cfg, seed=3).learn(total, callback=lambda a, row: a.n_updates < 3)
    cut.save(tmp_path / "cut.pt")
    resumed = PPO.load(tmp_path / "cut.pt").learn(total - cut.num_timesteps, reset_num_timesteps=False)
    assert torch.equal(_params(full), _params(resumed))
    np.testing.assert_equal(_rows(full), _rows(resumed))  # the metrics history continues too


def test_a_second_learn_continues_the_schedules_with_reset_num_timesteps_false():
    cfg = SMALL.replace(anneal_clip=True)
    agent = PPO("CartPole-v1", cfg, seed=0).learn(2 * cfg.batch_size)
    assert [r["lr"] for r in agent.history] == [cfg.lr, cfg.lr / 2]
    agent.learn(2 * cfg.batch_size, reset_num_timesteps=False)  # the schedule now spans 4 updates
    assert agent.num_timesteps == 4 * cfg.batch_size
    assert [r["lr"] for r in agent.history[2:]] == [cfg.lr * (1 - 2 / 4), cfg.lr * (1 - 3 / 4)]
    assert agent.history[3]["clip_eps"] == pytest.approx(cfg.clip_eps / 4)
    agent.learn(cfg.batch_size)  # SB3's default: the count and the schedules start again
    assert agent.num_timesteps == cfg.batch_size and agent.history[-1]["lr"] == cfg.lr


# ---------------------------------------------------------------------------- damaged checkpoints
def _damaged(tmp_path, change):
    agent = PPO("CartPole-v1", SMALL.replace(norm_obs=True), seed=0).learn(128)
    agent.save(tmp_path / "a.pt")
    state = torch.load(tmp_path / "a.pt", weights_only=True)
    change(state)
    torch.save(state, tmp_path / "bad.pt")
    return tmp_path / "bad.pt"


@pytest.mark.parametrize("change,match", [
    (lambda s: s.pop("num_timesteps"), r"lacks the fields \['num_timesteps'\]"),
    (lambda s: s["optimizer"].update(m=torch.zeros(7)), r"optimiser state m has shape \(7,\)"),
    (lambda s: s["obs_rms"].update(mean=torch.zeros(3)), r"obs_rms.mean have shape \(3,\)"),
    (lambda s: s["obs_rms"].update(var=torch.full((4,), float("nan"))), "obs_rms.var contain NaN"),
    (lambda s: next(iter(s["model"].values())).fill_(float("nan")), "weights contain NaN"),
    (lambda s: s.update(num_timesteps="many"), "num_timesteps='many' is not an integer"),
    (lambda s: s["resume"]["collector"].pop("ep_ret"), "resume state .* is damaged: KeyError"),
    (lambda s: s["resume"].update(rng={"bit_generator": "MT19937"}), "resume state .* is damaged"),
])
def test_damaged_checkpoints_are_checkpoint_errors(tmp_path, capsys, change, match):
    bad = _damaged(tmp_path, change)
    with pytest.raises(CheckpointError, match=match) as err:
        PPO.load(bad)
    assert str(bad) in str(err.value)
    from ppo_edu.cli import main

    assert main(["eval", str(bad)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_torch_optimiser_state_of_the_wrong_size(tmp_path):
    agent = PPO("CartPole-v1", SMALL.replace(backend="torch"), seed=0).learn(128)
    agent.save(tmp_path / "a.pt")
    state = torch.load(tmp_path / "a.pt", weights_only=True)
    first = next(iter(state["optimizer"]["torch"]["state"].values()))
    first["exp_avg"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="optimiser state"):
        PPO.load(tmp_path / "bad.pt")


@pytest.mark.parametrize("obs,match", [
    (None, "obs=None"), (3.0, r"shape \(\)"), ([[[0.0] * 4]], r"shape \(1, 1, 4\)"),
    ([0.0, float("nan"), 0.0, 0.0], "NaN or inf"), ([0.0, 0.0, float("inf"), 0.0], "NaN or inf"),
    (["a", "b", "c", "d"], "not an array of numbers"),
])
def test_predict_rejects_what_a_policy_cannot_act_on(obs, match):
    with pytest.raises(ValueError, match=match):
        PPO("CartPole-v1", SMALL).predict(obs)


@pytest.mark.parametrize("n", [0, 1, 5, 255, 256, 512, 513])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 7])
def test_minibatch_split_is_array_split(n, k):
    """PPO.update's minibatches are np.array_split's, boundaries and all (n varies with NEXT_STEP resets)."""
    from ppo_edu.ppo import _split

    perm = np.random.default_rng(n).permutation(n)
    got, want = _split(perm, k), np.array_split(perm, k)
    assert len(got) == len(want) == k
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
