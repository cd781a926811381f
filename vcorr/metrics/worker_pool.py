"""Worker processes for a scorer, which can be started before the scorer is imported.

The workers come from a forkserver that imports the scorer's module (numpy, OpenCV) once and
forks them. Started first thing, it does those imports while the calling process does its own,
not after.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver



def context(scorer: str) -> multiprocessing.context.ForkServerContext:
    """The context whose workers have module `scorer` imported."""
    # forkserver, not fork: a process that already runs threads (torch, tqdm, a loader) can
    # fork a worker holding one of their locks, which then waits forever.
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload([scorer])
    return forkserver


def start(scorer: str) -> None:
    """Start the workers' server for module `scorer` now (it does not wait for the server's imports)."""
    context(scorer)
    multiprocessing.forkserver.ensure_running()
