"""`python -m gptjax.train --config configs/X.py [--config.a.b=v ...] [--workdir DIR]
[--coordinator_address HOST:PORT --num_processes N --process_id I] [--distributed_timeout S]`.

A thin entry point: parse the config, join the multi-process run if there is one (one process
per host; see gptjax/distributed.py), then hand the config to the stage loop `config.stage` names.
"""

from __future__ import annotations

import sys

from gptjax import distributed, runtime
from gptjax.cli import exit_on_user_error, train_args_from_argv
from gptjax.errors import GptjaxError

USAGE = ("usage: python -m gptjax.train --config configs/X.py [--config.a.b=v ...] "
         "[--workdir DIR] [--coordinator_address HOST:PORT --num_processes N --process_id I] "
         "[--distributed_timeout SECONDS]")


def run(config, workdir: str, dist: distributed.Options | None = None):
    """Run the stage the config names (callable from a notebook). `dist`: how to join a
    multi-process run; None reads GPTJAX_* variables and detects SLURM / TPU pod launches."""
    if config.stage == "prepare":  # no devices: a data stage
        if distributed.is_multiprocess(dist):
            raise GptjaxError("stage 'prepare' runs as one process: start it once, without the "
                              "multi-process launcher or coordinator flags")
        from gptjax.loops import prepare
        return prepare.run(config, workdir)
    # Both before any JAX backend starts: XLA's host device count (per process) and the
    # distributed runtime, which the backends need to see every process's devices.
    rows = (config.ppo.batch_prompts if config.stage == "ppo"  # what the data axis splits
            else config.train.batch_size // max(config.train.grad_accum, 1))
    runtime.configure_cpu_devices(config.runtime.cpu_devices, rows)
    distributed.initialize(dist)
    if config.stage == "pretrain":
        from gptjax.loops import pretrain
        return pretrain.run(config, workdir)
    if config.stage == "sft":
        from gptjax.loops import sft
        return sft.run(config, workdir)
    if config.stage == "reward":
        from gptjax.loops import reward
        return reward.run(config, workdir)
    if config.stage == "ppo":
        from gptjax.loops import ppo
        return ppo.run(config, workdir)
    if config.stage == "dpo":
        from gptjax.loops import dpo
        return dpo.run(config, workdir)
    from gptjax.config import validate
    validate(config)  # raises for an unknown stage


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    config, workdir, dist = train_args_from_argv(sys.argv[1:] if argv is None else argv, USAGE)
    result = run(config, workdir, dist)
    if result is not None and result.interrupted_by is not None:
        return 128 + result.interrupted_by
    return 0


if __name__ == "__main__":
    sys.exit(main())
