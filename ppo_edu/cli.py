"""The ``ppo-edu`` command: ``train``, ``eval``, ``rlhf``, and for teachers ``assign`` and ``grade``.

A run folder holds ``config.json``, ``metrics.csv`` (one row per update, written as training
goes), ``learning_curve.png``, ``model.pt`` (the checkpoint), ``eval.json`` and ``status.json``
(running, finished, interrupted or failed, with the step count of ``model.pt``).

Every option is checked (:mod:`ppo_edu.options`) before any work starts or any file is
written; a bad value is one line on stderr and exit status 2. A folder that holds a run is
refused unless ``--overwrite`` (replace it) or ``--resume`` (continue it), and is locked while
a run owns it. Ctrl-C or SIGTERM finishes the current update, saves, and records the status;
``ppo-edu train --resume RUN_DIR`` then continues exactly where the run stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import platform
import re
import signal
import sys
from pathlib import Path

from . import options as opt
from .checkpoint import atomic_write_text
from .ppo import PPO, PRESETS, PPOConfig, preset
from .runfolder import (RUN_FILES, FolderInUse, MetricsWriter, RunLock, clean_stray_tmp, holds_run,
                        write_status)

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


# bounds of the integer and number fields on the command line (the Python API checks only PPOConfig's)
_FIELD_BOUNDS = {"n_envs": (1, 4096), "n_steps": (1, 1_000_000), "n_epochs": (1, 10_000),
                 "n_minibatches": (1, 1_000_000), "threads": (1, os.cpu_count() or 1)}


def _field_type(f: dataclasses.Field):
    """The argparse ``type``/``action`` of one PPOConfig field, from its annotation."""
    t = str(f.type).replace(" ", "")
    if t == "bool":
        return {"action": argparse.BooleanOptionalAction}
    if t == "int":
        return {"type": opt.integer(*_FIELD_BOUNDS.get(f.name, (1, None)))}
    if t == "float":
        return {"type": opt.number(*_FIELD_BOUNDS.get(f.name, (-math.inf, math.inf)))}
    if t in ("float|None", "Optional[float]"):
        return {"type": opt.optional_number}
    if f.name == "hidden":
        return {"type": opt.layer_sizes()}
    return {"type": _parse_value}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("PPOConfig fields (default: the env's tuned preset)")
    helps = _field_help()
    for f in dataclasses.fields(PPOConfig):
        kind = _field_type(f)
        metavar = {} if "action" in kind else {"metavar": "V"}
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"cfg_{f.name}", default=argparse.SUPPRESS,
                           help=f"{helps.get(f.name, '')} [default {f.default!r}]", **kind, **metavar)


def build_parser() -> argparse.ArgumentParser:
    p = opt.Parser(prog="ppo-edu", description="Train and evaluate PPO agents (ppo_edu).")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an agent and write a run folder",
                       description="Train PPO on a gymnasium environment and write a run folder.")
    t.add_argument("env_id", nargs="?", help="gymnasium environment id, e.g. CartPole-v1, Acrobot-v1, Pendulum-v1")
    t.add_argument("--timesteps", type=opt.integer(1, 10**9), default=None,
                   help="environment steps, 1 to 1e9 (default: the preset's)")
    t.add_argument("--seed", type=opt.integer(0, opt.SEED_MAX), default=0, help="random seed (default 0)")
    t.add_argument("--out", default=None, help="run folder (default runs/ENV_ID/seedSEED)")
    t.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace the run already in --out (default: refuse)")
    t.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from RUN_DIR/model.pt, exactly (same config and seed)")
    t.add_argument("--eval-episodes", type=opt.integer(1, 10_000), default=20,
                   help="greedy evaluation episodes (default 20)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar (default: yes)")
    t.add_argument("--save-every", type=opt.integer(0, 10**9), default=0, metavar="UPDATES",
                   help="also write model.pt every this many updates (0: only at the end)")
    t.add_argument("--nproc", type=opt.integer(1, 64), default=1,
                   help="data-parallel processes: launches 'torchrun --nproc_per_node=NPROC -m ppo_edu.train' "
                        "(gloo on CPU, nccl on GPU); --timesteps counts all processes' steps")
    _add_config_options(t)
    e = sub.add_parser("eval", help="reload a run folder (or checkpoint) and evaluate it",
                       description="Reload a saved agent and report its mean return.")
    e.add_argument("run", help="run folder written by 'ppo-edu train', or a model.pt checkpoint")
    e.add_argument("--episodes", type=opt.integer(1, 10_000), default=20, help="evaluation episodes (default 20)")
    e.add_argument("--stochastic", action=argparse.BooleanOptionalAction, default=False,
                   help="sample actions instead of the greedy action")
    e.add_argument("--seed", type=opt.integer(0, opt.SEED_MAX), default=10_000,
                   help="evaluation seed (default 10000)")
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
    r.add_argument("--seed", type=opt.integer(0, opt.SEED_MAX), default=0, help="random seed (default 0)")
    r.add_argument("--out", default=None, help="run folder (default runs/rlhf/PRESET-seedSEED)")
    r.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace the run already in --out (default: refuse)")
    r.add_argument("--device", default="auto", help="auto (a GPU when there is one) | cpu | cuda (default auto)")
    r.add_argument("--ppo-iterations", type=opt.integer(1, 100_000), default=None,
                   help="PPO iterations (default: the preset's)")
    r.add_argument("--grpo-steps", type=opt.integer(1, 100_000), default=None,
                   help="GRPO steps (default: the preset's)")
    r.add_argument("--cache", default=None, help="asset cache folder (default $PPO_EDU_CACHE/rlhf or "
                                                 "~/.cache/ppo_edu/rlhf)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show progress bars (default: yes)")
    r.add_argument("--nproc", type=opt.integer(1, 64), default=1,
                   help="data-parallel processes: launches 'torchrun --nproc_per_node=NPROC -m ppo_edu.cli rlhf ...' "
                        "(gloo on CPU, nccl on GPU); each process samples its own batch")
    return p


def _check_rlhf(args) -> Path:
    """Every rlhf option, before the assets are built or loaded; returns the run folder."""
    from .rlhf.pipeline import PRESETS as RLHF_PRESETS

    if args.preset not in RLHF_PRESETS:
        raise opt.OptionError(f"--preset {args.preset!r} is unknown: allowed values are {', '.join(RLHF_PRESETS)}")
    opt.check_device(args.device)
    if args.cache is not None:
        opt.check_cache_dir(args.cache)
    out = opt.check_out_dir(args.out or f"runs/rlhf/{args.preset}-seed{args.seed}")
    if (out / "summary.json").exists() and not args.overwrite:
        raise opt.OptionError(f"--out {str(out)!r} already holds an RLHF run (summary.json): pass --overwrite to "
                              "replace it, or choose another --out")
    return out


def rlhf_cmd(args) -> int:
    import torch

    from . import distributed
    from .rlhf.pipeline import run_pipeline

    out = _check_rlhf(args)
    dist = distributed.init()
    if dist.enabled and args.device == "auto" and torch.cuda.is_available():
        torch.cuda.set_device(dist.rank % torch.cuda.device_count())    # one GPU per process
    lock = RunLock(out) if dist.is_main else None
    if lock is not None:
        lock.__enter__()
    try:
        s = run_pipeline(args.preset, out, seed=args.seed, progress_bar=args.progress, device=args.device,
                         ppo_iterations=args.ppo_iterations, grpo_steps=args.grpo_steps, cache_dir=args.cache)
    finally:
        if lock is not None:
            lock.__exit__()
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


# ---------------------------------------------------------------------------- train: checks
@dataclasses.dataclass
class _Plan:
    """A checked training run: nothing has been written yet."""

    env_id: str
    seed: int
    config: PPOConfig
    timesteps: int
    out: Path
    agent: PPO | None = None  # the loaded agent of a resumed run


def _env_dims(env_id: str) -> tuple[int, int]:
    """(obs_dim, act_dim) of a registered env, without building a network."""
    import gymnasium as gym
    import numpy as np

    from .rollout import make_vec_env

    make_vec_env(env_id, 1).close()  # a clear ValueError for an unknown id
    env = gym.make(env_id)
    obs, act = env.observation_space, env.action_space
    env.close()
    act_dim = int(act.n) if isinstance(act, gym.spaces.Discrete) else int(np.prod(act.shape or (1,)))
    return int(np.prod(obs.shape or (1,))), act_dim


def _warn_far_from_presets(overrides: dict) -> None:
    configs = [c for c, _ in PRESETS.values()] + [PPOConfig()]
    for name, value in overrides.items():
        message = opt.far_from_presets(name, value, [getattr(c, name, None) for c in configs])
        if message:
            opt.warn("ppo-edu train", message)


def _plan_new(args, check_folder: bool = True) -> _Plan:
    if args.env_id is None:
        raise opt.OptionError("ppo-edu train needs ENV_ID (e.g. CartPole-v1) or --resume RUN_DIR")
    base, default_steps = preset(args.env_id)
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
    config = base.replace(**overrides)
    out = Path(args.out or os.path.join("runs", args.env_id, f"seed{args.seed}"))
    if check_folder:  # rank 0's job under torchrun: the others would see its files
        opt.check_out_dir(out)
        _refuse_existing_run(out, args.overwrite)
    obs_dim, act_dim = _env_dims(args.env_id)
    opt.check_memory(opt.ppo_memory_bytes(config, obs_dim, act_dim), f"PPO on {args.env_id} with this config",
                     "lower --hidden, --n-envs or --n-steps")
    _warn_far_from_presets(overrides)
    return _Plan(args.env_id, args.seed, config, args.timesteps or default_steps, out)


def _refuse_existing_run(out: Path, overwrite: bool, holding_lock: bool = False) -> None:
    if not holding_lock:
        RunLock(out).check_free()
    existing = holds_run(out)
    if existing and not overwrite:
        raise opt.OptionError(f"--out {str(out)!r} already holds a run ({', '.join(existing)}): pass --overwrite "
                              f"to replace it, or --resume {out} to continue it")


def _read_run_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        meta = json.loads(path.read_text())
        meta["env_id"], meta["seed"], meta["total_timesteps"], meta["config"]  # noqa: B018 (the keys must exist)
    except FileNotFoundError:
        raise opt.OptionError(f"--resume {str(folder)!r} holds no config.json: it is not a run folder") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise opt.OptionError(f"--resume: {str(path)!r} is damaged ({type(err).__name__}: {err})") from None
    return meta


def _plan_resume(args) -> _Plan:
    folder = Path(args.resume)
    if not folder.is_dir():
        raise opt.OptionError(f"--resume {str(folder)!r} is not a folder: give the run folder of 'ppo-edu train'")
    given = sorted(k[4:] for k in vars(args) if k.startswith("cfg_"))
    if given or (args.out and Path(args.out) != folder):
        raise opt.OptionError(f"--resume continues the run with its own config and folder: drop "
                              f"{', '.join('--' + g.replace('_', '-') for g in given) or '--out'}")
    RunLock(folder).check_free()
    meta = _read_run_config(folder)
    if args.env_id not in (None, meta["env_id"]):
        raise opt.OptionError(f"ENV_ID {args.env_id!r} differs from the run's {meta['env_id']!r}: drop it")
    if meta.get("processes", 1) > 1 or args.nproc > 1:
        raise opt.OptionError("--resume supports single-process runs only (this one used --nproc "
                              f"{max(meta.get('processes', 1), args.nproc)})")
    agent = PPO.load(folder / "model.pt")
    if agent.config.to_dict() != meta["config"] or agent.env_id != meta["env_id"]:
        raise opt.OptionError(f"--resume: {str(folder / 'model.pt')!r} and config.json belong to different runs")
    if agent._collector is None and agent.num_timesteps > 0:
        opt.warn("ppo-edu train", f"warning: {folder / 'model.pt'} holds no environment state (written by an older "
                                  "ppo_edu): the run continues from fresh episodes, not exactly where it stopped")
    timesteps = args.timesteps or meta["total_timesteps"]
    if agent.num_timesteps >= timesteps:
        raise opt.OptionError(f"--resume: the run already trained {agent.num_timesteps} of {timesteps} steps; pass "
                              "--timesteps with a larger total to train on")
    return _Plan(meta["env_id"], meta["seed"], agent.config, timesteps, folder, agent)


# ---------------------------------------------------------------------------- train: the run
class _StopOnSignal:
    """SIGINT / SIGTERM set ``signum`` instead of killing the run, so the current update finishes
    and the run saves; a second Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self, enabled: bool):
        self.signum, self.enabled, self.saved = None, enabled, {}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT == signum:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this update, then saving (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def __enter__(self):
        if self.enabled:
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self.saved[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they were
                self.enabled = False
        return self

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def train(args, extra_callback=None) -> int:
    from . import distributed

    dist = distributed.info()
    plan = _plan_resume(args) if args.resume else _plan_new(args, check_folder=dist.is_main)
    agent = plan.agent or PPO(plan.env_id, plan.config, seed=plan.seed)
    if not dist.is_main:  # the other ranks train and write nothing
        agent.learn(plan.timesteps, callback=extra_callback, progress_bar=False)
        return 0
    with RunLock(plan.out), _StopOnSignal(dist.world_size == 1) as stop:
        return _train_in_folder(args, plan, agent, dist.world_size, stop, extra_callback)


def _start_folder(args, plan: _Plan, world_size: int) -> MetricsWriter:
    """Holding the lock: clean the folder, write config.json and status.json, open metrics.csv."""
    out = plan.out
    removed = clean_stray_tmp(out)
    if removed:
        print(f"removed temporary files left by a killed run: {', '.join(removed)}")
    if plan.agent is not None:
        print(f"resuming {plan.env_id} from {plan.agent.num_timesteps} of {plan.timesteps} steps -> {out}", flush=True)
        return MetricsWriter(out / "metrics.csv", keep_updates=plan.agent.n_updates)
    _refuse_existing_run(out, args.overwrite, holding_lock=True)  # again: a run may have finished in between
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    meta = {"env_id": plan.env_id, "seed": plan.seed, "total_timesteps": plan.timesteps, "processes": world_size,
            "config": plan.config.to_dict(), "python": platform.python_version()}
    atomic_write_text(out / "config.json", json.dumps(meta, indent=2))
    print(f"training PPO on {plan.env_id} for {plan.timesteps} steps (seed {plan.seed}, "
          f"{world_size} process{'es' if world_size > 1 else ''}) -> {out}", flush=True)
    return MetricsWriter(out / "metrics.csv")


def _train_in_folder(args, plan: _Plan, agent: PPO, world_size: int, stop: _StopOnSignal, extra_callback) -> int:
    out = plan.out
    metrics = _start_folder(args, plan, world_size)
    counts = lambda: {"num_timesteps": agent.num_timesteps, "n_updates": agent.n_updates,  # noqa: E731
                      "total_timesteps": plan.timesteps}
    # what model.pt holds: a resumed run's starting point, then each --save-every checkpoint
    saved = {"checkpoint": {k: counts()[k] for k in ("num_timesteps", "n_updates")} if plan.agent else None}
    write_status(out, "running", **saved, **counts())

    def callback(a, row):
        metrics.write(row)
        if args.save_every and a.n_updates % args.save_every == 0:
            a.save(out / "model.pt")
            saved["checkpoint"] = {k: counts()[k] for k in ("num_timesteps", "n_updates")}
            write_status(out, "running", **saved, **counts())  # a SIGKILL leaves a true status
        result = None if extra_callback is None else extra_callback(a, row)
        return False if stop.signum is not None else result

    try:
        agent.learn(plan.timesteps - agent.num_timesteps, callback=callback, progress_bar=args.progress,
                    reset_num_timesteps=plan.agent is None)
    except BaseException as err:
        write_status(out, "failed", error=f"{type(err).__name__}: {err}", **saved, **counts())
        raise
    agent.save(out / "model.pt")
    from .plotting import save_run_plot

    save_run_plot(agent.history, out / "learning_curve.png", f"PPO on {plan.env_id}, seed {plan.seed}")
    if stop.signum is not None:
        write_status(out, "interrupted", signal=signal.Signals(stop.signum).name, **counts())
        print(f"interrupted after {agent.num_timesteps} of {plan.timesteps} steps; model.pt saved; continue with: "
              f"ppo-edu train --resume {out}", file=sys.stderr)
        return 128 + stop.signum
    return _finish(args, plan, agent, counts())


def _finish(args, plan: _Plan, agent: PPO, counts: dict) -> int:
    out = plan.out
    mean, std = agent.evaluate(args.eval_episodes)
    atomic_write_text(out / "eval.json", json.dumps({"episodes": args.eval_episodes, "mean_return": mean,
                                                     "std_return": std, "deterministic": True}, indent=2))
    write_status(out, "finished", **counts)
    last = agent.history[-1]
    resumed = " since the resume" if plan.agent is not None else ""
    print(f"trained {agent.num_timesteps} steps in {last['wall_time']:.1f} s{resumed}")
    print(f"greedy evaluation over {args.eval_episodes} episodes: {mean:.1f} +- {std:.1f}")
    print(f"run folder: {out}")
    return 0


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
    commands = {"train": train, "eval": evaluate, "assign": assign_cmd, "grade": grade_cmd, "rlhf": rlhf_cmd}
    try:
        if args.command in ("train", "rlhf") and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
            _plan_resume(args) if args.command == "train" and args.resume else (
                _plan_new(args) if args.command == "train" else _check_rlhf(args))  # check before launching
            return launch_torchrun(argv, args.nproc)
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError, FolderInUse) as err:
        print(f"ppo-edu {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ppo-edu {args.command}: stopped by Ctrl-C", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
