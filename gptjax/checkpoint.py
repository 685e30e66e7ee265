"""Orbax checkpoints of {train state, grain iterator}: async saves, keep-last-N, exact resume,
a digest per checkpoint (gptjax/checkpoint_digest.py) checked at every restore, and saves that
fail in one line.

The resume policy lives here, behind `Checkpointer.restore_latest`: the newest checkpoint must
match its digest (`train.resume = "latest"`, the default), or, with `train.resume = "previous"`,
the run resumes from the newest checkpoint that does and the newer ones are moved aside to
`<workdir>/corrupt_checkpoints/<step>` (never deleted).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from gptjax import checkpoint_digest as digest
from gptjax import checkpoint_failure
from gptjax.errors import CheckpointWriteError, CorruptCheckpoint, GptjaxError

RESUME_MODES = ("latest", "previous")
CORRUPT_DIR = "corrupt_checkpoints"  # under the workdir: checkpoints moved aside
_FIX = ("rerun with --config.train.resume=previous to resume from the newest checkpoint that "
        f"verifies (this one is moved to <workdir>/{CORRUPT_DIR}/, not deleted)")


class Checkpointer:
    """One orbax CheckpointManager under `<workdir>/checkpoints`, items 'state' and 'data'.

    Every save goes through orbax's async checkpointer (a sync save waits for it at once), so
    the digest is always written by the same hook: after orbax finalizes the step, before it
    commits the folder under its final name.
    """

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.async_save = async_save
        self._saving: int | None = None  # the step of the save in flight (or the last one)
        self._restored: dict[int, bool] = {}  # restored step -> whether a digest verified it
        self._keep = keep
        checkpoint_failure.quiet_orbax_errors()
        self.manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self._keep, enable_async_checkpointing=True, create=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_digest))
        return ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data"),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    # -- saving ------------------------------------------------------------------------------

    def save(self, step: int, state: Any, data_iter: Any | None = None) -> None:
        """Start an async save of `state` (and the data iterator position) as `step`; a sync
        Checkpointer waits for it. A save that cannot be written raises CheckpointWriteError
        (here, or at the next save / wait / close for an async one)."""
        self.wait()  # the previous save must finish first (its digest hook reads _saving)
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self._saving = step
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:  # orbax / tensorstore raise many types for a failed write
            raise self._write_failed(step, e) from None
        if not self.async_save:
            self.wait()

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_failed(self._saving, e) from None

    def close(self) -> None:
        try:
            self.manager.close()
        except Exception as e:
            raise self._write_failed(self._saving, e) from None

    def _write_digest(self) -> None:
        """orbax's post-finalization hook (process 0, background thread): the digest of the
        step just written, into its folder before orbax renames it to the final name."""
        name = ocp.step.standard_name_format().build_name(self._saving)
        tmp = os.path.join(self.directory, name + ocp.step.TMP_DIR_SUFFIX)
        digest.write(tmp if os.path.isdir(tmp) else os.path.join(self.directory, name))

    def _write_failed(self, step: int | None, err: BaseException) -> CheckpointWriteError:
        """The one-line error of a save that failed, after removing its partial folder. The
        orbax manager is replaced by a fresh one: the failed save's other writes may still be
        in flight in the old one, and would fail the next operation."""
        try:
            self.manager.close()  # (waits for what it still runs; its errors are this one)
        except Exception:  # noqa: BLE001
            pass
        name = ocp.step.standard_name_format().build_name(step) if step is not None else "?"
        tmp = os.path.join(self.directory, name + ocp.step.TMP_DIR_SUFFIX)
        if jax.process_index() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        self.manager = self._new_manager()
        removed = ("its partial folder was removed" if not os.path.exists(tmp)
                   else f"its partial folder {tmp} could not be removed")
        kept = digest.committed_steps(self.directory)
        newest = (f"the earlier checkpoints are intact (newest: step {kept[-1]})" if kept
                  else "no earlier checkpoint exists")
        resume = f"resume from step {kept[-1]}" if kept else "start again"
        return CheckpointWriteError(
            f"could not save the checkpoint of step {step} in {self.directory}: "
            f"{checkpoint_failure.cause(err)}; "
            f"{removed} and {newest}. Free space on that disk (or fix its permissions), then "
            f"rerun the same command to {resume}.")

    # -- restoring ---------------------------------------------------------------------------

    def restore_latest(self, abstract_state: Any, data_iter: Any | None = None,
                       data_position_global: bool = False, resume: str = "latest"
                       ) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that verifies, restored (see `restore`);
        None when there is no checkpoint.

        resume="latest": the newest checkpoint must match its digest and be readable, else
        CorruptCheckpoint (nothing on disk is touched). resume="previous": the newest one that
        does is restored, and the newer ones are moved aside to <workdir>/corrupt_checkpoints/.
        A checkpoint of another model shape is refused either way (it is no corruption).
        """
        if resume not in RESUME_MODES:
            raise GptjaxError(f"train.resume={resume!r}: use one of {RESUME_MODES}")
        steps = sorted(self.manager.all_steps(), reverse=True)
        failed: list[CorruptCheckpoint] = []
        for step in steps:
            try:
                state = self.restore(step, abstract_state, data_iter, data_position_global)
            except CorruptCheckpoint as e:
                if resume != "previous":
                    raise
                failed.append(e)
                continue
            if failed:
                self._move_aside(failed, step)
            return step, state
        if failed:
            raise CorruptCheckpoint(
                f"none of the {len(steps)} checkpoints in {self.directory} verifies ("
                + "; ".join(f"step {e.step}: {e.reason}" for e in failed) + "); nothing was "
                "moved. Start a new --workdir, or put back an intact copy of a checkpoint.",
                step=failed[0].step, reason=failed[0].reason)
        return None

    def restore(self, step: int, abstract_state: Any, data_iter: Any | None = None,
                data_position_global: bool = False) -> Any:
        """Restore into the given abstract state (shapes + shardings); the iterator in place.

        The files are first checked against the checkpoint's digest (CorruptCheckpoint if one
        differs). The arrays are resharded to the abstract state's shardings, whatever mesh and
        process count wrote them. The data position is saved per process; when the checkpoint
        was written by another number of processes it carries over only if
        `data_position_global` (the iterator's state is the index of the next global batch, the
        same in every process, as for pretraining's random windows); otherwise the iterator
        starts over, with a note.
        """
        self._restored[step] = self.verify(step)
        self.check_compatible(step, abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        # A checkpoint written by another tool (e.g. convert) may hold no data position: the
        # iterator then starts from the beginning.
        data_dir = os.path.join(self.step_dir(step), "data")
        saved = _data_positions(data_dir) if data_iter is not None else {}
        n = jax.process_count()
        if saved and len(saved) == n:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            raise _corrupt(self.directory, step, e) from None
        if saved and len(saved) != n:
            self._carry_over_position(step, saved, data_iter, data_position_global)
        return restored["state"]

    def verify(self, step: int, fix: str = _FIX) -> bool:
        """Check the step's files against its digest: True when they match, False when it has
        no digest (a note says it is restored unverified); CorruptCheckpoint when one differs.
        The processes of a multi-process run each check a share of the files."""
        path = self.step_dir(step)
        try:
            expected = digest.read(path)
        except digest.BadDigestFile as e:
            raise CorruptCheckpoint(f"the checkpoint at step {step} in {self.directory} has a "
                                    f"damaged digest: {e}. Nothing was changed: {fix}.",
                                    step=step, reason=str(e)) from None
        if expected is None:
            if jax.process_index() == 0:
                print(f"gptjax: note: the checkpoint at step {step} in {self.directory} has no "
                      f"{digest.DIGEST_FILE} (saved by an older gptjax or another tool): it is "
                      "restored unverified.", file=sys.stderr, flush=True)
            return False
        bad = _agree(digest.check(path, expected, jax.process_index(), jax.process_count()),
                     sorted(expected))
        if bad is not None:
            raise CorruptCheckpoint(
                f"the checkpoint at step {step} in {self.directory} fails its digest: "
                f"{bad.file} {bad.reason}. Nothing was changed: {fix}.", step=step,
                reason=f"{bad.file} {bad.reason}")
        return True

    def describe(self, step: int | None) -> str:
        """The newest checkpoint a stopped run leaves, as a sentence for its message."""
        if step is None:
            return f"No checkpoint has been saved in {self.directory} yet"
        if step not in self._restored:
            return (f"The newest checkpoint (step {step}, saved by this run with finite "
                    f"parameters) is kept in {self.directory}")
        if self._restored[step]:
            return (f"The newest checkpoint (step {step}, which matched its digest when this "
                    f"run restored it) is kept in {self.directory}")
        return (f"The newest checkpoint (step {step}) is kept in {self.directory}, unverified: "
                "it has no digest")

    def check_compatible(self, step: int, abstract_state: Any) -> None:
        """Raise a clear error when the saved arrays do not have the shapes this config builds."""
        try:
            meta = self.manager.item_metadata(step)["state"]
        except Exception as e:  # orbax raises many types for unreadable metadata
            raise _corrupt(self.directory, step, e) from None
        if meta is None:
            return
        saved = _shapes(meta)
        wanted = _shapes(abstract_state)
        if saved.keys() != wanted.keys():
            missing = sorted(set(wanted) - set(saved))[:3]
            extra = sorted(set(saved) - set(wanted))[:3]
            raise GptjaxError(
                f"the checkpoint in {self.directory} (step {step}) belongs to a different model "
                "or optimizer: "
                f"arrays missing from it {missing}, unexpected arrays {extra}. Use a new --workdir "
                "or the config this workdir was trained with (its config.json).")
        for path, shape in wanted.items():
            if saved[path] != shape:
                raise GptjaxError(
                    f"the checkpoint in {self.directory} (step {step}) belongs to a different "
                    f"model shape: {path} is {saved[path]} there but {shape} in this config. "
                    "Use a new --workdir or the config this workdir was trained with "
                    "(its config.json).")

    def _move_aside(self, failed: list[CorruptCheckpoint], kept: int) -> None:
        """Move the checkpoints newer than `kept` that failed out of the step list (process 0),
        then every process rereads it."""
        aside = os.path.join(self.workdir, CORRUPT_DIR)
        moved = []
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            for e in failed:
                dest = os.path.join(aside, str(e.step))
                n = 0
                while os.path.exists(dest):
                    n += 1
                    dest = os.path.join(aside, f"{e.step}.{n}")
                os.replace(self.step_dir(e.step), dest)
                moved.append(f"step {e.step} ({e.reason}) to {dest}")
            print(f"gptjax: note: moved {'; '.join(moved)}; resuming from step {kept}, the "
                  "newest checkpoint that verifies.", file=sys.stderr, flush=True)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("gptjax_checkpoints_moved_aside")
        self.manager.reload()

    def _carry_over_position(self, step: int, saved: dict[int, str], data_iter: Any,
                             data_position_global: bool) -> None:
        """Data position of a checkpoint written by another number of processes."""
        states = set(saved.values())
        if data_position_global and len(states) == 1:
            data_iter.set_state(json.loads(states.pop()))
            note = "the data position (the next global batch) carries over"
        else:
            note = ("this stage's data position is per process, so the data stream starts "
                    "over from its beginning")
        if jax.process_index() == 0:
            procs = f"{len(saved)} process" + ("es" if len(saved) > 1 else "")
            print(f"gptjax: note: the checkpoint at step {step} was written by {procs} "
                  f"and this run has {jax.process_count()}: the arrays are resharded "
                  f"to this mesh, and {note}.", file=sys.stderr, flush=True)

    def step_dir(self, step: int) -> str:
        path = ocp.step.find_step_path(self.directory, ocp.step.standard_name_format(), step=step)
        return str(path)


def _agree(bad: digest.Mismatch | None, names: list[str]) -> digest.Mismatch | None:
    """The first mismatch any process found (each checked its share of `names`)."""
    if jax.process_count() == 1:
        return bad
    from jax.experimental import multihost_utils
    reasons = ("is missing", "changed since the save", "cannot be read")
    mine = np.array([len(names), 0], np.int32) if bad is None else np.array(
        [names.index(bad.file), next((i for i, r in enumerate(reasons)
                                      if bad.reason.startswith(r)), 2)], np.int32)
    every = np.asarray(multihost_utils.process_allgather(mine))
    first = every[np.argmin(every[:, 0])]
    return None if first[0] == len(names) else digest.Mismatch(names[first[0]], reasons[first[1]])


def _data_positions(data_dir: str) -> dict[int, str]:
    """{process index: saved iterator state} of a checkpoint's data item (grain writes one
    `process_<i>-of-<n>.json` per process); empty when there is none."""
    if not os.path.isdir(data_dir):
        return {}
    out = {}
    for name in os.listdir(data_dir):
        m = re.fullmatch(r"process_(\d+)-of-(\d+)\.json", name)
        if m:
            with open(os.path.join(data_dir, name)) as f:
                out[int(m.group(1))] = f.read()
    return out


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict))[0]
    return {jax.tree_util.keystr(p, simple=True, separator="/"):
            tuple(x.shape if hasattr(x, "shape") else np.shape(x))
            for p, x in flat}


def _corrupt(directory: str, step: int, err: Exception) -> CorruptCheckpoint:
    reason = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    return CorruptCheckpoint(
        f"the checkpoint at step {step} in {directory} could not be read ({reason}). Nothing "
        f"was changed: {_FIX}.", step=step, reason=f"unreadable: {reason}")


def restore_params(workdir: str, abstract_params: Any, step: int | None = None) -> tuple[int, Any]:
    """(step, the `params` of a saved train state as host numpy arrays); `step` None = latest.

    For export and inference: the checkpoint is checked against its digest, then an orbax
    partial restore reads the parameter arrays only, never the optimizer moments (twice the
    parameters' size). `abstract_params` gives the tree, shapes and dtypes; a checkpoint of
    another model shape raises a GptjaxError naming the mismatch.
    """
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
        raise GptjaxError(f"{workdir} has no checkpoints folder ({directory}); pass the --workdir "
                          "of a gptjax run that saved a checkpoint.")
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise GptjaxError(f"{directory} holds no finished checkpoint yet; train until one is "
                              "saved (train.checkpoint_every) or pass another --workdir.")
        ckpt.verify(step, fix="rerun its training command with --config.train.resume=previous "
                    "to move it aside and train on from the newest checkpoint that verifies")
        try:
            meta = ckpt.manager.item_metadata(step)["state"]
        except Exception as e:  # orbax raises many types for unreadable metadata
            raise _corrupt(directory, step, e) from None
        path = ckpt.step_dir(step)
    finally:
        ckpt.close()
    saved = _shapes(meta["params"]) if meta is not None and "params" in meta else None
    wanted = _shapes(abstract_params)
    if saved is not None and saved != wanted:
        diff = sorted(p for p in set(saved) | set(wanted) if saved.get(p) != wanted.get(p))[:3]
        raise GptjaxError(
            f"the checkpoint in {directory} (step {step}) belongs to a different model or "
            "optimizer: "
            + ", ".join(f"{p} is {saved.get(p)} there but {wanted.get(p)} in the config"
                        for p in diff) + ". Check the workdir's config.json.")
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                abstract_params)
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(
                os.path.join(path, "state"), args=ocp.args.PyTreeRestore(
                    item={"params": abstract_params}, restore_args={"params": restore_args},
                    partial_restore=True))
    except Exception as e:
        raise _corrupt(directory, step, e) from None
    return step, restored["params"]
