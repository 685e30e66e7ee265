"""`python -m gptjax.train --config configs/X.py [--config.a.b=v ...] [--workdir DIR]
[--coordinator_address HOST:PORT --num_processes N --process_id I] [--distributed_timeout S]`.

A thin entry point: parse the config, join the multi-process run if there is one (one process
per host; see gptjax/distributed.py), then hand the config to the stage loop `config.stage` names.
"""

from __future__ import annotations

import importlib
import sys

from gptjax import distributed, runtime
from gptjax.cli import check_output_dir, exit_on_user_error, train_args_from_argv
from gptjax.errors import GptjaxError

# Each stage's `run(config, workdir)`, imported only when it runs.
STAGE_MODULES = {
    "prepare": "gptjax.loops.prepare",
    "pretrain": "gptjax.loops.pretrain",
    "sft": "gptjax.loops.sft",
    "reward": "gptjax.loops.reward",
    "ppo": "gptjax.loops.ppo",
    "eval": "gptjax.loops.eval",
    "grpo": "gptjax.loops.grpo",
    "dpo": "gptjax.loops.dpo",
    "pipeline": "gptjax.pipeline",  # the stages above in a row (configs/chatgpt_tiny.py)
}

USAGE = ("usage: python -m gptjax.train --config configs/X.py [--config.a.b=v ...] "
         "[--workdir DIR] [--coordinator_address HOST:PORT --num_processes N --process_id I] "
         "[--distributed_timeout SECONDS]")


def run(config, workdir: str, dist: distributed.Options | None = None):
    """Run the stage the config names (callable from a notebook). `dist`: how to join a
    multi-process run; None reads GPTJAX_* variables and detects SLURM / TPU pod launches."""
    if config.stage == "pipeline":  # a chain of stages, each checked and dispatched as below
        return importlib.import_module(STAGE_MODULES["pipeline"]).run(config, workdir, dist)
    check_stage(config, workdir)
    if config.stage == "prepare":  # no devices: a data stage
        if distributed.is_multiprocess(dist):
            raise GptjaxError("stage 'prepare' runs as one process: start it once, without the "
                              "multi-process launcher or coordinator flags")
    elif config.stage == "eval":  # one process, one device: nothing is trained
        if distributed.is_multiprocess(dist):
            raise GptjaxError("stage 'eval' runs as one process: start it once, without the "
                              "multi-process launcher or coordinator flags")
        runtime.configure_cpu_devices(config.runtime.cpu_devices, config.eval.batch_size)
    else:
        # Both before any JAX backend starts: XLA's host device count (per process) and the
        # distributed runtime, which the backends need to see every process's devices.
        rows = (config.ppo.batch_prompts if config.stage == "ppo"  # what the data axis splits
                else config.grpo.batch_prompts if config.stage == "grpo"
                else config.train.batch_size // max(config.train.grad_accum, 1))
        runtime.configure_cpu_devices(config.runtime.cpu_devices, rows)
        distributed.initialize(dist)
    return dispatch(config, workdir)


def check_stage(config, workdir: str) -> None:
    """The checks a stage gets before it touches any device, data or workdir."""
    from gptjax import config as config_lib, workdir as workdir_lib
    # (Fine-tuning stages take the model shape from init_from, so theirs is checked once it is
    # loaded.)
    config_lib.validate(config, shape=config.stage in ("prepare", "pretrain"))
    check_output_dir(workdir, "--workdir")
    workdir_lib.check_stage(workdir, config.stage)
    if config.stage == "pretrain":  # (a fine-tuning stage's shape is init_from's: checked there)
        workdir_lib.check_same_model(workdir, config.model.to_dict())


def dispatch(config, workdir: str):
    """The stage module's `run(config, workdir)`, in a process whose devices are set up."""
    # (validate accepted config.stage: it is one of config.STAGES, each a module here)
    return importlib.import_module(STAGE_MODULES[config.stage]).run(config, workdir)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    config, workdir, dist = train_args_from_argv(sys.argv[1:] if argv is None else argv, USAGE)
    result = run(config, workdir, dist)
    if result is not None and result.interrupted_by is not None:
        return 128 + result.interrupted_by
    return 0


if __name__ == "__main__":
    sys.exit(main())
