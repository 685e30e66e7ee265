"""Stage `pipeline`: the whole recipe as one command, each stage in a subfolder of the workdir.

    python -m gptjax.train --config configs/chatgpt_tiny.py --workdir runs/chatgpt

A pipeline config (`pipeline_config()`) names its stages in `order`; `stages.<name>` is that
stage's own config (a configs/ file's `get_config()` or `base_config()` with its `stage`),
changed by plain overrides, e.g. `--config.stages.sft.train.steps=300`. A string value
"@name" in a stage's config means the folder of the earlier stage `name` of this pipeline
(`init_from="@pretrain"`, `ppo.reward_from="@reward"`); a comma-separated list of them is a
list of folders. Nothing else is special.

`run(config, workdir)` runs the stages in order, each by `gptjax.train.run_stage` in
`<workdir>/<name>/`, in this one process (devices and the distributed runtime set up once):
- a stage whose folder holds a finished marker (`pipeline_stage.json`) for the same config is
  skipped, so an interrupted pipeline resumes at the stage it stopped in, and that stage
  resumes from its own newest checkpoint;
- a stage whose config differs from the one its folder was made with is redone, and every
  stage after it: their folders move to `<workdir>/superseded/`, said in one line;
- a workdir made by a pipeline of another `name` or `order` is refused, naming the keys,
  before anything is written;
- afterwards `report.md` and `report.html` are written from the stages' files
  (gptjax/report/).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

import ml_collections

from gptjax import config as config_lib
from gptjax import distributed, runtime
from gptjax import workdir as workdir_lib
from gptjax.cli import ENVIRONMENT_ERRNOS, check_output_dir
from gptjax.errors import GptjaxError

REF = "@"  # "@name": the folder of stage `name` of this pipeline
# Settings that change how a stage reports, not what it computes: changing them redoes nothing.
NOT_RESULTS = ("train.progress", "train.progress_label", "train.resume",
               "train.async_checkpoint")
MARKER = workdir_lib.PIPELINE_STAGE_FILE


def pipeline_config() -> ml_collections.ConfigDict:
    """The pipeline section every pipeline config file starts from (stages added unlocked)."""
    c = ml_collections.ConfigDict()
    c.stage = "pipeline"
    c.name = ""  # what pipeline this is: a workdir made by one of another name is refused
    c.order = ()  # the stages, run in this order; each a key of `stages`
    c.stages = ml_collections.ConfigDict()  # name -> that stage's own config
    # The process's CPU devices for every stage (runtime.cpu_devices of a stage config has no
    # effect inside a pipeline: XLA fixes the device count when it starts).
    c.runtime = ml_collections.ConfigDict(dict(cpu_devices=0))
    # JAX's persistent compilation cache, a folder (relative to the workdir, or absolute; "" =
    # off): the judge reuses the reward model's compiled steps, the second eval the first's, and
    # a rerun (a resumed or redone stage) every compiled step of the run before it.
    c.compile_cache = "compile_cache"
    c.report = ml_collections.ConfigDict(dict(
        enabled=True,
        answers=4,  # held-out prompts in the side-by-side table of answers
    ))
    return c


def config_file(path: str) -> ml_collections.ConfigDict:
    """The `get_config()` of a config file (as the CLI loads it), for a stage of a pipeline."""
    spec = importlib.util.spec_from_file_location(
        "gptjax_config_" + os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# -- the config -----------------------------------------------------------------------------

def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def refs(value: Any) -> list[str] | None:
    """The stage names a "@a" / "@a,@b" value names, or None for any other value."""
    if not isinstance(value, str) or not value.startswith(REF):
        return None
    parts = [p.strip() for p in value.split(",")]
    if not all(p.startswith(REF) and len(p) > 1 for p in parts):
        return None
    return [p[1:] for p in parts]


def validate(config: ml_collections.ConfigDict) -> None:
    """The pipeline's checks that need no workdir: its order, its stages' kinds and references,
    and each stage config's own checks."""
    order = tuple(config.order)
    if not order:
        raise GptjaxError("pipeline.order is empty: name the stages to run, e.g. "
                          "--config.order=\"('prepare','pretrain','sft')\"")
    if len(set(order)) != len(order):
        raise GptjaxError(f"order={order} names a stage twice")
    kinds = [s for s in config_lib.STAGES if s != "pipeline"]
    for i, name in enumerate(order):
        if name not in config.stages:
            raise GptjaxError(f"order names stage {name!r}, which has no config: add "
                              f"stages.{name} or remove it from order (stages: "
                              f"{sorted(config.stages)})")
        if name in ("superseded",) or os.sep in name or name.startswith("."):
            raise GptjaxError(f"{name!r} cannot name a stage (it is a folder of the workdir)")
        stage_cfg = config.stages[name]
        if stage_cfg.stage not in kinds:
            raise GptjaxError(f"stages.{name}.stage={stage_cfg.stage!r}: a pipeline stage is "
                              f"one of {kinds}")
        for key, value in _leaves(stage_cfg.to_dict()).items():
            for ref in refs(value) or ():
                if ref not in order[:i]:
                    raise GptjaxError(
                        f"stages.{name}.{key}={value!r}: {ref!r} is not a stage before "
                        f"{name!r} in order {order}")
        resolved = resolve(stage_cfg, "")
        config_lib.validate(resolved, shape=stage_cfg.stage in ("prepare", "pretrain"))


def resolve(stage_cfg: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """A copy of a stage config with every "@name" value replaced by <workdir>/<name>."""
    out = copy.deepcopy(stage_cfg)

    def walk(node: ml_collections.ConfigDict) -> None:
        for key in list(node.keys()):
            value = node[key]
            if isinstance(value, ml_collections.ConfigDict):
                walk(value)
            elif refs(value) is not None:
                node[key] = ",".join(os.path.join(workdir, r) for r in refs(value))
    walk(out)
    return out


def section(config: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
    """The stage's config as JSON values, without the keys that do not change its results."""
    values = json.loads(config_lib.to_json(config.stages[name]))
    return {k: v for k, v in _leaves(values).items() if k not in NOT_RESULTS}


def _differences(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k, "(none)") != new.get(k, "(none)"))
    shown = [f"{k}: {old.get(k, '(none)')!r} -> {new.get(k, '(none)')!r}" for k in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# -- the workdir ----------------------------------------------------------------------------

def check_same_pipeline(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuse a workdir holding another pipeline (or another stage's run), writing nothing."""
    saved = workdir_lib.read_json(workdir, workdir_lib.CONFIG_FILE)
    if saved is None:
        return
    if saved.get("stage") != "pipeline":
        raise GptjaxError(f"--workdir {workdir} holds a {saved.get('stage', 'pretrain')!r} run "
                          "(its config.json), not a pipeline; give the pipeline a workdir of "
                          "its own")
    differ = [f"{k} {saved.get(k)!r} there, {v!r} here" for k, v in
              (("name", config.name), ("order", list(config.order)))
              if _as_list(saved.get(k)) != _as_list(v)]
    if differ:
        raise GptjaxError(
            f"--workdir {workdir} holds another pipeline (its config.json): "
            + "; ".join(differ) + ". Nothing was changed: use a new --workdir, or rerun the "
            "pipeline that made it.")


def _as_list(x: Any) -> Any:
    return list(x) if isinstance(x, (list, tuple)) else x


def _probe_writable(workdir: str) -> None:
    """Create the workdir and write a file in it, so a read-only or full disk is one line
    before any stage starts."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-probe-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("gptjax\n")
        os.remove(probe)
    except OSError as e:
        raise GptjaxError(
            f"cannot write into --workdir {workdir}: {e.strerror or e} ({type(e).__name__}). "
            "Free space on that disk or make it writable, then rerun the same command: finished "
            "stages are kept and an interrupted one resumes from its newest checkpoint."
        ) from None


def _marker(folder: str) -> dict[str, Any] | None:
    return workdir_lib.read_json(folder, MARKER)


def _redo_from(config: ml_collections.ConfigDict, workdir: str) -> tuple[int, str] | None:
    """(index of the first stage whose folder was made with another config, the difference),
    or None when every existing folder matches its stage's config."""
    for i, name in enumerate(config.order):
        folder = os.path.join(workdir, name)
        if not os.path.isdir(folder):
            continue
        mark = _marker(folder)
        if mark is None:
            return i, "its folder was not made by this pipeline"
        if mark.get("config") != section(config, name):
            return i, _differences(mark.get("config") or {}, section(config, name))
    return None


def _supersede(config: ml_collections.ConfigDict, workdir: str, start: int, why: str) -> None:
    """Move the folders of stages start.. aside (to <workdir>/superseded/<name>), in one line."""
    order = list(config.order)
    moved = [n for n in order[start:] if os.path.isdir(os.path.join(workdir, n))]
    aside = os.path.join(workdir, "superseded")
    os.makedirs(aside, exist_ok=True)
    for name in moved:
        target = os.path.join(aside, name)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(os.path.join(workdir, name), target)
    later = order[start + 1:]
    print(f"gptjax pipeline: stage {order[start]}'s config changed since its folder was made "
          f"({why}): redoing {order[start]}" + (f" and the {len(later)} stages after it "
                                                f"({', '.join(later)})" if later else "")
          + f"; the old folders are in {aside}/", file=sys.stderr, flush=True)


# -- running --------------------------------------------------------------------------------

def _compile_cache(folder: str) -> None:
    """Keep every compiled program in `folder` (JAX's persistent cache; the same program gives
    the same executable, so results do not change)."""
    import jax
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@contextlib.contextmanager
def _disk_errors(who: str, folder: str) -> Iterator[None]:
    """A full, read-only or forbidden disk while `who` writes in `folder`: one line naming both
    (any other OSError is a bug and propagates)."""
    try:
        yield
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        raise GptjaxError(
            f"{who} could not write in {folder}: {e.strerror or e}{where}. Free space on that "
            "disk (or fix its permissions), then rerun the same command: the finished stages "
            "are kept and an unfinished one runs again (a training stage resumes from its "
            "newest checkpoint)."
        ) from None


@dataclasses.dataclass
class PipelineResult:
    stages: dict[str, Any]  # name -> the stage's result (None when skipped)
    interrupted_by: int | None = None
    report: str | None = None  # report.md's path


def _rows(stage_cfg: ml_collections.ConfigDict) -> int:
    """The rows a stage's batch splits over the data-parallel devices."""
    if stage_cfg.stage == "ppo":
        return int(stage_cfg.ppo.batch_prompts)
    if stage_cfg.stage == "prepare":
        return 0
    return int(stage_cfg.train.batch_size) // max(int(stage_cfg.train.grad_accum), 1)


def _seconds(mark: dict[str, Any] | None, folder: str) -> float:
    """Wall seconds of a stage's earlier attempts: a finished one's as measured, one killed
    without a chance to record it up to the newest file it wrote."""
    total = 0.0
    for a in (mark or {}).get("attempts", []):
        if a.get("seconds") is not None:
            total += a["seconds"]
        else:
            newest = max((os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(folder)
                          for f in fs), default=a["started"])
            total += max(0.0, newest - a["started"])
    return total


def run(config: ml_collections.ConfigDict, workdir: str,
        dist: distributed.Options | None = None) -> PipelineResult:
    """Run the pipeline's stages in `workdir` (see the module docstring)."""
    from gptjax import train  # the stages' checks and dispatch (gptjax.train imports us lazily)

    validate(config)
    check_output_dir(workdir, "--workdir")
    check_same_pipeline(config, workdir)
    if distributed.is_multiprocess(dist) and any(
            config.stages[n].stage == "prepare" for n in config.order):
        raise GptjaxError("a pipeline with a prepare stage runs as one process: run it once "
                          "without the multi-process launcher (or drop prepare from order)")
    _probe_writable(workdir)
    redo = _redo_from(config, workdir)
    if redo is not None:
        _supersede(config, workdir, *redo)
    with _disk_errors("the pipeline", workdir):
        workdir_lib.write_config(config, workdir)
    rows = [r for r in (_rows(config.stages[n]) for n in config.order) if r]
    runtime.configure_cpu_devices(config.runtime.cpu_devices, math.gcd(*rows) if rows else 1)
    distributed.initialize(dist)
    if config.compile_cache:
        _compile_cache(os.path.join(workdir, config.compile_cache))
    order, results = list(config.order), {}
    t_pipeline = time.perf_counter()
    for i, name in enumerate(order):
        folder = os.path.join(workdir, name)
        mark = _marker(folder)
        head = f"gptjax pipeline: stage {i + 1} of {len(order)}: {name}"
        if mark is not None and mark.get("done"):
            print(f"{head}: done earlier ({mark.get('seconds', 0):.0f} s), skipped",
                  file=sys.stderr, flush=True)
            results[name] = None
            continue
        stage_cfg = resolve(config.stages[name], workdir)
        stage_cfg.train.progress_label = f"[{i + 1}/{len(order)}] {name}"
        print(f"{head} ({stage_cfg.stage}) in {folder}"
              + (" (resuming)" if mark is not None else ""), file=sys.stderr, flush=True)
        train.check_stage(stage_cfg, folder)
        attempts = list((mark or {}).get("attempts", []))
        before = _seconds(mark, folder)
        attempts.append({"started": time.time(), "seconds": None})
        state = {"stage": name, "kind": stage_cfg.stage, "config": section(config, name),
                 "done": False, "attempts": attempts}
        with _disk_errors(f"stage {name}", folder):
            os.makedirs(folder, exist_ok=True)
            workdir_lib.write_json(folder, MARKER, state)
        t0, c0 = time.perf_counter(), time.process_time()
        with _disk_errors(f"stage {name}", folder):
            result = train.dispatch(stage_cfg, folder)
        attempts[-1]["seconds"] = time.perf_counter() - t0
        attempts[-1]["cpu_seconds"] = time.process_time() - c0  # every thread of the process
        interrupted = getattr(result, "interrupted_by", None)
        state.update(done=interrupted is None, seconds=before + attempts[-1]["seconds"],
                     cpu_seconds=sum(a.get("cpu_seconds") or 0 for a in attempts))
        with _disk_errors(f"stage {name}", folder):
            workdir_lib.write_json(folder, MARKER, state)
        results[name] = result
        if interrupted is not None:
            print(f"gptjax pipeline: stopped in stage {name} (signal {interrupted}); rerun the "
                  "same command to resume it", file=sys.stderr, flush=True)
            return PipelineResult(results, interrupted)
        print(f"gptjax pipeline: {name} done in {state['seconds']:.0f} s ({i + 1} of "
              f"{len(order)} stages; {time.perf_counter() - t_pipeline:.0f} s in this run)",
              file=sys.stderr, flush=True)
    report = None
    if config.report.enabled:
        from gptjax.report import write as write_report  # (matplotlib: only when reporting)
        with _disk_errors("the report", workdir):
            report = write_report(workdir)
        print(f"gptjax pipeline: wrote {report} and report.html", file=sys.stderr, flush=True)
    return PipelineResult(results, None, report)
