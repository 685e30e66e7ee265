"""How a failed checkpoint save is reported: its root cause in one line, and the echoes of the
failure that orbax, tensorstore and asyncio print from their background threads silenced.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any


def _orbax_code(code: Any) -> bool:
    return f"{os.sep}orbax{os.sep}" in code.co_filename


class _QuietOrbaxErrors(logging.Filter):
    """orbax logs a failed background save as ERROR records with tracebacks, once per thread the
    error passes through, before the main thread sees the exception. `Checkpointer` reports
    that exception in one line, so ERROR records logged from orbax's code are dropped. (The
    record's own pathname is absl's logging module, so the caller is found on the stack.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        frame = sys._getframe(1)
        while frame is not None:
            if _orbax_code(frame.f_code):
                return False
            frame = frame.f_back
        return True


def _raised_in_orbax(exc_info: Any) -> bool:
    tb = exc_info[2] if isinstance(exc_info, tuple) else None
    while tb is not None:
        if _orbax_code(tb.tb_frame.f_code):
            return True
        tb = tb.tb_next
    return False


class _QuietUnretrievedOrbaxErrors(logging.Filter):
    """When tensorstore's writes fail (a full disk), orbax gathers them with asyncio, and the
    gather's future is dropped once the first error reached the main thread. When it is
    garbage-collected, asyncio logs "_GatheringFuture exception was never retrieved" with the
    write's traceback, once per failed write and at no fixed time. Those records, and only those
    whose exception was raised through orbax's code, are dropped: they are echoes of the
    failure Checkpointer reports in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("exception was never retrieved" in str(record.msg)
                    and _raised_in_orbax(record.exc_info))


def quiet_orbax_errors() -> None:
    """Install the three filters (once per process)."""
    for name, kind in (("absl", _QuietOrbaxErrors), ("asyncio", _QuietUnretrievedOrbaxErrors)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
    if getattr(sys.unraisablehook, "__name__", "") != _drop_closed_loop_echoes.__name__:
        _drop_closed_loop_echoes.previous = sys.unraisablehook
        sys.unraisablehook = _drop_closed_loop_echoes


def _drop_closed_loop_echoes(unraisable: Any) -> None:
    """When a save fails in orbax's Python code while tensorstore still writes its arrays, orbax
    closes the save's event loop; each write that completes later calls back into the closed
    loop, and asyncio's `_check_closed` raises a RuntimeError that Python reports as
    "unraisable", with a traceback, dozens of times. They are echoes of the failure Checkpointer
    reports in one line: dropped. Every other unraisable exception goes to the previous hook."""
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if not (isinstance(unraisable.exc_value, RuntimeError) and tb is not None
            and tb.tb_frame.f_code.co_name == "_check_closed"):
        _drop_closed_loop_echoes.previous(unraisable)


def cause(err: BaseException) -> str:
    """A failed save's root cause in one line: the innermost OSError of the chain if any."""
    chain, e = [], err
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    oserrors = [c for c in chain if isinstance(c, OSError) and c.errno]
    best = oserrors[-1] if oserrors else chain[-1]
    text = " ".join(str(best).split())
    if oserrors:
        return text[:300]
    # tensorstore's C++ writes raise ValueError("RESOURCE_EXHAUSTED: Error writing ... No space
    # left on device [os_error_code='28']"): lead with the OS error it carries.
    m = re.search(r"os_error_code='(\d+)'", text)
    if m:
        n = int(m.group(1))
        return f"[Errno {n}] {os.strerror(n)} (tensorstore: {text[:160]}...)"
    return f"{type(best).__name__}: {text[:300]}"
