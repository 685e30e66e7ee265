"""Process-level runtime setup that must happen before JAX starts its backends.

On a CPU host XLA normally exposes one device and spreads each op over all cores. For small
models those ops are too small to split well, and running the step data-parallel over one XLA
device per core is faster: measured on a 2-core machine, the baby-GPT train step goes from 67 ms
(1 device) to 45 ms (2 devices). For large models the opposite holds (GPT-2 124M, batch 4:
2.8 s on 1 device, 4.5 s on 2), so this is a config choice (`runtime.cpu_devices`), not a rule.
"""

from __future__ import annotations

import os
import re
import sys


_FLAG = "--xla_force_host_platform_device_count"


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_cpu_devices(requested: int, batch_per_step: int, cores: int | None = None) -> int:
    """0: XLA's default (1 device); n > 0: n devices; -1: one per core, lowered to a divisor of the
    per-step batch so the default data-parallel mesh fits."""
    if requested == 0:
        return 1
    if requested > 0:
        return requested
    cores = host_cores() if cores is None else cores
    return max(d for d in range(1, cores + 1) if batch_per_step % d == 0)


def configure_cpu_devices(requested: int, batch_per_step: int) -> None:
    """Set XLA's host device count before the backends start (a no-op if the user set it)."""
    if requested == 0 or re.search(_FLAG, os.environ.get("XLA_FLAGS", "")):
        return
    n = choose_cpu_devices(requested, batch_per_step)
    if "jax" in sys.modules:
        from jax._src import xla_bridge
        if xla_bridge.backends_are_initialized():
            import jax
            if jax.default_backend() == "cpu" and jax.device_count() != n:
                print(f"gptjax: note: runtime.cpu_devices asks for {n} CPU devices but JAX "
                      f"already started with {jax.device_count()}; using those (correct, maybe "
                      "slower). Run the stage before any other JAX computation to get them.",
                      file=sys.stderr)
            return
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}={n}".strip()
