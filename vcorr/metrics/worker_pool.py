"""The DAVIS scorer's worker processes, which can be started before the scorer is imported.

The workers come from a forkserver that imports the scorer (numpy, OpenCV) once and forks them.
Started first thing, it does those imports while the calling process does its own, not after.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver

SCORER = "vcorr.metrics.davis"


def context() -> multiprocessing.context.ForkServerContext:
    # forkserver, not fork: a process that already runs threads (torch, tqdm, a loader) can
    # fork a worker holding one of their locks, which then waits forever.
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload([SCORER])
    return forkserver


def start() -> None:
    """Start the workers' server now (it does not wait for the server's imports)."""
    context()
    multiprocessing.forkserver.ensure_running()
