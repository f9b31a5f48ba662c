"""Where PPO's time goes, and what a second process buys: environment steps per second for
the vectorised env alone (the ceiling), ppo_edu on 1 process, and ppo_edu data-parallel on
K processes (torchrun, gloo on CPU / nccl on GPU), all with the default CartPole-v1 preset
(``ppo_edu.PRESETS["CartPole-v1"]``, its n_envs per process; the env alone with the same n_envs).

    python bench/scaling.py [--steps 50000] [--nproc 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
from ppo_edu.throughput import ppo_throughput, raw_env_throughput  # noqa: E402

ENV = "CartPole-v1"


def one_process(steps: int) -> float:
    return ppo_throughput(ENV, steps)


def worker(steps: int, out: str) -> None:
    """Runs under torchrun: every rank trains; rank 0 writes the measured rate."""
    from ppo_edu import PPO, distributed, preset

    d = distributed.init()
    agent = PPO(ENV, preset(ENV)[0], seed=0)
    agent.learn(1024 * d.world_size)
    t0 = time.perf_counter()
    agent.learn(steps)
    rate = steps / (time.perf_counter() - t0)
    if d.is_main:
        with open(out, "w") as f:
            json.dump({"steps_per_s": rate, "world_size": d.world_size}, f)
    distributed.shutdown()


def k_processes(steps: int, k: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rate.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}",
               __file__, "--worker", "--steps", str(steps), "--out", out]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        with open(out) as f:
            return json.load(f)["steps_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.steps, args.out)
    from ppo_edu import preset

    n_envs = preset(ENV)[0].n_envs
    raw = raw_env_throughput(ENV, n_envs)
    single = one_process(args.steps)
    multi = k_processes(args.steps, args.nproc)
    print(f"{'setting':42s} {'env steps/s':>12s} {'vs env alone':>13s} {'vs 1 process':>13s}")
    print(f"{f'vectorised env alone ({n_envs} envs, random)':42s} {raw:12,.0f} {1:13.1%} {'':>13s}")
    print(f"{'ppo_edu, 1 process':42s} {single:12,.0f} {single / raw:13.1%} {1:13.2f}x")
    print(f"{f'ppo_edu, {args.nproc} processes (torchrun, gloo)':42s} {multi:12,.0f} {multi / raw:13.1%} "
          f"{multi / single:13.2f}x")
    print(f"(machine: {os.cpu_count()} CPU cores; each process runs 1 thread)")


if __name__ == "__main__":
    main()
