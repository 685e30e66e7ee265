"""Orbax checkpoints of {train state, grain iterator}: async saves, keep-last-N, exact resume."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from gptjax.errors import GptjaxError


class Checkpointer:
    """One orbax CheckpointManager under `<workdir>/checkpoints`, items 'state' and 'data'."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data"),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any | None = None) -> None:
        """Start an async save of `state` (and the data iterator position) as `step`."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

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

    def restore(self, step: int, abstract_state: Any, data_iter: Any | None = None,
                data_position_global: bool = False) -> Any:
        """Restore into the given abstract state (shapes + shardings); the iterator in place.

        The arrays are resharded to the abstract state's shardings, whatever mesh and process
        count wrote them. The data position is saved per process; when the checkpoint was written
        by another number of processes it carries over only if `data_position_global` (the
        iterator's state is the index of the next global batch, the same in every process, as
        for pretraining's random windows); otherwise the iterator starts over, with a note.
        """
        self.check_compatible(step, abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        # A checkpoint written by another tool (e.g. convert) may hold no data position: the
        # iterator then starts from the beginning.
        data_dir = self._item_dir(step, "data")
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

    def _item_dir(self, step: int, item: str) -> str:
        path = ocp.step.find_step_path(self.directory, ocp.step.standard_name_format(), step=step)
        return os.path.join(str(path), item)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


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


def _corrupt(directory: str, step: int, err: Exception) -> GptjaxError:
    return GptjaxError(
        f"the checkpoint at step {step} in {directory} could not be read ({type(err).__name__}: "
        f"{str(err)[:300]}). Nothing was deleted: move that step's folder aside to resume from "
        "the previous checkpoint, or start a new --workdir.")


def restore_params(workdir: str, abstract_params: Any, step: int | None = None) -> tuple[int, Any]:
    """(step, the `params` of a saved train state as host numpy arrays); `step` None = latest.

    For export and inference: an orbax partial restore reads the parameter arrays only, never
    the optimizer moments (twice the parameters' size). `abstract_params` gives the tree, shapes
    and dtypes; a checkpoint of another model shape raises a GptjaxError naming the mismatch.
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
        try:
            meta = ckpt.manager.item_metadata(step)["state"]
        except Exception as e:  # orbax raises many types for unreadable metadata
            raise _corrupt(directory, step, e) from None
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
    path = ocp.step.find_step_path(directory, ocp.step.standard_name_format(), step=step)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                abstract_params)
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(path / "state", args=ocp.args.PyTreeRestore(
                item={"params": abstract_params}, restore_args={"params": restore_args},
                partial_restore=True))
    except Exception as e:
        raise _corrupt(directory, step, e) from None
    return step, restored["params"]
