"""`python -m gptjax.train --config configs/X.py [--config.a.b=v ...] [--workdir DIR]`.

A thin entry point: parse the config, then hand it to the stage loop that `config.stage` names.
"""

from __future__ import annotations

import sys

from gptjax import runtime
from gptjax.cli import config_from_argv, exit_on_user_error

USAGE = ("usage: python -m gptjax.train --config configs/X.py [--config.a.b=v ...] "
         "[--workdir DIR]")


def run(config, workdir: str):
    """Run the stage the config names (callable from a notebook)."""
    if config.stage == "prepare":  # no devices: a data stage
        from gptjax.loops import prepare
        return prepare.run(config, workdir)
    runtime.configure_cpu_devices(config.runtime.cpu_devices,
                                  config.train.batch_size // max(config.train.grad_accum, 1))
    if config.stage == "pretrain":
        from gptjax.loops import pretrain
        return pretrain.run(config, workdir)
    if config.stage == "sft":
        from gptjax.loops import sft
        return sft.run(config, workdir)
    if config.stage == "reward":
        from gptjax.loops import reward
        return reward.run(config, workdir)
    from gptjax.config import validate
    validate(config)  # raises for an unknown stage


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    config, workdir = config_from_argv(sys.argv[1:] if argv is None else argv, USAGE)
    result = run(config, workdir)
    if result is not None and result.interrupted_by is not None:
        return 128 + result.interrupted_by
    return 0


if __name__ == "__main__":
    sys.exit(main())
