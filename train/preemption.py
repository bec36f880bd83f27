"""A stop signal ends training at an iteration boundary, with a checkpoint, not mid-step.

Schedulers announce preemption with a signal (SLURM sends SIGTERM before killing a job, or
SIGUSR1 when asked with ``--signal``); Ctrl-C is SIGINT. ``StopRequest`` records the first
one; the training loop finishes the iteration in progress, saves a checkpoint and exits with
128 + the signal's number, and ``--resume`` continues exactly where it stopped. A second
signal of the same kind acts at once (the handler that was there before is put back).

Schedulers and Ctrl-C signal the whole process group, data-loader workers included: the
workers ignore these signals (``ignore_stop_signals`` is their init function), so the main
process, which handles them, can finish its iteration and save; the workers exit with it.
"""
import signal
import threading
from types import FrameType
from typing import Dict, Optional

__all__ = ["STOP_SIGNALS", "StopRequest", "ignore_stop_signals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """Handlers for STOP_SIGNALS while active (a context manager; main thread only)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is None:
            self.signum = signum
        signal.signal(signum, self._previous[signum])

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only: nothing to install
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a worker outlives the stop signal its main process handles."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
