"""The gymnasium 1.x autoreset boundary: no learning from reset steps, truncation bootstraps
from the true final observation, in both NEXT_STEP and SAME_STEP modes."""
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from ppo_edu.rollout import RolloutBuffer, RolloutCollector


class Counter(gym.Env):
    """obs = [steps taken in this episode, episode id]; reward 1; terminates at ``term_at``
    steps (if set), else is truncated at ``limit`` steps."""

    observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, limit, term_at=None):
        self.limit, self.term_at, self.episode = limit, term_at, -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.episode = 0, self.episode + 1
        return np.array([0, self.episode], np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([self.t, self.episode], np.float32)
        terminated = self.term_at is not None and self.t >= self.term_at
        truncated = not terminated and self.t >= self.limit
        return obs, 1.0, terminated, truncated, {}


def _collect(mode, envs, T=8):
    env = SyncVectorEnv(envs, autoreset_mode=mode)
    col = RolloutCollector(env, seed=0)
    buf = RolloutBuffer.empty(T, env.num_envs, 2, (), np.int64)
    act = lambda o: (np.zeros(len(o), np.int64), np.zeros(len(o), np.float32), 100 * o[:, 0] + o[:, 1])  # noqa
    value = lambda o: 100 * o[:, 0] + o[:, 1]  # noqa: E731  V encodes (step, episode) exactly
    col.collect(buf, act, value)
    return col, buf


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_truncation_bootstraps_from_the_final_observation(mode):
    col, buf = _collect(mode, [lambda: Counter(limit=3)])
    trunc_rows = np.flatnonzero(buf.truncated[:, 0])
    assert len(trunc_rows) >= 2
    for t in trunc_rows:
        # V(final obs) = 100 * 3 + this episode, never V(reset obs) = 100 * 0 + next episode
        assert buf.next_values[t, 0] == 300 + buf.obs[t, 0, 1]
    assert not buf.terminated.any()
    assert col.episode_lengths[:2] == [3, 3] and col.episode_returns[:2] == [3.0, 3.0]


def test_next_step_mode_masks_the_reset_step():
    _, buf = _collect(AutoresetMode.NEXT_STEP, [lambda: Counter(limit=3), lambda: Counter(limit=5)])
    # env 0: steps 0,1,2 valid (episode of 3), step 3 is the reset step, then 4,5,6 valid, 7 reset
    assert buf.valid[:, 0].tolist() == [True, True, True, False, True, True, True, False]
    assert buf.valid[:, 1].tolist() == [True] * 5 + [False] + [True] * 2
    # the masked step carries no reward and no done flag
    assert (buf.rewards[~buf.valid] == 0).all() and not buf.truncated[~buf.valid].any()
    # every valid step's observation belongs to the episode its reward was earned in
    assert (buf.rewards[buf.valid] == 1).all()


def test_same_step_mode_has_no_invalid_steps():
    _, buf = _collect(AutoresetMode.SAME_STEP, [lambda: Counter(limit=3), lambda: Counter(limit=5)])
    assert buf.valid.all()
    assert buf.truncated[:, 0].tolist() == [False, False, True, False, False, True, False, False]


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_termination_is_recorded_and_not_truncation(mode):
    _, buf = _collect(mode, [lambda: Counter(limit=10, term_at=2)])
    assert buf.terminated[:, 0].sum() >= 2 and not buf.truncated.any()


def test_naive_gymnasium_029_handling_would_bootstrap_from_the_reset_observation():
    """What the collector protects against: in SAME_STEP mode the returned observation after a
    truncation is the *reset* one; bootstrapping from it (0.29-era code) gives a different value."""
    env = SyncVectorEnv([lambda: Counter(limit=2)], autoreset_mode=AutoresetMode.SAME_STEP)
    env.reset(seed=0)
    env.step(np.array([0]))
    obs, _, _, truncated, info = env.step(np.array([0]))
    assert truncated[0]
    assert obs[0, 0] == 0 and info["final_obs"][0][0] == 2  # reset obs != final obs


def test_cartpole_fast_vector_env_is_next_step_and_lengths_match_rewards():
    from ppo_edu.rollout import make_vec_env

    env = make_vec_env("CartPole-v1", 4)
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    col = RolloutCollector(env, seed=0)
    buf = RolloutBuffer.empty(200, 4, 4, (), np.int64)
    rng = np.random.default_rng(0)
    act = lambda o: (rng.integers(0, 2, len(o)), np.zeros(len(o), np.float32), np.zeros(len(o), np.float32))  # noqa
    col.collect(buf, act, lambda o: np.zeros(len(o), np.float32))
    # CartPole pays 1 per real step: returns equal lengths, and invalid steps are exactly
    # the steps after an episode end
    assert col.episode_returns == [float(n) for n in col.episode_lengths]
    done = buf.terminated | buf.truncated
    assert (~buf.valid[1:] == done[:-1]).all()
    assert buf.rewards[buf.valid].sum() == buf.valid.sum()
