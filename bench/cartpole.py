"""ppo_edu vs Stable-Baselines3 PPO on CartPole-v1: the engines at equal (RL-Zoo) settings,
and ppo_edu's default preset against SB3 with the Zoo's.

SB3-Zoo and ppo_edu-Zoo: 8 envs x 32 steps (batch 256, one minibatch), 20 epochs, gamma 0.98,
lambda 0.8, lr 1e-3 and clip 0.2 both decayed linearly, no entropy bonus, 64-64 tanh MLPs
(ppo_edu.ppo.RL_ZOO["CartPole-v1"]). ppo_edu: the default preset, PRESETS["CartPole-v1"]
(16 envs x 64 steps, 4 epochs of 2 minibatches of 512, lr 1e-2 annealed, gamma 0.99,
lambda 0.95). One thread each; runs alternate seed by seed. Every 5k env steps each agent is
evaluated greedily on 20 fresh episodes, outside the training clock. "Solved" = the evaluation
mean reaches 475 and stays >= 475 at every later evaluation up to the budget (the same for all).

    python bench/cartpole.py [--seeds 10] [--budget 100000] [--only SB3-Zoo ppo_edu]
"""
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(__file__))
from common import linear, main  # noqa: E402

SB3_ZOO = dict(n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8, ent_coef=0.0,
               learning_rate=linear(1e-3), clip_range=linear(0.2))

if __name__ == "__main__":
    main("CartPole-v1", 475.0, 8, SB3_ZOO, __doc__, budget=100_000, every=5_000)
