"""Peer side of ``bench/rlhf.py``: time Hugging Face TRL's RLHF trainers on our assets.

This script is *not* imported by the library or the tests; it runs inside one of two
bench-only virtual environments that hold TRL (they are git-ignored):

    bench/.venv-trl-ppo   trl==1.12.0   (PPO lives in ``trl.experimental.ppo``)
    bench/.venv-trl-grpo  trl==1.16.0   (``trl.GRPOTrainer``)

Usage::

    bench/.venv-trl-ppo/bin/python  bench/trl_peer.py ppo  --assets DIR --iters 5 --seed 0
    bench/.venv-trl-ppo/bin/python  bench/trl_peer.py ppo  --assets DIR --iters 100 --warmup 0 --lr 3e-4 \
        --lr-scheduler constant --kl-coef 0.4 --save OUT     # a quality run: OUT gets the trained policy
    bench/.venv-trl-grpo/bin/python bench/trl_peer.py grpo --assets DIR --iters 5 --seed 0 [--lockstep]
    bench/.venv-trl-ppo/bin/python  bench/trl_peer.py make-standin /tmp/trl_assets

``DIR`` holds ``tokenizer/``, ``policy/``, ``reward_model/`` (all ``save_pretrained``
folders) and ``prompts.json``.  ``make-standin`` writes a random-initialised directory
of that layout, only for trying this script out.

The last line printed on stdout is one JSON object::

    {"trainer": "trl-ppo" | "trl-grpo", "trl": "<version>", "sec_per_iter": <median>,
     "iters": n, "per_iter": [...], ...}

An *iteration* is one PPO update (a rollout of 64 prompts x 24 new tokens, then 4 epochs
x 4 minibatches of optimisation) or one GRPO optimizer step (16 prompts x 4 completions
x 24 tokens, scored, one gradient step).  Each is timed from the end of the previous one
(the first from ``on_train_begin``), and the first ``--warmup`` of them are dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

# Small models run fastest single-threaded on these machines; this must be set before
# torch is imported for OpenMP to honour it.  Everything runs offline.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

# Shape of the benchmark; these must match our side in bench/rlhf.py.
ROLLOUT_BATCH = 64      # completions per PPO iteration / GRPO step
RESPONSE_LEN = 24       # new tokens per completion
GRPO_GROUP = 4          # completions per prompt (GRPO): 16 prompts x 4 = 64
PAD, EOS = "<|pad|>", "<|endoftext|>"


# --------------------------------------------------------------------------- helpers


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set once in this process
        pass


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("trl", "transformers", "accelerate", "datasets", "torch", "tokenizers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _load_assets(assets: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(assets, "tokenizer"))
    tok.padding_side = "left"
    if tok.pad_token is None:
        raise SystemExit(f"{assets}/tokenizer has no pad token")
    with open(os.path.join(assets, "prompts.json")) as fh:
        prompts = json.load(fh)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise SystemExit(f"{assets}/prompts.json must be a non-empty JSON list of strings")
    return tok, prompts


def _make_timer(lockstep: bool = False):
    """A TrainerCallback that records the wall time of every optimisation iteration. With ``lockstep``,
    after each iteration it prints ``LOCKSTEP <seconds>`` and waits for a line on stdin before the next
    one (the wait is not timed): ``bench/rlhf.py`` then alternates our iterations with TRL's."""
    from transformers import TrainerCallback

    class IterTimer(TrainerCallback):
        def __init__(self):
            self.last = None
            self.per_iter: list[float] = []

        def on_train_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.per_iter.append(now - self.last)
            if lockstep:
                print(f"LOCKSTEP {self.per_iter[-1]:.6f}", flush=True)
                if not sys.stdin.readline():
                    raise SystemExit("lockstep: stdin closed")
            self.last = time.perf_counter()

    return IterTimer()


def _quiet(trainer) -> None:
    """Drop the callbacks that print progress or log dicts on stdout (the last stdout line is our JSON)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


def _common_args(cfg_cls, outdir: str, a) -> dict:
    """TrainingArguments fields shared by both trainers: ``--device`` (CPU or one GPU), fp32, no
    save/eval/report."""
    import dataclasses

    # TRL defaults gradient checkpointing to on; transformers 5.x renamed the field to
    # `activation_checkpointing` (the old name is a deprecated alias that warns).
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    ckpt = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return dict(
        {ckpt: False},
        output_dir=outdir,
        seed=a.seed,
        learning_rate=a.lr,
        lr_scheduler_type=a.lr_scheduler,
        use_cpu=a.device == "cpu",
        bf16=False,                   # TRL's configs default bf16=True; ppo_edu's side is fp32 too
        fp16=False,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def _report(kind: str, timer, a) -> None:
    import statistics

    import trl

    kept = timer.per_iter[a.warmup:]
    if not kept:
        raise SystemExit(f"no timed iterations: got {len(timer.per_iter)}, warm-up {a.warmup}")
    rec = {
        "trainer": kind,
        "trl": trl.__version__,
        "sec_per_iter": statistics.median(kept),
        "iters": len(kept),
        "per_iter": [round(t, 4) for t in kept],
        "warmup": [round(t, 4) for t in timer.per_iter[: a.warmup]],
        "threads": a.threads,
        "device": a.device,
        "versions": _versions(),
    }
    sys.stdout.flush()
    print(json.dumps(rec), flush=True)


# --------------------------------------------------------------------------- PPO


def run_ppo(a) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    _threads(a.threads)
    set_seed(a.seed)
    tok, prompts = _load_assets(a.assets)

    policy = AutoModelForCausalLM.from_pretrained(os.path.join(a.assets, "policy"), dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(os.path.join(a.assets, "policy"), dtype=torch.float32)
    rm_path = os.path.join(a.assets, "reward_model")
    reward = AutoModelForSequenceClassification.from_pretrained(rm_path, num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(rm_path, num_labels=1, dtype=torch.float32)

    # PPOTrainer's dataloader draws `batch_size` prompts per rollout with drop_last=True, so
    # the dataset must hold at least one full rollout: repeat the prompt list if needed.
    rows = list(prompts)
    while len(rows) < ROLLOUT_BATCH:
        rows += prompts
    # Tokenise as GRPOTrainer does (the tokenizer's own special-token handling).
    ids = [tok(p)["input_ids"] for p in rows]
    train = Dataset.from_dict({"input_ids": ids})

    n_updates = a.iters + a.warmup
    with tempfile.TemporaryDirectory(prefix="trl_ppo_") as outdir:
        cfg = PPOConfig(
            **_common_args(PPOConfig, outdir, a),
            # One rollout = local_batch_size = per_device_train_batch_size * grad_accum = 64.
            # grad_accum must stay 1: with >1, accelerate only steps the optimizer every
            # grad_accum minibatches, i.e. fewer than 4 optimizer steps per epoch.
            per_device_train_batch_size=ROLLOUT_BATCH,
            gradient_accumulation_steps=1,
            local_rollout_forward_batch_size=ROLLOUT_BATCH,  # generate/score all 64 at once
            num_mini_batches=4,          # 64 / 4 = 16 sequences per optimizer step
            num_ppo_epochs=4,
            total_episodes=n_updates * ROLLOUT_BATCH,
            response_length=RESPONSE_LEN,
            temperature=1.0,             # TRL default is 0.7
            gamma=1.0,
            lam=0.95,
            kl_coef=a.kl_coef,
            kl_estimator="k1",
            cliprange=0.2,
            cliprange_value=0.2,
            vf_coef=0.1,
            whiten_rewards=False,
            missing_eos_penalty=1.0,
            stop_token="eos",            # responses end at <|endoftext|>, as in ppo_edu (missing_eos_penalty applies)
            num_sample_generations=0,    # no debug sample generations
        )
        trainer = PPOTrainer(
            args=cfg,
            processing_class=tok,
            model=policy,
            ref_model=ref,
            reward_model=reward,
            value_model=value,
            train_dataset=train,
        )
        _quiet(trainer)
        timer = _make_timer(a.lockstep)
        trainer.add_callback(timer)
        trainer.train()
        if a.save:
            trainer.save_model(a.save)          # the policy alone (PPOTrainer.save_model), for evaluation
    _report("trl-ppo", timer, a)


# --------------------------------------------------------------------------- GRPO


def run_grpo(a) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import GRPOConfig, GRPOTrainer

    _threads(a.threads)
    set_seed(a.seed)
    tok, prompts = _load_assets(a.assets)
    # The reward model gets its own tokenizer instance (TRL pads its inputs on the right).
    rm_tok = AutoTokenizer.from_pretrained(os.path.join(a.assets, "tokenizer"))

    # Load from the folder, so that TRL's reference model (beta > 0), which it rebuilds
    # from model.config's name_or_path, is the same initial policy.
    policy = AutoModelForCausalLM.from_pretrained(os.path.join(a.assets, "policy"), dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(
        os.path.join(a.assets, "reward_model"), num_labels=1, dtype=torch.float32
    )
    train = Dataset.from_dict({"prompt": list(prompts)})

    with tempfile.TemporaryDirectory(prefix="trl_grpo_") as outdir:
        cfg = GRPOConfig(
            **_common_args(GRPOConfig, outdir, a),
            # per_device_train_batch_size counts completions: 64 = 16 prompts x 4.
            # steps_per_generation defaults to grad_accum = 1: one generation per step.
            per_device_train_batch_size=ROLLOUT_BATCH,
            gradient_accumulation_steps=1,
            num_generations=GRPO_GROUP,
            max_completion_length=RESPONSE_LEN,
            max_steps=a.iters + a.warmup,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=0.04,                   # TRL default is 0.0 (no reference model)
            num_iterations=1,
            epsilon=0.2,
            disable_dropout=True,
            log_completions=False,
        )
        trainer = GRPOTrainer(
            model=policy,
            reward_funcs=reward,
            args=cfg,
            train_dataset=train,
            processing_class=tok,
            reward_processing_classes=rm_tok,
        )
        _quiet(trainer)
        timer = _make_timer(a.lockstep)
        trainer.add_callback(timer)
        trainer.train()
    _report("trl-grpo", timer, a)


# --------------------------------------------------------------------------- stand-in assets

_SUBJECTS = ["The movie", "This film", "The plot", "The acting", "The soundtrack", "The ending",
             "The director", "The script", "The cast", "This show", "The sequel", "The story"]
_VERBS = ["was", "is", "felt", "seemed", "turned out", "looked"]
_ADJS = ["great", "terrible", "boring", "wonderful", "awful", "brilliant", "dull", "fun", "moving",
         "predictable", "charming", "slow", "beautiful", "confusing", "fantastic", "weak"]
_TAILS = ["and I loved it.", "and I hated it.", "from start to finish.", "in every scene.",
          "but the pacing dragged.", "and the music helped.", "so I left early.",
          "and I would watch it again.", "despite a strong cast.", "for a family night."]


def make_standin(a) -> None:
    """Random-initialised assets with the layout our library produces (testing only)."""
    import random

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast

    _threads(a.threads)
    rng = random.Random(a.seed)
    torch.manual_seed(a.seed)
    out = a.dir
    os.makedirs(out, exist_ok=True)

    # Review-like sentences plus made-up names, so that BPE has enough material for ~1000 tokens.
    syll = ["ka", "lo", "mi", "ter", "von", "ra", "shi", "bel", "dor", "quen", "fa", "zu", "rin", "gal", "tho"]
    names = sorted({"".join(rng.choice(syll) for _ in range(rng.randint(2, 4))).capitalize() for _ in range(400)})
    corpus = [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_ADJS)} {rng.choice(_TAILS)}"
              f" {rng.choice(names)} and {rng.choice(names)} starred, {rng.randint(1, 10)}/10."
              for _ in range(800)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=1000, special_tokens=[EOS, PAD],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=PAD, bos_token=EOS,
                                  padding_side="left")
    tok.save_pretrained(os.path.join(out, "tokenizer"))

    cfg = dict(vocab_size=len(tok), n_layer=2, n_head=4, n_embd=128, n_positions=128,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(GPT2Config(**cfg)).save_pretrained(os.path.join(out, "policy"))
    GPT2ForSequenceClassification(GPT2Config(**cfg, num_labels=1)).save_pretrained(os.path.join(out, "reward_model"))

    prompts = sorted({f"{s} {v}" for s in _SUBJECTS for v in _VERBS})
    with open(os.path.join(out, "prompts.json"), "w") as fh:
        json.dump(prompts, fh, indent=0)
    print(json.dumps({"standin": out, "vocab": len(tok), "prompts": len(prompts)}))


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("ppo", "grpo"):
        s = sub.add_parser(name, help=f"time TRL's {name.upper()} trainer")
        s.add_argument("--assets", required=True, help="asset directory (tokenizer/, policy/, reward_model/, prompts.json)")
        s.add_argument("--iters", type=int, default=5, help="timed iterations (after warm-up)")
        s.add_argument("--warmup", type=int, default=1, help="untimed leading iterations")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (does not affect timing)")
        s.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
        s.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: one GPU (bench/rlhf.py --device)")
        s.add_argument("--lockstep", action="store_true",
                       help="after each iteration print LOCKSTEP <seconds> and wait for a line on stdin")
        s.add_argument("--lr-scheduler", choices=("linear", "constant"), default="linear",
                       help="linear: TRL's default (decays to 0 over the run); constant: ppo_edu's")
        if name == "ppo":
            s.add_argument("--kl-coef", type=float, default=0.05, help="TRL's fixed KL penalty coefficient")
            s.add_argument("--save", default=None, help="save the trained policy here (save_pretrained layout)")
    s = sub.add_parser("make-standin", help="write random-initialised stand-in assets (for testing this script)")
    s.add_argument("dir")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if getattr(a, "device", "cpu") == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # before torch is imported (the run_* functions do)
    if a.cmd != "make-standin" and (a.iters < 1 or a.warmup < 0):
        p.error("--iters must be >= 1 and --warmup >= 0")
    {"ppo": run_ppo, "grpo": run_grpo, "make-standin": make_standin}[a.cmd](a)


if __name__ == "__main__":
    main()
