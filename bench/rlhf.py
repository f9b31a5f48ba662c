"""ppo_edu's PPO-RLHF and GRPO against Hugging Face TRL's, side by side, on the same tiny GPT-2.

Speed: one PPO iteration (64 prompts x up to 24 new tokens, 4 epochs x 4 minibatches) and one
GRPO step (16 prompts x 4 samples), timed in alternating rounds: ppo_edu in this process, TRL in
its bench-only virtual environments (``bench/.venv-trl-ppo`` with trl==1.12.0, whose PPO trainer
is ``trl.experimental.ppo``; ``bench/.venv-trl-grpo`` with trl==1.16.0). Make them once with::

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

    python bench/rlhf.py [--iters 8] [--rounds 2] [--quality-seeds 3] [--skip-trl] [--skip-quality]

``--device cuda`` runs both sides on one GPU (fp32 on both), at the ``gpu-small`` size unless
``--size`` says otherwise (the TRL venvs then need a CUDA build of torch)::

    python bench/rlhf.py --device cuda [--size gpu-small]
"""
from __future__ import annotations

import argparse
import copy
import json
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


def ours(a, kind: str, iters: int, seed: int, size: str, **changes) -> list[float]:
    t = trainer(a, copy.deepcopy(a.policy), kind, size, seed, **changes)
    t.step()                                                           # warm-up
    return [t.step()["time_iter"] for _ in range(iters)]


def trl(kind: str, assets_dir: str, iters: int, seed: int, device: str) -> list[float] | None:
    venv = HERE / (".venv-trl-ppo" if kind == "ppo" else ".venv-trl-grpo")
    if not (venv / "bin" / "python").exists():
        print(f"  (skipped TRL {kind}: {venv.relative_to(HERE.parent)} is missing; see this file's docstring)")
        return None
    out = subprocess.run([str(venv / "bin" / "python"), str(HERE / "trl_peer.py"), kind, "--assets", assets_dir,
                          "--iters", str(iters), "--seed", str(seed), "--device", device], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        print(out.stderr[-3000:])
        raise SystemExit(f"TRL {kind} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])["per_iter"]


def trl_assets(a) -> str:
    """TRL's asset layout: links to our cached save_pretrained folders."""
    d = Path(tempfile.mkdtemp(prefix="ppo_edu_trl_"))
    rm_dir = a.path.with_name(a.path.name + "-rm")
    for name, src in (("tokenizer", a.path / "tokenizer"), ("policy", a.path / "policy"),
                      ("reward_model", rm_dir / "reward_model"), ("prompts.json", a.path / "prompts.json")):
        (d / name).symlink_to(src)
    return str(d)


def speed(a, iters: int, rounds: int, skip_trl: bool, size: str, device: str) -> None:
    rows = {k: [] for k in ("ppo_edu PPO", "ppo_edu PPO (separate critic)", "TRL PPO", "ppo_edu GRPO", "TRL GRPO")}
    d = trl_assets(a)
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}", flush=True)
        # all 16 minibatch steps, as TRL takes: the preset's max_update_kl would end some updates early
        rows["ppo_edu PPO"] += ours(a, "ppo", iters, r, size, max_update_kl=None)
        rows["ppo_edu PPO (separate critic)"] += ours(a, "ppo", iters, r, size, critic="separate", max_update_kl=None)
        rows["ppo_edu GRPO"] += ours(a, "grpo", iters, r, size)
        if not skip_trl:
            rows["TRL PPO"] += trl("ppo", d, iters, r, device) or []
            rows["TRL GRPO"] += trl("grpo", d, iters, r, device) or []
        # this round's medians: on a shared machine the rounds can differ by a fifth, both sides alike or not
        print("  " + ", ".join(f"{k} {statistics.median(v[-iters:]):.3f} s" for k, v in rows.items() if v), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    where = "1 thread" if device == "cpu" else "one GPU"
    print(f"\nseconds per iteration ({size}, median of {iters} x {rounds}, warm-up excluded, {where}):")
    for k, v in med.items():
        print(f"  {k:32s} {v:6.3f} s")
    if "TRL PPO" in med:
        print(f"TRL PPO / ppo_edu PPO            = {med['TRL PPO'] / med['ppo_edu PPO']:.2f}x  (target >= 3)")
        print(f"TRL PPO / ppo_edu PPO (separate) = {med['TRL PPO'] / med['ppo_edu PPO (separate critic)']:.2f}x  (target >= 2)")
    if "TRL GRPO" in med:
        print(f"TRL GRPO / ppo_edu GRPO          = {med['TRL GRPO'] / med['ppo_edu GRPO']:.2f}x  (target >= 1.5)")


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
    speed(a, args.iters, args.rounds, args.skip_trl, size, args.device)
    if not args.skip_quality:
        quality(a, args.quality_seeds, args.quality_iterations, size)


if __name__ == "__main__":
    sys.exit(main())
