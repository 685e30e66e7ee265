"""Stopping a run on SIGINT / SIGTERM at the same step in every process."""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gptjax import sharding


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step and returns."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class AgreedStop:
    """The signal that stops the run, agreed by every process at the same step.

    Processes may receive SIGINT/SIGTERM a step apart; if each stopped on its own, their
    collectives (the next step, the checkpoint) would no longer match and the run would hang. So
    a multi-process run also takes the max of the processes' signal numbers after each step, read
    one step late like the metrics: every process stops after the same step.
    """

    def __init__(self, flag: StopFlag, mesh: Any):
        self.flag = flag
        self.agreed: int | None = None
        self.multi = jax.process_count() > 1
        self._pending = None
        if self.multi:
            self._spec = NamedSharding(mesh, P(tuple(mesh.axis_names)))  # one int per device
            self._max = jax.jit(jnp.max, out_shardings=sharding.replicated(mesh))

    @property
    def signum(self) -> int | None:
        return self.agreed if self.multi else self.flag.signum

    def after_step(self) -> None:
        """Call once per step, right after dispatching it."""
        if not self.multi:
            return
        previous = self._pending
        local = np.full((jax.local_device_count(),), self.flag.signum or 0, np.int32)
        self._pending = self._max(jax.make_array_from_process_local_data(self._spec, local))
        if previous is not None and int(previous):
            self.agreed = int(previous)
