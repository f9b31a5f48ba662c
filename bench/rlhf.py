"""ppo_edu's PPO-RLHF and GRPO against Hugging Face TRL's, side by side, on the same tiny GPT-2.

Speed: one PPO iteration (64 prompts x up to 24 new tokens, 4 epochs x 4 minibatches) and one
GRPO step (16 prompts x 4 samples), timed in turn: each round starts TRL's trainer in a subprocess and
takes one iteration of each of our trainers, then one of TRL's, and so on, so that a slow spell of this
shared machine slows both sides alike. Each of our rows also gives the median seconds of its phases:
sampling (generate), the passes without gradients and the reward (score), and the minibatch steps
(update). ppo_edu runs in this process, TRL in its bench-only virtual environments
(``bench/.venv-trl-ppo`` with trl==1.12.0, whose PPO trainer is ``trl.experimental.ppo``;
``bench/.venv-trl-grpo`` with trl==1.16.0). Make them once with::

    python3 -m venv bench/.venv-trl-ppo && bench/.venv-trl-ppo/bin/pip install torch==2.13.0 trl==1.12.0
    python3 -m venv bench/.venv-trl-grpo && bench/.venv-trl-grpo/bin/pip install torch==2.13.0 trl==1.16.0

(naming torch==2.13.0 keeps pip on the local CPU wheel instead of a multi-GB CUDA build)

Both sides use one thread and the cached ``cpu-tiny`` assets (policy, reference, reward model;
TRL's value model starts from the reward model, as TRL's examples do). ppo_edu's default value
head shares the policy's trunk; the ``separate critic`` row gives it its own model, as TRL has.

Quality: PPO-RLHF and GRPO for the preset's iterations (steps) on several seeds; the mean gold (VADER)
score of 256 fresh samples, their KL to the reference, and the largest per-batch KL after iteration
10. Target (issue 15): gold >= 0.8, KL <= 5 nats, and no per-batch KL above 3x the target (PPO's
adaptive target, 3 nats; GRPO, which steers to no target, is held to the same) on every seed.

    python bench/rlhf.py [--iters 8] [--rounds 2] [--quality-seeds 3] [--skip-trl] [--skip-quality] [--skip-speed]

``--device cuda`` runs both sides on one GPU (fp32 on both), at the ``gpu-small`` size unless
``--size`` says otherwise (the TRL venvs then need a CUDA build of torch)::

    python bench/rlhf.py --device cuda [--size gpu-small]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

from ppo_edu.rlhf.grpo import GRPO  # noqa: E402
from ppo_edu.rlhf.pipeline import PRESETS, RewardModelScorer, evaluate_policy, load_assets  # noqa: E402
from ppo_edu.rlhf.ppo import PPORLHF  # noqa: E402

HERE = Path(__file__).resolve().parent


def trainer(a, policy, kind: str, size: str, seed: int, **changes):
    """A PPO-RLHF (``kind="ppo"``) or GRPO trainer of ``policy`` (a copy of the pretrained one), with the
    ``size`` preset's config (and ``changes``), the reward model and the pretrained policy as reference."""
    p = PRESETS[size]
    cls, cfg = (PPORLHF, p.ppo) if kind == "ppo" else (GRPO, p.grpo)
    return cls(policy, a.tok, a.prompts, RewardModelScorer(a.reward_model), cfg.replace(**changes), ref=a.policy,
               seed=seed)


class Peer:
    """TRL's trainer in its bench-only venv, run one iteration at a time (``trl_peer.py --lockstep``): it
    starts and takes its untimed warm-up iteration; each ``step()`` lets it take one more and returns its
    seconds."""

    def __init__(self, kind: str, assets_dir: str, iters: int, seed: int, device: str):
        self.kind, self.err = kind, tempfile.TemporaryFile("w+")
        cmd = [str(self.venv(kind) / "bin" / "python"), str(HERE / "trl_peer.py"), kind, "--assets", assets_dir,
               "--iters", str(iters), "--seed", str(seed), "--device", device, "--lockstep"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        self._next()                                                   # the warm-up

    @staticmethod
    def venv(kind: str) -> Path:
        """The bench-only venv that holds TRL for ``kind`` (see this file's docstring)."""
        return HERE / (".venv-trl-ppo" if kind == "ppo" else ".venv-trl-grpo")

    @classmethod
    def available(cls, kind: str) -> bool:
        venv = cls.venv(kind)
        if not (venv / "bin" / "python").exists():
            print(f"  (skipped TRL {kind}: {venv.relative_to(HERE.parent)} is missing; see this file's docstring)")
            return False
        return True

    def _next(self) -> float:
        for line in self.proc.stdout:
            if line.startswith("LOCKSTEP "):
                return float(line.split()[1])
        self._fail()

    def step(self) -> float:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self._next()

    def close(self) -> None:
        self.proc.communicate("\n", timeout=600)                      # it ends its run and reports
        if self.proc.returncode != 0:
            self._fail()

    def _fail(self):
        self.proc.kill()
        self.err.seek(0)
        print(self.err.read()[-3000:])
        raise SystemExit(f"TRL {self.kind} failed (exit {self.proc.wait()})")


PHASES = {"generate": "time_generate", "score": "time_score", "update": "time_update"}


def lockstep(rows: dict, iters: int, ours: dict, peer_name: str, peer: Peer | None, phases: dict) -> None:
    """``iters`` timed iterations of each of ``ours`` (name: trainer, after one untimed warm-up each) and of
    TRL's ``peer``, taken in turn: a slow spell of this shared machine then slows both sides alike. Our
    iterations' phases (``PHASES``) go to ``phases[name]``."""
    for t in ours.values():
        t.step()
    for _ in range(iters):
        for name, t in ours.items():
            stats = t.step()
            rows[name].append(stats["time_iter"])
            phases.setdefault(name, []).append({k: stats[v] for k, v in PHASES.items()})
        if peer is not None:
            rows[peer_name].append(peer.step())
    if peer is not None:
        peer.close()


def trl_assets(a) -> str:
    """TRL's asset layout: links to our cached save_pretrained folders."""
    d = Path(tempfile.mkdtemp(prefix="ppo_edu_trl_"))
    rm_dir = a.path.with_name(a.path.name + "-rm")
    for name, src in (("tokenizer", a.path / "tokenizer"), ("policy", a.path / "policy"),
                      ("reward_model", rm_dir / "reward_model"), ("prompts.json", a.path / "prompts.json")):
        (d / name).symlink_to(src)
    return str(d)


TARGETS = (("ppo_edu PPO", "TRL PPO", 3), ("ppo_edu PPO (separate critic)", "TRL PPO", 2),
           ("ppo_edu GRPO", "TRL GRPO", 1.5))                          # (ours, TRL's, issue 15's ratio)


def ratio_lines(med: dict, paired: dict) -> list[str]:
    """Each target's ratio: of the medians, and the median of the per-iteration ratios (TRL's iteration over
    ours, taken in turn)."""
    out = []
    for ours, peer, target in TARGETS:
        if peer in med:
            out.append(f"{peer + ' / ' + ours:42s} = {med[peer] / med[ours]:.2f}x, paired "
                       f"{statistics.median(paired[ours]):.2f}x  (target >= {target:g})")
    return out


def speed(a, iters: int, rounds: int, skip_trl: bool, size: str, device: str) -> None:
    rows = {k: [] for k in ("ppo_edu PPO", "ppo_edu PPO (separate critic)", "TRL PPO", "ppo_edu GRPO", "TRL GRPO")}
    d, phases = trl_assets(a), {}
    use = {kind: not skip_trl and Peer.available(kind) for kind in ("ppo", "grpo")}
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}", flush=True)
        # all 16 minibatch steps, as TRL takes: the preset's max_update_kl would end some updates early
        ppo = {"ppo_edu PPO": trainer(a, copy.deepcopy(a.policy), "ppo", size, r, max_update_kl=None),
               "ppo_edu PPO (separate critic)": trainer(a, copy.deepcopy(a.policy), "ppo", size, r, critic="separate",
                                                        max_update_kl=None)}
        lockstep(rows, iters, ppo, "TRL PPO", Peer("ppo", d, iters, r, device) if use["ppo"] else None,
                 phases)
        grpo = {"ppo_edu GRPO": trainer(a, copy.deepcopy(a.policy), "grpo", size, r)}
        lockstep(rows, iters, grpo, "TRL GRPO", Peer("grpo", d, iters, r, device) if use["grpo"] else None,
                 phases)
        # this round's medians: on a shared machine the rounds can differ by a fifth
        print("  " + ", ".join(f"{k} {statistics.median(v[-iters:]):.3f} s" for k, v in rows.items() if v), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    paired = {k: [t / o for o, t in zip(rows[k], rows[p])] for k, p, _ in TARGETS}
    where = "1 thread" if device == "cpu" else "one GPU"
    print(f"\nseconds per iteration ({size}, median of {iters} x {rounds}, warm-up excluded, {where}; TRL's "
          f"iterations taken in turn with ours):")
    for k, v in med.items():
        parts = [f"{p} {statistics.median(x[p] for x in phases[k]):.3f}" for p in PHASES] if k in phases else []
        print(f"  {k:32s} {v:6.3f} s" + (f"  ({', '.join(parts)})" if parts else ""))
    for line in ratio_lines(med, paired):
        print(line)


def quality_run(a, kind: str, seed: int, n: int | None, size: str) -> dict:
    """One run of the ``size`` preset (n iterations, default the preset's); fresh-sample gold and KL, and
    the largest per-batch KL after iteration 10."""
    p = PRESETS[size]
    n = n or (p.ppo_iterations if kind == "ppo" else p.grpo_steps)
    torch.manual_seed(seed)
    policy, t0 = copy.deepcopy(a.policy), time.perf_counter()
    hist = trainer(a, policy, kind, size, seed).train(n, progress_bar=False)
    ev = evaluate_policy(policy, a, 256, ref=a.policy)
    limit = 3 * p.ppo.adaptive_kl_target     # PPO's KL target; GRPO, which steers to none, is held to the same
    late = max((h["kl"] for h in hist[10:]), default=float("nan"))   # nan: a run of 10 iterations or fewer
    ok = ev["gold"] >= 0.8 and ev["kl"] <= 5.0 and not late > limit
    print(f"  {kind:4s} seed {seed}, {n} it.  gold {ev['gold']:+.3f}  KL {ev['kl']:5.2f} nats  max batch KL after it. 10 "
          f"{late:5.2f} (limit {limit:g})  ({time.perf_counter() - t0:.0f} s)  {'PASS' if ok else 'FAIL'}", flush=True)
    return {"ok": ok, "gold": ev["gold"], "kl": ev["kl"], "late_max_kl": late}


def quality(a, seeds: int, iterations: int | None, size: str) -> None:
    print(f"\nquality: the {size} preset's iterations (PPO) / steps (GRPO); 256 fresh samples "
          "(gold = VADER compound).\nPASS: gold >= 0.8, KL to the reference <= 5 nats, and every per-batch KL "
          "after iteration 10 <= 3x the target")
    before = evaluate_policy(a.policy, a, 256)
    print(f"  reference       gold {before['gold']:+.3f}")
    results = [quality_run(a, kind, seed, iterations, size) for kind in ("ppo", "grpo") for seed in range(seeds)]
    print(f"target met on {sum(r['ok'] for r in results)} of {len(results)} runs: "
          f"{'PASS' if all(r['ok'] for r in results) else 'FAIL'}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=8, help="timed iterations per trainer per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    p.add_argument("--quality-seeds", type=int, default=3)
    p.add_argument("--quality-iterations", type=int, default=None, help="default: the preset's (PPO and GRPO)")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-speed", action="store_true", help="only the quality runs")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: both sides on one GPU")
    p.add_argument("--size", choices=sorted(PRESETS), default=None,
                   help="the assets and preset (default: cpu-tiny on the CPU, gpu-small on a GPU)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA GPU on this machine (use --device cpu)")
    size = args.size or ("cpu-tiny" if args.device == "cpu" else "gpu-small")
    torch.set_num_threads(1)
    a = load_assets(size, 0, "rm", device=args.device)
    print(f"{size} GPT-2 on {args.device}: {a.info['parameters']:,} parameters; reward model held-out accuracy "
          f"{a.info['rm']['heldout_accuracy']:.3f}")
    if not args.skip_speed:
        speed(a, args.iters, args.rounds, args.skip_trl, size, args.device)
    if not args.skip_quality:
        quality(a, args.quality_seeds, args.quality_iterations, size)


if __name__ == "__main__":
    sys.exit(main())
