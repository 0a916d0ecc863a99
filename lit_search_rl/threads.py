"""CPU thread settings for the processes ``lit-search-rl`` starts.

torch's CPU kernels run on OpenMP (GNU libgomp in the CPU wheels). By default an OpenMP worker that
runs out of work spins for about 300,000 iterations before it sleeps. That is cheap on an idle
machine, but as soon as another process (the retrieval server, a second rank, a test, anybody's
job) keeps one core busy, the spinning workers and the other process take turns on the same cores
and every small kernel waits for a time slice: on two cores a decode step of the demo's model goes
from about 10 ms to 45-200 ms, an update from 0.5 s to 2.4-2.9 s. ``OMP_WAIT_POLICY=PASSIVE`` makes
idle workers sleep at once: a shared machine then stays within 1.6x of a quiet one, for a cost on a quiet
machine (decode about 16 ms; ``benchmarks/thread_settings.py`` measures both).

libgomp reads the variable once, when it is loaded (with torch), so it has to be in the environment
before the first ``import torch``; set there, it is inherited by every child process (the retrieval
server, DDP ranks, test subprocesses).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

WAIT_POLICY = "OMP_WAIT_POLICY"
DEFAULT_WAIT_POLICY = "PASSIVE"


def configure_threads(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the OpenMP wait policy to ``PASSIVE`` unless the user has set it; returns the settings in force.

    Call it before torch is imported (it changes nothing for an OpenMP runtime already loaded, only
    for the child processes started afterwards). A value the user set, even an empty one, is kept.

    Args:
        environ: the environment to change; ``os.environ`` (this process and its children) when None.
    """
    environ = os.environ if environ is None else environ
    environ.setdefault(WAIT_POLICY, DEFAULT_WAIT_POLICY)
    return {WAIT_POLICY: environ[WAIT_POLICY]}
