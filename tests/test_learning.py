"""Learning tests: a return reached within a budget of environment steps (not seconds),
on several seeds, with the default presets, evaluated greedily on 20 fresh episodes."""
import pytest

from ppo_edu import PPO, preset

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cartpole_default_preset_reaches_475_within_50k_steps(seed):
    agent = PPO("CartPole-v1", seed=seed).learn(50_000)  # the default preset, PRESETS["CartPole-v1"]
    mean, _ = agent.evaluate(20)
    assert mean >= 475, f"seed {seed}: greedy return {mean}"


@pytest.mark.parametrize("seed", [0, 1])
def test_acrobot_default_preset_reaches_minus_100_within_50k_steps(seed):
    agent = PPO("Acrobot-v1", seed=seed).learn(50_000)  # the default preset, PRESETS["Acrobot-v1"]
    mean, _ = agent.evaluate(20)
    assert mean >= -100, f"seed {seed}: greedy return {mean}"


def test_pendulum_reaches_minus_250_within_150k_steps():
    agent = PPO("Pendulum-v1", preset("Pendulum-v1")[0], seed=0).learn(150_000)
    mean, _ = agent.evaluate(20)
    assert mean >= -250, f"greedy return {mean}"
