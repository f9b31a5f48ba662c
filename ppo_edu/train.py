"""Entry point for data-parallel training under torchrun (Chapter 12)::

    torchrun --standalone --nproc_per_node=2 -m ppo_edu.train CartPole-v1 --timesteps 100000

It takes the same options as ``ppo-edu train`` (which launches this for ``--nproc K``). Every
rank trains; rank 0 alone prints, evaluates and writes the run folder. A rank that fails
prints which rank failed and why, and exits non-zero; torchrun then stops the other ranks.
The last checkpoint (``--save-every``) was written atomically and stays readable.
"""
from __future__ import annotations

import sys

from . import distributed
from .cli import build_parser, train


def run(argv: list[str] | None = None, extra_callback=None) -> int:
    d = distributed.init()
    args = build_parser().parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    try:
        code = train(args, extra_callback=extra_callback)
    except BaseException as err:
        print(f"ppo_edu.train: rank {d.rank} of {d.world_size} failed: {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
        return 1
    distributed.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(run())
