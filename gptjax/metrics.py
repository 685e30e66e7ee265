"""What a run reports: metrics.jsonl, TensorBoard events, a progress bar, and MFU.

MFU = (model FLOPs per token * tokens per second) / (peak FLOP/s per device * devices), with the
FLOPs per token of `GPTConfig.flops_per_token` (6N + 6*L*T*C). The peak is the vendor figure for
known accelerators and, on CPUs, a float32 jnp.dot measured once per run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

# Dense peak FLOP/s per device (bf16 on accelerators) by jax device_kind prefix.
_PEAK_FLOPS = {
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def measured_matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    """Best float32 FLOP/s of an (n x n) @ (n x n) jnp.dot on the first device."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def peak_flops_per_device() -> tuple[float, str]:
    """(FLOP/s, where the number came from) for the local device kind."""
    kind = jax.devices()[0].device_kind
    for prefix, flops in _PEAK_FLOPS.items():
        if kind.startswith(prefix):
            return flops, f"{kind} datasheet"
    return measured_matmul_peak(), f"{kind}: measured float32 jnp.dot 1024^3"


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch (when
    installed) only to accept torch tensors, which gptjax never passes, and that import costs
    about 2 s of every run's start-up."""
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, which it tolerates
    try:
        from tensorboardX import SummaryWriter
    finally:
        if blocked:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Writes one JSON object per logged step and TensorBoard scalars (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
            self._tb = _summary_writer_class()(os.path.join(workdir, "tb"))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Close both files. A flush that fails (a full disk) is one note on stderr, not an
        exception: close runs while the run stops, often for that very reason (a checkpoint
        that could not be written), and must not hide it."""
        if not self.enabled:
            return
        for name, f in (("metrics.jsonl", self._jsonl), ("TensorBoard events", self._tb)):
            try:
                f.close()
            except OSError as e:
                print(f"gptjax: note: {name} could not be flushed: {e}", file=sys.stderr)
                if f is self._tb:
                    _abandon(self._tb)


def _abandon(tb: Any) -> None:
    """Mark tensorboardX's event writers closed after a failed flush, so its atexit hook does not
    retry the flush and print a traceback at exit (best effort: these are its internals)."""
    for fw in (getattr(tb, "all_writers", None) or {}).values():
        ew = getattr(fw, "event_writer", None)
        if ew is None:
            continue
        try:
            ew._worker.stop()
        except Exception:  # noqa: BLE001 - the worker may be gone or failing itself
            pass
        ew._closed = True


class Progress:
    """A tqdm bar with loss, tokens/s and ETA; silent when disabled or not process 0."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str | None = None):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                            desc=desc,
                            file=sys.stderr, mininterval=1.0, smoothing=0.1)

    def update(self, step: int, **postfix: Any) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(step - self.bar.n)  # redraws at most once per mininterval

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
