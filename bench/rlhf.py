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
head shares the policy's trunk; the ``separate critic`` rows give it its own model, as TRL has.
The first two PPO rows run the preset as the chapters do: its ``max_update_kl`` ends an iteration's
epochs once the policy has moved 0.02 nats per token from pi_old (about 11 of the 16 minibatch steps over
a 100-iteration run; the rows print how many they took). The ``all 16 steps`` rows turn that stop off:
the same work as TRL's iteration, so their ratio is the engine's alone.

Quality: PPO-RLHF (shared and separate critic) and GRPO for the preset's iterations (steps) on several
seeds; the mean gold (VADER) score of 256 fresh samples, their KL to the reference, and the largest
per-batch KL after iteration 10. Target (issue 15): gold >= 0.8, KL <= 5 nats, and no per-batch KL above
3x the target (PPO's adaptive target, 3 nats; GRPO, which steers to no target, is held to the same) on
every seed. Then TRL's PPO, which steers KL by a fixed coefficient only, runs on the same seeds at
each of ``--trl-kl-coefs`` (our preset's learning rate, constant as ours); its trained policies are scored
as ours are, and each of our PPO runs is compared with TRL's gold at the same KL on the same seed
(issue 15: "at equal or better gold score for equal KL"). This part takes about an hour.

    python bench/rlhf.py [--iters 8] [--rounds 2] [--quality-seeds 3] [--trl-kl-coefs 0.4,0.8,1.6]
                         [--skip-trl] [--skip-quality] [--skip-speed]

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
            phases.setdefault(name, []).append({k: stats[v] for k, v in PHASES.items()}
                                               | {"steps": stats.get("n_minibatch_steps")})
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


PPO_ROWS = {                                                       # name: changes to the preset's PPO config
    "ppo_edu PPO": {},
    "ppo_edu PPO (separate critic)": {"critic": "separate"},
    # the same with all 16 minibatch steps, as TRL takes: the preset's max_update_kl ends some updates early
    "ppo_edu PPO, all 16 steps": {"max_update_kl": None},
    "ppo_edu PPO (separate critic), all 16 steps": {"critic": "separate", "max_update_kl": None},
}


def equal_work(changes: dict) -> bool:
    """Whether a row of ``PPO_ROWS`` turns the preset's early stop off (TRL's work, the engine alone)."""
    return "max_update_kl" in changes and changes["max_update_kl"] is None


TARGETS = (("ppo_edu PPO", "TRL PPO", 3), ("ppo_edu PPO (separate critic)", "TRL PPO", 2),
           ("ppo_edu PPO, all 16 steps", "TRL PPO", None),
           ("ppo_edu PPO (separate critic), all 16 steps", "TRL PPO", None),
           ("ppo_edu GRPO", "TRL GRPO", 1.5))           # (ours, TRL's, issue 15's ratio; None: equal work, no target)


def ratio_lines(med: dict, paired: dict) -> list[str]:
    """Each row's ratio: of the medians, and the median of the per-iteration ratios (TRL's iteration over
    ours, taken in turn)."""
    out = []
    for ours, peer, target in TARGETS:
        if peer in med and ours in med:
            out.append(f"{peer + ' / ' + ours:56s} = {med[peer] / med[ours]:.2f}x, paired "
                       f"{statistics.median(paired[ours]):.2f}x  "
                       + (f"(target >= {target:g})" if target else "(equal work: the engine alone)"))
    return out


def speed(a, iters: int, rounds: int, skip_trl: bool, size: str, device: str) -> None:
    cfg = PRESETS[size].ppo
    early_stop = cfg.max_update_kl is not None                       # else the equal-work rows are the same
    rows = {k: [] for k in (*(k for k, c in PPO_ROWS.items() if early_stop or not equal_work(c)),
                            "TRL PPO", "ppo_edu GRPO", "TRL GRPO")}
    d, phases = trl_assets(a), {}
    use = {kind: not skip_trl and Peer.available(kind) for kind in ("ppo", "grpo")}
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}", flush=True)
        ppo = {name: trainer(a, copy.deepcopy(a.policy), "ppo", size, r, **changes)
               for name, changes in PPO_ROWS.items() if name in rows}
        lockstep(rows, iters, ppo, "TRL PPO", Peer("ppo", d, iters, r, device) if use["ppo"] else None,
                 phases)
        grpo = {"ppo_edu GRPO": trainer(a, copy.deepcopy(a.policy), "grpo", size, r)}
        lockstep(rows, iters, grpo, "TRL GRPO", Peer("grpo", d, iters, r, device) if use["grpo"] else None,
                 phases)
        # this round's medians: on a shared machine the rounds can differ by a fifth
        print("  " + ", ".join(f"{k} {statistics.median(v[-iters:]):.3f} s" for k, v in rows.items() if v), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    paired = {k: [t / o for o, t in zip(rows[k], rows[p])] for k, p, _ in TARGETS if k in rows}
    where = "1 thread" if device == "cpu" else "one GPU"
    print(f"\nseconds per iteration ({size}, median of {iters} x {rounds}, warm-up excluded, {where}; TRL's "
          f"iterations taken in turn with ours):")
    for k, v in med.items():
        parts = [f"{p} {statistics.median(x[p] for x in phases[k]):.3f}" for p in PHASES] if k in phases else []
        steps = [x["steps"] for x in phases.get(k, ()) if x["steps"] is not None]
        if steps:                                                     # the preset's early stop (max_update_kl)
            parts.append(f"{statistics.mean(steps):.1f} of {cfg.n_epochs * cfg.n_minibatches} minibatch steps")
        print(f"  {k:44s} {v:6.3f} s" + (f"  ({', '.join(parts)})" if parts else ""))
    for line in ratio_lines(med, paired):
        print(line)


QUALITY_ROWS = (*(("ppo", name, changes) for name, changes in PPO_ROWS.items() if not equal_work(changes)),
                ("grpo", "ppo_edu GRPO", {}))                     # (kind, name, changes): the presets as run


def quality_run(a, kind: str, label: str, seed: int, n: int | None, size: str, **changes) -> dict:
    """One run of the ``size`` preset (n iterations, default the preset's; with ``changes`` to its config);
    fresh-sample gold and KL, and the largest per-batch KL after iteration 10."""
    p = PRESETS[size]
    n = n or (p.ppo_iterations if kind == "ppo" else p.grpo_steps)
    torch.manual_seed(seed)
    policy, t0 = copy.deepcopy(a.policy), time.perf_counter()
    hist = trainer(a, policy, kind, size, seed, **changes).train(n, progress_bar=False)
    ev = evaluate_policy(policy, a, 256, ref=a.policy)
    limit = 3 * p.ppo.adaptive_kl_target     # PPO's KL target; GRPO, which steers to none, is held to the same
    late = max((h["kl"] for h in hist[10:]), default=float("nan"))   # nan: a run of 10 iterations or fewer
    ok = ev["gold"] >= 0.8 and ev["kl"] <= 5.0 and not late > limit
    steps = [h["n_minibatch_steps"] for h in hist if "n_minibatch_steps" in h]   # PPO's early stop, if set
    print(f"  {label:30s} seed {seed}, {n} it.  gold {ev['gold']:+.3f}  KL {ev['kl']:5.2f} nats  max batch KL after "
          f"it. 10 {late:5.2f} (limit {limit:g})" + (f"  {statistics.mean(steps):.1f} steps/it." if steps else "")
          + f"  ({time.perf_counter() - t0:.0f} s)  {'PASS' if ok else 'FAIL'}", flush=True)
    return {"label": label, "ok": ok, "gold": ev["gold"], "kl": ev["kl"], "late_max_kl": late}


def trl_quality_run(a, assets_dir: str, seed: int, n: int, kl_coef: float, lr: float, device: str) -> dict:
    """TRL's PPO for n iterations at a fixed ``kl_coef`` (its only KL control), with our preset's learning rate,
    held constant as ours is; its trained policy is scored here as ours are (``evaluate_policy``)."""
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ppo_edu_trl_policy_") as out:
        cmd = [str(Peer.venv("ppo") / "bin" / "python"), str(HERE / "trl_peer.py"), "ppo", "--assets", assets_dir,
               "--iters", str(n), "--warmup", "0", "--seed", str(seed), "--device", device, "--lr", str(lr),
               "--lr-scheduler", "constant", "--kl-coef", str(kl_coef), "--save", out]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if r.returncode != 0:
            print(r.stderr[-3000:])
            raise SystemExit(f"TRL ppo failed (exit {r.returncode})")
        policy = AutoModelForCausalLM.from_pretrained(out).to(a.policy.device).eval()
    ev = evaluate_policy(policy, a, 256, ref=a.policy)
    print(f"  TRL PPO, kl_coef {kl_coef:<5g}  seed {seed}, {n} it.  gold {ev['gold']:+.3f}  KL {ev['kl']:5.2f} nats  "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"kl_coef": kl_coef, "gold": ev["gold"], "kl": ev["kl"]}


def gold_at(frontier: list[tuple[float, float]], kl: float) -> float | None:
    """The gold of a frontier of (KL, gold) points at ``kl``, linear between the two points around it;
    None outside the points' KL range."""
    pts = sorted(frontier)
    for (k0, g0), (k1, g1) in zip(pts, pts[1:]):
        if k0 <= kl <= k1:
            return g0 if k1 == k0 else g0 + (g1 - g0) * (kl - k0) / (k1 - k0)
    return None


def quality(a, seeds: int, iterations: int | None, size: str, trl_kl_coefs: list[float], device: str) -> None:
    print(f"\nquality: the {size} preset's iterations (PPO) / steps (GRPO); 256 fresh samples "
          "(gold = VADER compound).\nPASS: gold >= 0.8, KL to the reference <= 5 nats, and every per-batch KL "
          "after iteration 10 <= 3x the target")
    before = evaluate_policy(a.policy, a, 256)
    print(f"  reference       gold {before['gold']:+.3f}")
    results = [quality_run(a, kind, label, seed, iterations, size, **changes)
               for kind, label, changes in QUALITY_ROWS for seed in range(seeds)]
    print(f"target met on {sum(r['ok'] for r in results)} of {len(results)} runs: "
          f"{'PASS' if all(r['ok'] for r in results) else 'FAIL'}")
    if not trl_kl_coefs or not Peer.available("ppo"):
        return
    # "at equal or better gold score for equal KL": TRL's PPO steers KL with a fixed coefficient only, so it
    # runs at several; on each seed its (KL, gold) points trace a frontier, read at the KL our run of that seed
    # ended at
    n = iterations or PRESETS[size].ppo_iterations
    print(f"\nTRL's PPO at fixed KL coefficients ({n} iterations, lr {PRESETS[size].ppo.lr:g} constant, as ours):")
    d = trl_assets(a)
    trl = [trl_quality_run(a, d, seed, n, c, PRESETS[size].ppo.lr, device)
           for c in trl_kl_coefs for seed in range(seeds)]
    means = [(statistics.mean(r["kl"] for r in trl if r["kl_coef"] == c),
              statistics.mean(r["gold"] for r in trl if r["kl_coef"] == c)) for c in trl_kl_coefs]
    print("  TRL frontier (seed means): " + ", ".join(f"KL {k:.2f} gold {g:+.3f}" for k, g in sorted(means)))
    for kind, label, _ in QUALITY_ROWS:
        if kind == "ppo":
            print(versus_trl(label, [r for r in results if r["label"] == label], trl, seeds))


def versus_trl(label: str, ours: list[dict], trl: list[dict], seeds: int) -> str:
    """One line: our runs (one per seed, ``kl`` and ``gold``) against TRL's (``seeds`` per coefficient, in seed
    order), each seed read on TRL's frontier of the same seed at the KL our run ended at. Equal or better when
    the mean difference is >= 0; within noise when it is above -2 standard errors; else worse."""
    diffs = [r["gold"] - g for seed, r in enumerate(ours)
             if (g := gold_at([(t["kl"], t["gold"]) for t in trl[seed::seeds]], r["kl"])) is not None]
    head = (f"  {label:30s} KL {statistics.mean(r['kl'] for r in ours):.2f} "
            f"gold {statistics.mean(r['gold'] for r in ours):+.3f}; ")
    if len(diffs) < len(ours):
        return head + f"{len(ours) - len(diffs)} run(s) outside TRL's KL range: add a coefficient"
    mean = statistics.mean(diffs)
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    verdict = ("equal or better" if mean >= 0 else "equal within noise (less than 2 standard errors)"
               if mean > -2 * se else "WORSE")
    return head + f"gold minus TRL's at the same KL {mean:+.3f} (standard error {se:.3f}): {verdict}"


def kl_coefs(text: str) -> list[float]:
    """``--trl-kl-coefs``: comma-separated positive numbers ('' for none)."""
    try:
        out = [float(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if any(not c > 0 for c in out):
        raise argparse.ArgumentTypeError(f"{text!r}: each coefficient must be > 0")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=8, help="timed iterations per trainer per round")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    p.add_argument("--quality-seeds", type=int, default=3)
    p.add_argument("--quality-iterations", type=int, default=None, help="default: the preset's (PPO and GRPO)")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--trl-kl-coefs", type=kl_coefs, default="0.4,0.8,1.6",
                   help="TRL PPO's KL coefficients for the quality frontier (comma-separated; '' skips TRL's runs)")
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
        quality(a, args.quality_seeds, args.quality_iterations, size, [] if args.skip_trl else args.trl_kl_coefs,
                args.device)


if __name__ == "__main__":
    sys.exit(main())
