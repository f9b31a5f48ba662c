"""ppo_edu vs Stable-Baselines3 PPO on Acrobot-v1: the engines at equal (RL-Zoo) settings, and
ppo_edu's default preset against SB3 with the Zoo's.

SB3-Zoo and ppo_edu-Zoo (ppo_edu.ppo.RL_ZOO["Acrobot-v1"]): 16 envs x 256 steps, 4 epochs of
minibatches of 64, gamma 0.99, lambda 0.94, constant lr 3e-4, clip 0.2, observations and rewards
normalised with running statistics (SB3: VecNormalize), 64-64 tanh MLPs. ppo_edu: the default
preset, PRESETS["Acrobot-v1"] (16 envs x 64 steps, 4 epochs of 4 minibatches of 256, lr 1e-3).
One thread each; runs alternate seed by seed. Every 10k env steps each agent is evaluated
greedily on 20 fresh episodes, outside the training clock. "Solved" = the evaluation mean reaches
-100 and stays there up to the budget.

    python bench/acrobot.py [--seeds 5] [--budget 200000]
"""
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(__file__))
from common import main  # noqa: E402

SB3_ZOO = dict(n_steps=256, gae_lambda=0.94, gamma=0.99, n_epochs=4, ent_coef=0.0, normalize=True)

if __name__ == "__main__":
    main("Acrobot-v1", -100.0, 16, SB3_ZOO, __doc__, budget=200_000, every=10_000)
