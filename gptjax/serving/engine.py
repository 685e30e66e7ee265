"""Continuous batching: one thread decodes every admitted request in lock step.

Requests wait in a FIFO queue. Between two decode steps the engine thread prefills waiting
requests into free slots (`slots.SlotDecoder.insert`, which also draws their first token), then
runs one step for all slots and hands each busy slot its token. A request leaves at the step
that ends it (its end-of-reply token, max_tokens, its listener's stop, or a cancel), and its
slot takes the next waiting request before the following step. A request that finds every slot
busy waits; it never fails for it.

Listeners are called on the engine thread: they must be quick and must not block (the server's
hand the text to the asyncio loop with call_soon_threadsafe).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gptjax.serving.slots import SlotDecoder

log = logging.getLogger("gptjax.serve")


@dataclasses.dataclass
class Request:
    """One sequence to generate (an OpenAI choice).

    on_token(token) -> True ends the request (e.g. a stop string was found); on_flush() follows
    each device call's tokens of a request that goes on (a good moment to send them);
    on_done(reason) is called once at the end: 'stop' (end-of-reply token or on_token asked),
    'length' (max_tokens), 'cancelled', or 'error: ...' / 'shutdown' when the engine stops
    first.
    """

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int  # its key is request_keys(seed, choices)[choice]
    on_token: Callable[[int], bool]
    on_done: Callable[[str], None]
    choice: int = 0
    choices: int = 1
    on_flush: Callable[[], None] = lambda: None
    submitted: float = dataclasses.field(default_factory=time.perf_counter)
    first_token: float | None = None  # perf_counter time of its first token
    generated: int = 0
    cancelled: bool = False
    done: bool = False
    error: str | None = None


@functools.lru_cache(maxsize=256)
def request_keys(seed: int, n: int) -> tuple[np.ndarray, ...]:
    """Key data of n sequences sampled with `seed`: jax.random.split(key(seed), n), the keys
    `python -m gptjax.sample --seed S --num_samples n` gives its rows. (A JAX computation:
    the engine thread calls it, so the event loop never waits behind a decode step.)"""
    keys = jax.random.split(jax.random.key(seed), n)
    return tuple(np.asarray(jax.random.key_data(keys)))


class Engine:
    """`slots` batch slots of one model behind a request queue, decoded by one thread."""

    def __init__(self, params: Any, cfg: Any, slots: int, stop_ids: frozenset[int],
                 top_k: int = 0, steps_per_call: int = 1):
        self.decoder = SlotDecoder(params, cfg, slots, top_k, steps_per_call)
        self.cfg, self.slots, self.stop_ids = cfg, slots, frozenset(stop_ids)
        self._cv = threading.Condition()
        self._waiting: collections.deque[Request] = collections.deque()
        self._active: dict[int, Request] = {}
        self._free = list(range(slots))[::-1]
        self._stopping = False
        self.error: str | None = None
        self.steps = 0
        self.tokens = 0
        self.finished: collections.Counter[str] = collections.Counter()  # requests by reason
        self._thread = threading.Thread(target=self._run, name="gptjax-engine", daemon=True)

    # --- the caller's side (any thread) --------------------------------------------------------

    def start(self) -> "Engine":
        self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, req: Request) -> Request:
        with self._cv:
            if self._stopping or self.error:
                raise RuntimeError(self.error or "the engine is shutting down")
            self._waiting.append(req)
            self._cv.notify()
        return req

    def cancel(self, req: Request) -> None:
        """End `req` at the next step boundary (frees its slot); a no-op once it is done."""
        with self._cv:
            req.cancelled = True
            self._cv.notify()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step; every unfinished request ends with 'shutdown'."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        with self._cv:
            return dict(slots=self.slots, active=len(self._active), waiting=len(self._waiting),
                        steps=self.steps, tokens=self.tokens, finished=dict(self.finished),
                        error=self.error)

    def warmup(self) -> None:
        """Compile the step and every prefill (width, batch) now, on throwaway requests (call
        before start(); the rows are rewritten by the next real insert)."""
        d = self.decoder
        key = request_keys(0, 1)[0]
        for w in d.widths:
            for b in d.batches:
                d.insert_many([(r, [0] * min(w, self.cfg.block_size - 1), key, 1.0, 0.9)
                               for r in range(b)])
        d.step()
        for r in range(self.slots):
            d.free(r)

    # --- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not (self._stopping or self._waiting or self._active):
                        self._cv.wait()
                    if self._stopping:
                        break
                    admitted = []
                    while self._waiting and self._free:
                        req = self._waiting.popleft()
                        if req.cancelled:
                            self._finish_locked(req, "cancelled")
                            continue
                        row = self._free.pop()
                        self._active[row] = req
                        admitted.append((row, req))
                if admitted:  # device work outside the lock; one prefill for a burst
                    first = self.decoder.insert_many([
                        (row, req.prompt, request_keys(req.seed, req.choices)[req.choice],
                         req.temperature, req.top_p) for row, req in admitted])
                    now = time.perf_counter()
                    for (row, req), tok in zip(admitted, first):
                        req.first_token = now
                        if not self._deliver(row, req, tok):
                            req.on_flush()
                if self._active:
                    tokens = self.decoder.step()  # (steps_per_call, slots)
                    self.steps += len(tokens)
                    for row, req in list(self._active.items()):
                        if not any(self._deliver(row, req, int(t)) for t in tokens[:, row]):
                            req.on_flush()
        except Exception as e:  # a device or listener failure: fail everyone, say why
            log.exception("the decode loop failed")
            with self._cv:
                self.error = f"error: the decode loop failed ({type(e).__name__}: {e})"
        with self._cv:
            reason = self.error or "shutdown"
            for req in [*self._active.values(), *self._waiting]:
                self._finish_locked(req, reason)
            self._active.clear()
            self._waiting.clear()

    def _deliver(self, row: int, req: Request, tok: int) -> bool:
        """Hand one token to its request; free the slot and say True when it is over."""
        self.tokens += 1
        req.generated += 1
        if req.cancelled:
            reason = "cancelled"
        elif tok in self.stop_ids:
            reason = "stop"
        elif self._listener(req, tok):
            reason = "stop" if req.error is None else req.error
        elif req.generated >= req.max_tokens:
            reason = "length"
        else:
            return False
        with self._cv:
            del self._active[row]
            self.decoder.free(row)
            self._free.append(row)
            self._finish_locked(req, reason)
        return True

    @staticmethod
    def _listener(req: Request, tok: int) -> bool:
        """req.on_token(tok); a listener that raises ends its own request, not the engine."""
        try:
            return req.on_token(tok)
        except Exception as e:
            log.exception("a request's token listener failed")
            req.error = f"error: the reply could not be built ({type(e).__name__}: {e})"
            return True

    def _finish_locked(self, req: Request, reason: str) -> None:
        if not req.done:
            req.done = True
            self.finished[reason.split(":")[0]] += 1
            req.on_done(reason)
