"""ppo_edu vs Stable-Baselines3 PPO on Pendulum-v1.

SB3 runs the RL-Zoo Pendulum-v1 settings (4 envs x 1024 steps, minibatch 64, 10 epochs,
gamma 0.9, lambda 0.95, lr 1e-3, clip 0.2, gSDE with sample frequency 4). ppo_edu runs them
too ("ppo_edu-Zoo", ``RL_ZOO["Pendulum-v1"]``: a state-independent Gaussian, no gSDE: the engine
ratio) and its default preset ("ppo_edu", ``PRESETS["Pendulum-v1"]``: 8 envs x 512 steps,
minibatches of 256, lr 2e-3, gamma 0.95, scaled rewards: the headline ratio). Every 10k env steps both are evaluated greedily on 20 episodes outside the training
clock. "Solved" = the evaluation mean reaches -200 and stays there up to the budget.

    python bench/pendulum.py [--seeds 5] [--budget 200000]
"""
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(__file__))
from common import main  # noqa: E402

SB3_ZOO = dict(n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0, learning_rate=1e-3,
               clip_range=0.2, use_sde=True, sde_sample_freq=4)

if __name__ == "__main__":
    main("Pendulum-v1", -200.0, 4, SB3_ZOO, __doc__, budget=200_000, every=10_000)
