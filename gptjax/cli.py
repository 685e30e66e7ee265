"""Shared command-line plumbing: config parsing and turning user errors into one clear message."""

from __future__ import annotations

import functools
import os
import sys

from absl import flags
from ml_collections import config_flags

from gptjax.errors import GptjaxError


def config_from_argv(argv: list[str], usage: str):
    """Parse `--config FILE [--config.a.b=v ...] [--workdir DIR]` -> (locked config, workdir).

    Unknown keys, in the config file or in an override, are errors (the config is locked).
    """
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "ml_collections config file",
                                    flag_values=fv, lock_config=True)
    flags.DEFINE_string("workdir", None, "output directory (default runs/<config name>)",
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
    workdir = fv.workdir
    if not workdir:
        name = os.path.splitext(os.path.basename(fv["config"].config_filename))[0]
        workdir = os.path.join("runs", name)
    return fv.config, workdir


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
