"""Data-parallel PPO on 2 CPU processes (gloo), launched with torchrun."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppo_edu import PPO
from ppo_edu.checkpoint import safe_load

WORKER = Path(__file__).with_name("dist_worker.py")
sys.path.insert(0, str(WORKER.parent))  # the worker module holds the shared config and data


def torchrun(*args, timeout=180):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_ranks_hold_identical_parameters_after_training(tmp_path):
    proc = torchrun("train", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    p0, p1 = np.load(tmp_path / "params_rank0.npy"), np.load(tmp_path / "params_rank1.npy")
    np.testing.assert_array_equal(p0, p1)
    import dist_worker as w

    single = PPO("CartPole-v1", w.CFG, seed=0).flat.data
    assert not np.array_equal(p0, single)  # training moved them


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_two_ranks_of_n_envs_equal_one_process_of_2n_envs(tmp_path, backend):
    import dist_worker as w

    proc = torchrun("update", str(tmp_path), backend)
    assert proc.returncode == 0, proc.stderr[-3000:]
    agent = PPO("CartPole-v1", w.CFG.replace(n_envs=2 * w.CFG.n_envs, backend=backend), seed=0)
    buf, adv, ret = w.synthetic_buffer(agent, 2 * w.CFG.n_envs)
    before = agent.flat.data.copy()
    agent.update(buf, adv, ret, lr=1e-3, clip_eps=0.2)
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"params_rank{rank}.npy"), agent.flat.data, rtol=1e-5, atol=1e-6)
    assert not np.allclose(before, agent.flat.data)


def test_a_failed_rank_stops_the_run_and_the_checkpoint_stays_readable(tmp_path):
    out = tmp_path / "run"
    proc = torchrun("fail", str(out))
    assert proc.returncode != 0
    assert "rank 1 of 2 failed: RuntimeError: injected failure on rank 1" in proc.stderr
    state = safe_load(out / "model.pt", required=("model",))
    assert state["n_updates"] in (2, 4)  # the last periodic save before the failure
    agent = PPO.load(out / "model.pt")
    assert agent.evaluate(2)[0] > 0


def test_rlhf_ranks_sample_their_own_batches_and_stay_identical(tmp_path):
    proc = torchrun("rlhf", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p0, p1 = np.load(tmp_path / "params_rank0.npy"), np.load(tmp_path / "params_rank1.npy")
    np.testing.assert_array_equal(p0, p1)                       # gradients were averaged every minibatch
    r0, r1 = np.load(tmp_path / "responses_rank0.npy"), np.load(tmp_path / "responses_rank1.npy")
    assert r0.shape[0] == r1.shape[0] and not np.array_equal(r0[:, :2], r1[:, :2])  # own prompts and samples


def test_cli_rlhf_nproc_2_writes_one_run_folder(tmp_path):
    import json
    import os

    env = {**os.environ, "PPO_EDU_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "ppo_edu.cli", "rlhf", "--preset", "micro", "--nproc", "2",
                           "--out", str(tmp_path / "run"), "--no-progress", "--ppo-iterations", "2",
                           "--grpo-steps", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["processes"] == 2
    assert proc.stdout.count("run folder:") == 1                # rank 0 alone reports
