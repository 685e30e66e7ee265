"""Orbax checkpoints of {train state, grain iterator}: async saves, keep-last-N, exact resume."""

from __future__ import annotations

import os
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
                f"the checkpoint in {self.directory} (step {step}) belongs to a different model: "
                f"arrays missing from it {missing}, unexpected arrays {extra}. Use a new --workdir "
                "or the config this workdir was trained with (its config.json).")
        for path, shape in wanted.items():
            if saved[path] != shape:
                raise GptjaxError(
                    f"the checkpoint in {self.directory} (step {step}) belongs to a different "
                    f"model shape: {path} is {saved[path]} there but {shape} in this config. "
                    "Use a new --workdir or the config this workdir was trained with "
                    "(its config.json).")

    def restore(self, step: int, abstract_state: Any, data_iter: Any | None = None) -> Any:
        """Restore into the given abstract state (shapes + shardings); the iterator in place."""
        self.check_compatible(step, abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            raise _corrupt(self.directory, step, e) from None
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict))[0]
    return {jax.tree_util.keystr(p): tuple(np.shape(x) if not hasattr(x, "shape") else x.shape)
            for p, x in flat}


def _corrupt(directory: str, step: int, err: Exception) -> GptjaxError:
    return GptjaxError(
        f"the checkpoint at step {step} in {directory} could not be read ({type(err).__name__}: "
        f"{str(err)[:300]}). Nothing was deleted: move that step's folder aside to resume from "
        "the previous checkpoint, or start a new --workdir.")
