"""The env forms Stable-Baselines3 users pass (id, Env instance, Env class, factory, VectorEnv)
to PPO, evaluate and load; the notice for envs without a tuned preset; TensorBoard logging."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control import CartPoleEnv

from ppo_edu import PPO, PPOConfig, ppo as ppo_module
from ppo_edu.rollout import as_vec_env

SMALL = PPOConfig(n_envs=4, n_steps=32, n_epochs=2, n_minibatches=2)


class Corridor(gym.Env):
    """An unregistered env: walk right (action 1) to the end of a corridor of 5 cells."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = 0, 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.pos, self.t = max(0, self.pos + (1 if action == 1 else -1)), self.t + 1
        done = self.pos == 4
        return np.array([self.pos / 4], np.float32), float(done), done, self.t >= 20, {}


@pytest.mark.parametrize("make,n_envs", [
    (lambda: "CartPole-v1", 4), (lambda: gym.make("CartPole-v1"), 1), (lambda: CartPoleEnv, 4),
    (lambda: (lambda: gym.make("CartPole-v1")), 4), (lambda: gym.make_vec("CartPole-v1", 3), 3),
])
def test_ppo_trains_on_every_env_form(make, n_envs):
    agent = PPO(make(), SMALL, seed=0).learn(128)
    assert agent.env.num_envs == n_envs == agent.config.n_envs
    assert agent.num_timesteps >= 128 and len(agent.history) == -(-128 // (32 * n_envs))
    mean, _ = agent.evaluate(2)
    assert mean > 0


def test_an_unregistered_env_class_trains_evaluates_saves_and_loads(tmp_path):
    agent = PPO(Corridor, SMALL, seed=0).learn(256)
    assert agent.env_id is None
    mean, _ = agent.evaluate(4)                      # rebuilt from the class: no env_id needed
    agent.save(tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"c\.pt.*pass env= to PPO\.load"):
        PPO.load(tmp_path / "c.pt")
    for env in (Corridor, lambda: Corridor(), Corridor(), gym.vector.SyncVectorEnv([Corridor, Corridor])):
        loaded = PPO.load(tmp_path / "c.pt", env=env)
        assert loaded.evaluate(4, env=Corridor) == agent.evaluate(4)


def test_evaluate_accepts_instances_and_vector_envs_without_closing_them():
    agent = PPO("CartPole-v1", SMALL, seed=0).learn(128)
    single = gym.make("CartPole-v1")
    vec = gym.make_vec("CartPole-v1", 2)
    for env in (single, vec, CartPoleEnv, "CartPole-v1"):
        mean, std = agent.evaluate(3, env=env)
        assert mean >= 8 and std >= 0
    single.reset(seed=0), vec.reset(seed=0)          # still open
    assert agent.evaluate(3, env_id="CartPole-v1") == agent.evaluate(3)


def test_evaluate_from_an_instance_without_an_id_asks_for_env():
    agent = PPO(Corridor(), SMALL.replace(n_envs=1, n_minibatches=1))
    with pytest.raises(ValueError, match="evaluate\\(\\) needs env="):
        agent.evaluate(2)
    assert agent.evaluate(2, env=Corridor)[0] >= 0


@pytest.mark.parametrize("bad", [3, None, [CartPoleEnv]])
def test_a_non_env_is_a_type_error_naming_the_allowed_forms(bad):
    with pytest.raises(TypeError, match="allowed are an env id"):
        PPO(bad, SMALL)


def test_a_factory_returning_something_else_is_a_type_error():
    with pytest.raises(TypeError, match="returned int, not a gymnasium.Env"):
        as_vec_env(lambda: 3, 2)


def test_an_env_without_a_preset_says_so_once(capsys, monkeypatch):
    monkeypatch.setattr(ppo_module, "_NOTIFIED", set())
    PPO("MountainCar-v0")
    PPO("MountainCar-v0")
    err = capsys.readouterr().err
    assert err.count("no tuned preset for 'MountainCar-v0'") == 1
    assert "ppo_edu.PRESETS" in err and "CartPole-v1" in err
    PPO("CartPole-v1")
    PPO("MountainCar-v0", SMALL)                         # an explicit config: nothing to say
    assert capsys.readouterr().err == ""


def test_a_preset_env_given_as_an_instance_uses_its_preset():
    agent = PPO(gym.make("Acrobot-v1"))
    assert agent.config == ppo_module.PRESETS["Acrobot-v1"][0].replace(n_envs=1)


# ---------------------------------------------------------------------------- TensorBoard
def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_log_writes_every_metrics_row(tmp_path):
    pytest.importorskip("tensorboard")
    agent = PPO("CartPole-v1", SMALL, seed=0, tensorboard_log=tmp_path / "tb").learn(384)
    PPO("CartPole-v1", SMALL, seed=1, tensorboard_log=tmp_path / "tb")
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["PPO_1", "PPO_2"]
    scalars = _scalars(tmp_path / "tb" / "PPO_1")
    kl = scalars["ppo/approx_kl"]
    assert [s for s, _ in kl] == [r["env_steps"] for r in agent.history] == [128, 256, 384]
    np.testing.assert_allclose([v for _, v in kl], [r["approx_kl"] for r in agent.history], rtol=1e-6)
    assert {"ppo/episodic_return", "ppo/clip_fraction", "ppo/lr", "ppo/value_loss"} <= set(scalars)


def test_tensorboard_logging_leaves_training_unchanged(tmp_path):
    pytest.importorskip("tensorboard")
    a = PPO("CartPole-v1", SMALL, seed=3, tensorboard_log=tmp_path).learn(256)
    b = PPO("CartPole-v1", SMALL, seed=3).learn(256)
    np.testing.assert_array_equal(a.flat.data, b.flat.data)


@pytest.mark.parametrize("bad", [3, ""])
def test_a_bad_tensorboard_log_names_the_option(bad):
    with pytest.raises(ValueError, match=f"tensorboard_log={bad!r} is invalid"):
        PPO("CartPole-v1", SMALL, tensorboard_log=bad)


def test_tensorboard_log_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    hint = r'tensorboard package.*pip install -c constraints.txt -e "\.\[tensorboard\]"'
    with pytest.raises(ImportError, match=hint):
        PPO("CartPole-v1", SMALL, tensorboard_log=tmp_path)


def test_an_unregistered_env_gets_the_notice_and_a_typo_gets_only_its_error(capsys, monkeypatch):
    monkeypatch.setattr(ppo_module, "_NOTIFIED", set())
    PPO(Corridor)
    assert "no tuned preset for 'Corridor'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="NoSuchEnv-v0"):
        PPO("NoSuchEnv-v0")
    assert "no tuned preset" not in capsys.readouterr().err
