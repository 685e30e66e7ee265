"""Shared command-line plumbing: config parsing and turning user errors into one clear message."""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from typing import Any, NoReturn

from absl import flags
from ml_collections import config_flags

from gptjax.distributed import Options
from gptjax.errors import GptjaxError

# OSErrors of the machine rather than of gptjax: a full disk, a read-only or forbidden folder,
# a failing device. They are reported in one line like bad input.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                      errno.EIO}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (a missing or malformed flag) raise one-line GptjaxErrors instead of
    printing the usage block and exiting: `exit_on_user_error` reports them like the others."""

    def error(self, message: str) -> NoReturn:
        raise GptjaxError(f"{message} (`{self.prog} --help` lists the flags)")


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


def _config_path(argv: list[str]) -> str | None:
    """The value of --config (`--config F` or `--config=F`), or None."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _parse(argv: list[str], usage: str, distributed: bool) -> flags.FlagValues:
    if "--help" in argv or "-h" in argv:
        print(usage)
        raise SystemExit(0)
    path = _config_path(argv)
    if path is not None:  # ml_collections would defer this error to the first use of the config
        file = path if os.path.exists(path) else path.rsplit(":", 1)[0]  # (FILE:ARG form)
        if not os.path.isfile(file):
            what = "is a directory" if os.path.isdir(file) else "does not exist"
            raise GptjaxError(f"--config {path}: the config file {what} (working directory "
                              f"{os.getcwd()}); pass a file such as configs/tiny.py")
    fv = flags.FlagValues()
    argv = ["gptjax"] + list(argv)
    # (sys_argv: the --config.a.b overrides are found in these arguments, not sys.argv, so
    # main(argv) works when called from Python too)
    config_flags.DEFINE_config_file("config", None, "ml_collections config file",
                                    flag_values=fv, lock_config=True, sys_argv=argv)
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
        fv(argv)
        if fv.config is not None:
            fv.config.get("stage")  # raises here if the config file failed to load or run
    except flags.Error as e:
        raise GptjaxError(f"{_one_line(e)}. {usage}") from None
    except (AttributeError, KeyError) as e:
        msg = str(e).strip("'\"").replace("\\n", " ").replace("'", "")
        raise GptjaxError(f"unknown config key: {_one_line(msg)}. Every key must exist in the "
                          "base config (gptjax/config.py); check the spelling.") from None
    except Exception as e:  # the config file itself failed to load or run
        raise GptjaxError(f"could not load the config {path}: {type(e).__name__}: "
                          f"{_one_line(e)}") from None
    if fv.config is None:
        raise GptjaxError(f"--config is required. {usage}")
    return fv


def _one_line(e: Any, limit: int | None = 500) -> str:
    return " ".join(str(e).split())[:limit]


def _workdir(fv: flags.FlagValues) -> str:
    workdir = fv.workdir
    if not workdir:
        name = os.path.splitext(os.path.basename(fv["config"].config_filename))[0]
        workdir = os.path.join("runs", name)
    check_output_dir(workdir, "--workdir")
    return workdir


def check_output_dir(path: str, flag: str) -> None:
    """A folder a command writes into: absent (it is created) or a directory, never a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise GptjaxError(f"{flag} {path} is a file, not a directory; pass a folder (a new one "
                          "is created)")


def check_sampling_flags(temperature: float, top_k: int, top_p: float) -> None:
    """The decoding flags of sample and chat, checked before a model is loaded."""
    if not temperature >= 0:
        raise GptjaxError(f"--temperature {temperature} must be >= 0 (0 = greedy)")
    if top_k < 0:
        raise GptjaxError(f"--top_k {top_k} must be >= 0 (0 = off)")
    if not 0.0 < top_p <= 1.0:
        raise GptjaxError(f"--top_p {top_p} must lie in (0, 1] (1 = off)")


def exit_on_user_error(main):
    """Print a GptjaxError (or an OSError of the machine: a full disk, no permission) as one
    line on stderr and return exit code 2 (130 on Ctrl-C)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except GptjaxError as e:
            print(f"gptjax: error: {_one_line(e, None)}", file=sys.stderr, flush=True)
            return 2
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                raise
            print(f"gptjax: error: {_one_line(e)}. Free space (or fix the permissions), then rerun "
                  "the same command: a training run resumes from its newest checkpoint.",
                  file=sys.stderr, flush=True)
            return 2
        except KeyboardInterrupt:
            print("gptjax: interrupted", file=sys.stderr, flush=True)
            return 130
    return wrapper
