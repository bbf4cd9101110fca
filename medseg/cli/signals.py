"""SIGTERM (what batch schedulers such as Slurm, Kubernetes or systemd send first) stops a run the way
Ctrl-C does: it raises :class:`Terminated`, a ``KeyboardInterrupt``, in the main thread.

So the same clean-up runs as on SIGINT: the batch writer finishes the outputs already computed and
records them in the manifest, a write in progress removes its temporary file (``atomic_path``),
the output-folder lock is released, and the next run resumes. A second SIGTERM during that clean-up
is ignored (the scheduler's SIGKILL after its grace period still ends the process; atomic writes
then keep every finished file whole). Exit code 143 (128 + 15), as a process killed by SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


EXIT_TERMINATED = 143


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean stop; do not interrupt the clean-up
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only; elsewhere a no-op)."""
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
