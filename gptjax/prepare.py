"""`python -m gptjax.prepare --config configs/prepare_X.py [--config.a.b=v ...] [--workdir DIR]`.

An alias of `python -m gptjax.train` for the `prepare` stage: the same flags, and the config's
stage must be `prepare`.
"""

from __future__ import annotations

import sys

from gptjax.cli import config_from_argv, exit_on_user_error
from gptjax.errors import GptjaxError

USAGE = ("usage: python -m gptjax.prepare --config configs/prepare_X.py [--config.a.b=v ...] "
         "[--workdir DIR]")


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    config, workdir = config_from_argv(sys.argv[1:] if argv is None else argv, USAGE)
    if config.stage != "prepare":
        raise GptjaxError(f"this config's stage is {config.stage!r}, not 'prepare'; run it with "
                          "python -m gptjax.train")
    from gptjax import config as config_lib, workdir as workdir_lib
    config_lib.validate(config)
    workdir_lib.check_stage(workdir, config.stage)
    from gptjax.loops import prepare
    prepare.run(config, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
