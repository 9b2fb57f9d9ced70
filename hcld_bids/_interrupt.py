"""Ctrl-C in the run's worker server: leave quietly.

:func:`hcld_bids.levels.execution.start_worker_server` has the fork server import this module first, before the
heavy modules it preloads (torch and ANTsPy take seconds). A Ctrl-C reaches the whole process group, so it
reaches the server too; during those imports it would die with a traceback on the user's console (the main
process reports the interruption itself, exit 130). Processes forked from the server start with the same
handler: an idle one leaves quietly as well, and nipype's workers install their own
(:func:`hcld_bids.levels.execution._worker_interrupted`).
"""

from __future__ import annotations

import signal
import threading


def leave_quietly(signum, frame) -> None:
    """SIGINT handler: exit with status 130 (``SystemExit`` prints nothing and still runs ``finally`` blocks)."""
    raise SystemExit(130)


def install() -> bool:
    """Install :func:`leave_quietly` for SIGINT, unless SIGINT is ignored or handled otherwise already, or this
    is not the main thread; returns whether it did."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    signal.signal(signal.SIGINT, leave_quietly)
    return True


install()
