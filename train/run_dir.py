"""The output folder of a training run: one run per folder, one process at a time.

* :func:`check_fresh_output` refuses a new (not ``--resume``) run into a folder that holds a
  run's files (``metrics.jsonl``, ``config.json``, ``last_checkpoint``, ``model_*.pth``) unless
  ``--overwrite``; :func:`default_output` picks the first free ``output/default[_N]`` instead,
  so ``python train/train.py`` twice keeps the first run.
* :class:`OutputLock` is ``OUTPUT/.lock`` holding ``host pid``, created exclusively: a second
  run on the same folder is refused while the first lives; the lock of a dead process on this
  host is stale and taken over (a lock from another host is reported, not guessed at).
"""
import os
import re
import socket
from typing import Optional

__all__ = ["RUN_FILES", "holds_run", "check_fresh_output", "default_output", "OutputLock", "OutputInUse"]

RUN_FILES = ("metrics.jsonl", "config.json", "last_checkpoint")
_CHECKPOINT = re.compile(r"^model_\d{7}\.pth$")
LOCK = ".lock"


class OutputInUse(OSError):
    """Another live process holds the output folder's lock."""


def holds_run(folder: str) -> bool:
    """Whether ``folder`` holds files of a training run."""
    if not os.path.isdir(folder):
        return False
    return any(n in RUN_FILES or _CHECKPOINT.match(n) for n in os.listdir(folder))


def check_fresh_output(folder: str, overwrite: bool) -> None:
    """A new run may write into ``folder``: FileExistsError unless it holds no run or ``overwrite``."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"--output {folder} is a file, not a folder")
    if holds_run(folder) and not overwrite:
        raise FileExistsError(f"--output {folder} already holds a training run (metrics.jsonl / checkpoints): "
                              f"use --resume to continue it, --overwrite to replace it, or another --output")


def default_output(base: str, resume: bool) -> str:
    """``base`` when it holds no run (or to resume it), else the first ``base_N`` that holds none."""
    if resume or not holds_run(base):
        return base
    n = 2
    while holds_run(f"{base}_{n}") or os.path.exists(os.path.join(f"{base}_{n}", LOCK)):
        n += 1
    return f"{base}_{n}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    """``with OutputLock(folder):`` holds ``folder/.lock`` for this process (see the module docstring)."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK)
        self.stale: Optional[str] = None  # the previous holder when a dead process's lock was taken over
        self.held = False

    def _owner(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def acquire(self) -> "OutputLock":
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                host, _, pid = owner.rpartition(" ")
                if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                    self.stale = owner
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                if not owner:  # being written by its creator this instant
                    continue
                raise OutputInUse(f"--output {os.path.dirname(self.path)} is in use by another run "
                                  f"(process {pid} on {host or '?'}, lock file {self.path}); wait for it, use "
                                  f"another --output, or delete the lock file if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self.held = True
            return self
        raise OutputInUse(f"cannot take the lock {self.path}: other processes keep taking it")

    def release(self) -> None:
        if self.held and self._owner() == f"{socket.gethostname()} {os.getpid()}":
            os.remove(self.path)
        self.held = False

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
