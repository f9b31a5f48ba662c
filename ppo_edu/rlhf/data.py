"""Offline text for RLHF (Chapter 8): a seeded corpus of short movie reviews, and its tokenizer.

Nothing is downloaded. Each review has a hidden sentiment ``s`` drawn uniformly from [-1, 1];
every opinion word in it is positive with probability ``(1 + s) / 2`` (else negative), and a
quarter of the slots take a neutral word instead, so the corpus holds glowing, scathing, mixed
and flat reviews. The opinion words are in VADER's lexicon, so the gold scorer of Chapter 9 can
read them. Prompts are review openings ("The movie was"), the same openings the corpus uses.

The tokenizer is a byte-level BPE trained with the ``tokenizers`` library and wrapped as a
``transformers`` fast tokenizer, with ``<|endoftext|>`` (end of a review) and ``<|pad|>`` kept
apart and left padding for generation. It is saved with ``save_pretrained`` and reloaded with
``AutoTokenizer.from_pretrained(path)``: the same call that loads ``"gpt2"`` for a user who has it.
"""
from __future__ import annotations

import random
from pathlib import Path

__all__ = ["OPENINGS", "EOS", "PAD", "generate_reviews", "review_prompts", "train_tokenizer", "load_tokenizer",
           "check_tokenizer"]

EOS, PAD = "<|endoftext|>", "<|pad|>"

OPENINGS = (
    "The movie was", "This film is", "I thought the film was", "The acting was", "The story is",
    "Honestly, the plot was", "The ending was", "The music is", "Overall, this movie was",
    "My friends said it was", "The cast was", "The script is", "I found the film", "The director's work was",
    "This sequel is", "The first half was",
)
_WORDS = {
    "adj": {
        +1: "great wonderful excellent amazing good beautiful brilliant fun enjoyable lovely perfect superb "
            "charming delightful clever funny".split(),
        -1: "bad terrible awful boring dull horrible poor weak ugly stupid disappointing painful annoying "
            "silly pointless".split(),
        0: "long slow quiet simple loud predictable short familiar typical old-fashioned".split(),
    },
    "verb": {+1: "loved enjoyed liked adored".split(), -1: "hated disliked".split(), 0: "watched saw".split()},
    "coda": {
        +1: ["Highly recommended!", "A must see.", "I would watch it again.", "Ten out of ten."],
        -1: ["Avoid it.", "What a waste of time.", "I want my money back.", "Never again."],
        0: ["It came out last year.", "I saw it on a Sunday.", "It runs two hours.", "We went as a group."],
    },
}
_SUBJECTS = ["acting", "plot", "story", "music", "ending", "cast", "script", "dialogue", "camera work", "pacing"]
_ADVERBS = ["", "", "", "very ", "really ", "quite ", "so "]


def _polarity(rng: random.Random, s: float) -> int:
    if rng.random() < 0.25:
        return 0
    return +1 if rng.random() < (1.0 + s) / 2.0 else -1


def _word(rng: random.Random, kind: str, s: float) -> str:
    return rng.choice(_WORDS[kind][_polarity(rng, s)])


def _review(rng: random.Random) -> str:
    s = rng.uniform(-1.0, 1.0)
    first = f"{rng.choice(OPENINGS)} {rng.choice(_ADVERBS)}{_word(rng, 'adj', s)}"
    if rng.random() < 0.4:
        first += f" and {_word(rng, 'adj', s)}"
    parts = [first + "."]
    for _ in range(rng.choice([0, 1, 1, 2])):
        kind = rng.random()
        if kind < 0.45:
            parts.append(f"The {rng.choice(_SUBJECTS)} was {_word(rng, 'adj', s)}.")
        elif kind < 0.7:
            parts.append(f"I {_word(rng, 'verb', s)} it.")
        elif kind < 0.85:
            parts.append(f"It was a {_word(rng, 'adj', s)} {rng.choice(['film', 'movie', 'story', 'evening'])}.")
        else:
            parts.append(_word(rng, "coda", s))
    return " ".join(parts)


def generate_reviews(n: int, seed: int = 0) -> list[str]:
    """``n`` short reviews, the same for the same ``seed``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    rng = random.Random(seed)
    return [_review(rng) for _ in range(n)]


def review_prompts() -> list[str]:
    """The review openings used as RLHF prompts."""
    return list(OPENINGS)


def train_tokenizer(texts: list[str], vocab_size: int = 1024):
    """A byte-level BPE trained on ``texts``, as a ``transformers`` fast tokenizer (left padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=PAD, padding_side="left", model_max_length=1024)


def load_tokenizer(path: str | Path):
    """``AutoTokenizer.from_pretrained(path)``, checked for a pad token distinct from end-of-text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    check_tokenizer(tok)
    tok.padding_side = "left"
    return tok


def check_tokenizer(tok) -> None:
    """Raise ``ValueError`` unless ``tok`` has a pad token and an end-of-text token that differ."""
    if tok.pad_token_id is None:
        raise ValueError("tokenizer.pad_token is None; RLHF batches need a pad token "
                         "(for GPT-2 add one: tok.add_special_tokens({'pad_token': '<|pad|>'}) and resize the model)")
    if tok.eos_token_id is None:
        raise ValueError("tokenizer.eos_token is None; an end-of-text token is needed to end samples")
    if tok.pad_token_id == tok.eos_token_id:
        raise ValueError(f"tokenizer.pad_token == eos_token ({tok.pad_token!r}); they must differ, or padding "
                         "would be read as the end of a sample")
