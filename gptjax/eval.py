"""`python -m gptjax.eval --config configs/eval_X.py [--config.eval.a=DIR ...] [--workdir OUT]`.

A thin entry point for stage `eval` (gptjax/loops/eval.py): whatever `stage` the config file
names, the tasks switched on in its `eval` section run, and OUT receives eval.json, eval.md
and answers.jsonl. The same runs as `python -m gptjax.train` with `stage = "eval"`.
"""

from __future__ import annotations

import sys

from gptjax import runtime
from gptjax.cli import config_from_argv, exit_on_user_error

USAGE = ("usage: python -m gptjax.eval --config configs/eval_X.py [--config.eval.a=DIR "
         "--config.eval.b=DIR --config.eval.judge=DIR ...] [--workdir OUT]")


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    config, workdir = config_from_argv(sys.argv[1:] if argv is None else argv, USAGE)
    config.stage = "eval"
    runtime.configure_cpu_devices(config.runtime.cpu_devices, config.eval.batch_size)
    from gptjax.loops import eval as eval_loop  # after the device count is set
    eval_loop.run(config, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
