"""Shared command-line plumbing: config parsing and turning user errors into one clear message."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

from absl import flags
from ml_collections import config_flags

from gptjax.distributed import Options
from gptjax.errors import GptjaxError


def config_from_argv(argv: list[str], usage: str):
    """Parse `--config FILE [--config.a.b=v ...] [--workdir DIR]` -> (locked config, workdir).

    Unknown keys, in the config file or in an override, are errors (the config is locked).
    """
    fv = _parse(argv, usage, distributed=False)
    return fv.config, _workdir(fv)


def train_args_from_argv(argv: list[str], usage: str) -> tuple[Any, str, Options]:
    """`config_from_argv` plus the multi-process flags `--coordinator_address HOST:PORT
    --num_processes N --process_id I --distributed_timeout S` -> (config, workdir, Options)."""
    fv = _parse(argv, usage, distributed=True)
    opts = Options(coordinator_address=fv.coordinator_address, num_processes=fv.num_processes,
                   process_id=fv.process_id, timeout_s=fv.distributed_timeout)
    return fv.config, _workdir(fv), opts


def _parse(argv: list[str], usage: str, distributed: bool) -> flags.FlagValues:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "ml_collections config file",
                                    flag_values=fv, lock_config=True)
    flags.DEFINE_string("workdir", None, "output directory (default runs/<config name>)",
                        flag_values=fv)
    if distributed:
        # Defaults None: GPTJAX_* environment variables or cluster auto-detection decide.
        flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-process)",
                            flag_values=fv)
        flags.DEFINE_integer("num_processes", None, "processes in the run", flag_values=fv)
        flags.DEFINE_integer("process_id", None, "this process's index, 0..N-1", flag_values=fv)
        flags.DEFINE_integer("distributed_timeout", None,
                             "seconds to wait for the other processes (default 60)",
                             flag_values=fv)
    try:
        fv(["gptjax"] + list(argv))
    except flags.Error as e:
        raise GptjaxError(f"{e}\n{usage}") from None
    except (AttributeError, KeyError) as e:
        msg = str(e).strip("'\"").replace("\\n", " ").replace("'", "")
        raise GptjaxError(f"unknown config key: {msg}. Every key must exist in the base config "
                          "(gptjax/config.py); check the spelling.") from None
    except Exception as e:  # the config file itself failed to load or run
        raise GptjaxError(f"could not load the config: {type(e).__name__}: {e}\n{usage}") from None
    if fv.config is None:
        raise GptjaxError(f"--config is required\n{usage}")
    return fv


def _workdir(fv: flags.FlagValues) -> str:
    if fv.workdir:
        return fv.workdir
    name = os.path.splitext(os.path.basename(fv["config"].config_filename))[0]
    return os.path.join("runs", name)


def exit_on_user_error(main):
    """Print a GptjaxError as one line on stderr and return exit code 2 (130 on Ctrl-C)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except GptjaxError as e:
            print(f"gptjax: error: {e}", file=sys.stderr, flush=True)
            return 2
        except KeyboardInterrupt:
            print("gptjax: interrupted", file=sys.stderr, flush=True)
            return 130
    return wrapper
