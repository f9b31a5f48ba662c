"""The ``ppo-edu`` command: ``train``, ``eval``, and for teachers ``assign`` and ``grade``.

A run folder holds ``config.json``, ``metrics.csv`` (one row per update),
``learning_curve.png``, ``model.pt`` (the checkpoint) and ``eval.json``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import json
import os
import platform
import re
import sys
from pathlib import Path

from .ppo import PPO, PPOConfig, preset

__all__ = ["main"]


def _field_help() -> dict[str, str]:
    """The ``#:`` comment of each PPOConfig field, so ``--help`` and the code never disagree."""
    src = inspect.getsource(PPOConfig)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+):[^\n]*?#:(.*)$", src, re.M)}


def _parse_value(text: str):
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("PPOConfig fields (default: the env's tuned preset)")
    helps = _field_help()
    for f in dataclasses.fields(PPOConfig):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"cfg_{f.name}", metavar="V",
                           type=_parse_value, default=argparse.SUPPRESS,
                           help=f"{helps.get(f.name, '')} [default {f.default!r}]")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ppo-edu", description="Train and evaluate PPO agents (ppo_edu).")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an agent and write a run folder",
                       description="Train PPO on a gymnasium environment and write a run folder.")
    t.add_argument("env_id", help="gymnasium environment id, e.g. CartPole-v1, Acrobot-v1, Pendulum-v1")
    t.add_argument("--timesteps", type=int, default=None, help="environment steps (default: the preset's)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--out", default=None, help="run folder (default runs/ENV_ID/seedSEED)")
    t.add_argument("--eval-episodes", type=int, default=20, help="greedy evaluation episodes (default 20)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--save-every", type=int, default=0, metavar="UPDATES",
                   help="also write model.pt every this many updates (0: only at the end)")
    t.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes: launches 'torchrun --nproc_per_node=NPROC -m ppo_edu.train' "
                        "(gloo on CPU, nccl on GPU); --timesteps counts all processes' steps")
    _add_config_options(t)
    e = sub.add_parser("eval", help="reload a run folder (or checkpoint) and evaluate it",
                       description="Reload a saved agent and report its mean return.")
    e.add_argument("run", help="run folder written by 'ppo-edu train', or a model.pt checkpoint")
    e.add_argument("--episodes", type=int, default=20, help="evaluation episodes (default 20)")
    e.add_argument("--stochastic", action="store_true", help="sample actions instead of the greedy action")
    e.add_argument("--seed", type=int, default=10_000, help="evaluation seed (default 10000)")
    a = sub.add_parser("assign", help="write the student version of a chapter",
                       description="Write the student version of a notebook: solutions replaced by "
                                   "'raise NotImplementedError', hidden tests removed, outputs cleared.")
    a.add_argument("notebook", help="a chapter with graded exercises, e.g. book/05_ppo.ipynb")
    a.add_argument("--out", required=True, help="folder for the student version")
    a.add_argument("--exercises-only", action="store_true",
                   help="keep only the graded exercises: a short homework sheet (grade it with the same flag)")
    g = sub.add_parser("grade", help="grade a folder of submissions",
                       description="Run each submitted notebook (or .py module) in a fresh sandboxed process "
                                   "(bubblewrap) that only produces the student's functions, and the teacher's "
                                   "tests (hidden ones included) in the grader against them; write one CSV row "
                                   "per file and exercise and a feedback file per student. Submitted files are "
                                   "never modified; rerunning skips students already graded with the same file.")
    g.add_argument("submissions", help="folder of .ipynb / .py submissions (one per student, named after them)")
    g.add_argument("--assignment", required=True, help="the teacher's notebook (with solutions and hidden tests)")
    g.add_argument("--out", required=True, help="CSV file to write, e.g. grades.csv")
    g.add_argument("--feedback", default=None, help="folder for per-student feedback (default: beside the CSV)")
    g.add_argument("--timeout", type=float, default=300,
                   help="seconds allowed per cell, and per call a test makes (default 300)")
    g.add_argument("--notebook-timeout", type=float, default=1800,
                   help="seconds allowed for a whole submission (default 1800)")
    g.add_argument("--memory", type=float, default=4.0, metavar="GIB",
                   help="memory limit of each student's process, in GiB (default 4)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.add_argument("--exercises-only", action="store_true",
                   help="grade only the exercises (for sheets written with 'assign --exercises-only')")
    r = sub.add_parser("rlhf", help="RLHF of a tiny GPT-2 with PPO and GRPO, offline",
                       description="Build (or load from the cache) a tokenizer, a pretrained tiny GPT-2 and a reward "
                                   "model learned from simulated preferences, then run PPO-RLHF and GRPO, and write "
                                   "summary.json, ppo.csv, grpo.csv, samples.md and rlhf.png.")
    r.add_argument("--preset", default="cpu-tiny", help="micro | cpu-tiny | gpu-small (default cpu-tiny)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.add_argument("--out", default=None, help="run folder (default runs/rlhf/PRESET-seedSEED)")
    r.add_argument("--device", default="auto", help="auto (a GPU when there is one) | cpu | cuda (default auto)")
    r.add_argument("--ppo-iterations", type=int, default=None, help="PPO iterations (default: the preset's)")
    r.add_argument("--grpo-steps", type=int, default=None, help="GRPO steps (default: the preset's)")
    r.add_argument("--cache", default=None, help="asset cache folder (default $PPO_EDU_CACHE/rlhf or "
                                                 "~/.cache/ppo_edu/rlhf)")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    r.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes: launches 'torchrun --nproc_per_node=NPROC -m ppo_edu.cli rlhf ...' "
                        "(gloo on CPU, nccl on GPU); each process samples its own batch")
    return p


def rlhf_cmd(args) -> int:
    import torch

    from . import distributed
    from .rlhf.pipeline import run_pipeline

    dist = distributed.init()
    if dist.enabled and args.device == "auto" and torch.cuda.is_available():
        torch.cuda.set_device(dist.rank % torch.cuda.device_count())    # one GPU per process
    out = Path(args.out or f"runs/rlhf/{args.preset}-seed{args.seed}")
    s = run_pipeline(args.preset, out, seed=args.seed, progress_bar=not args.no_progress, device=args.device,
                     ppo_iterations=args.ppo_iterations, grpo_steps=args.grpo_steps, cache_dir=args.cache)
    if not dist.is_main:
        distributed.shutdown()
        return 0
    print(f"reward model held-out pair accuracy: {s['rm_heldout_accuracy']:.3f}")
    print(f"{'':8s} {'gold':>7s} {'RM':>7s} {'KL':>6s} {'s/iter':>7s} {'memory MiB':>10s}")
    print(f"{'before':8s} {s['before']['gold']:7.3f} {s['before']['rm']:7.3f}")
    for k in ("ppo", "grpo"):
        r = s[k]
        print(f"{k.upper():8s} {r['gold']:7.3f} {r['rm']:7.3f} {r['kl']:6.2f} {r['sec_per_iter_median']:7.3f} "
              f"{r['memory_mb']['total']:10.1f}")
    print(f"run folder: {out} ({s['wall_seconds']:.0f} s, {s['processes']} process(es))")
    distributed.shutdown()
    return 0


def assign_cmd(args) -> int:
    from .coursework import assign

    out = assign(args.notebook, args.out, only_exercises=args.exercises_only)
    print(f"student version written to {out}")
    return 0


def grade_cmd(args) -> int:
    from .coursework import grade
    from .gradebox import check_limits

    check_limits(timeout=args.timeout, notebook_timeout=args.notebook_timeout, memory=args.memory)
    try:
        rows = grade(args.submissions, args.assignment, args.out, timeout=args.timeout,
                     feedback_dir=args.feedback, progress=not args.no_progress, only_exercises=args.exercises_only,
                     notebook_timeout=args.notebook_timeout, memory_gib=args.memory)
    except KeyboardInterrupt:
        print(f"ppo-edu grade: interrupted; the students graded so far are kept in {args.out}.state.json: "
              "run the same command again to resume", file=sys.stderr)
        return 130
    students = dict.fromkeys(r.student for r in rows)
    for s in students:
        mine = [r for r in rows if r.student == s]
        print(f"{s}: {sum(r.points for r in mine):g} / {sum(r.max_points for r in mine):g}")
    return 0


def launch_torchrun(argv: list[str], nproc: int) -> int:
    """Re-run this command under torchrun with ``nproc`` processes on this machine: ``train`` runs
    ``-m ppo_edu.train`` (which reports a failed rank), ``rlhf`` runs ``-m ppo_edu.cli rlhf``."""
    import subprocess

    rest, skip = [], False
    for a in argv[1:]:  # drop the command name and the --nproc option
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    target = ["ppo_edu.train"] if argv[0] == "train" else ["ppo_edu.cli", argv[0]]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", *target, *rest]
    print("launching:", " ".join(cmd[1:]), flush=True)
    return subprocess.call(cmd)


def train(args, extra_callback=None) -> int:
    from . import distributed

    dist = distributed.info()
    main_rank = dist.is_main
    base, default_steps = preset(args.env_id)
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
    config = base.replace(**overrides)
    timesteps = args.timesteps or default_steps
    out = Path(args.out or os.path.join("runs", args.env_id, f"seed{args.seed}"))
    agent = PPO(args.env_id, config, seed=args.seed)
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        meta = {"env_id": args.env_id, "seed": args.seed, "total_timesteps": timesteps, "processes": dist.world_size,
                "config": config.to_dict(), "python": platform.python_version()}
        (out / "config.json").write_text(json.dumps(meta, indent=2))
        print(f"training PPO on {args.env_id} for {timesteps} steps (seed {args.seed}, "
              f"{dist.world_size} process{'es' if dist.world_size > 1 else ''}) -> {out}", flush=True)

    def callback(a, row):
        if main_rank and args.save_every and a.n_updates % args.save_every == 0:
            a.save(out / "model.pt")
        return None if extra_callback is None else extra_callback(a, row)

    agent.learn(timesteps, callback=callback, progress_bar=not args.no_progress)
    if not main_rank:
        return 0
    agent.save(out / "model.pt")
    _write_metrics(agent.history, out / "metrics.csv")
    from .plotting import save_run_plot

    save_run_plot(agent.history, out / "learning_curve.png", f"PPO on {args.env_id}, seed {args.seed}")
    mean, std = agent.evaluate(args.eval_episodes)
    (out / "eval.json").write_text(json.dumps({"episodes": args.eval_episodes, "mean_return": mean,
                                               "std_return": std, "deterministic": True}, indent=2))
    last = agent.history[-1]
    print(f"trained {agent.num_timesteps} steps in {last['wall_time']:.1f} s")
    print(f"greedy evaluation over {args.eval_episodes} episodes: {mean:.1f} +- {std:.1f}")
    print(f"run folder: {out}")
    return 0


def _write_metrics(rows, path) -> None:
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def evaluate(args) -> int:
    path = Path(args.run)
    ckpt = path / "model.pt" if path.is_dir() else path
    agent = PPO.load(ckpt)
    mean, std = agent.evaluate(args.episodes, deterministic=not args.stochastic, seed=args.seed)
    kind = "stochastic" if args.stochastic else "greedy"
    print(f"{agent.env_id}: {kind} return over {args.episodes} episodes: {mean:.1f} +- {std:.1f} "
          f"({agent.num_timesteps} training steps)")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command in ("train", "rlhf") and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(argv, args.nproc)
    commands = {"train": train, "eval": evaluate, "assign": assign_cmd, "grade": grade_cmd, "rlhf": rlhf_cmd}
    try:
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"ppo-edu {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
