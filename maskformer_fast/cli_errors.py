"""One line per error for the command-line tools: no traceback unless ``--debug``.

Every CLI (predict, train, make_synthetic) runs its work through :func:`run_cli`: bad input
(a missing or unreadable file, a wrong argument, a full or read-only disk) prints
``PROG: error: MESSAGE`` on stderr and exits with status 2; an unexpected failure prints one
line naming the exception and exits with 1. ``--debug`` lets the exception through instead.
"""
import argparse
import os
import sys
from typing import Callable, TypeVar

__all__ = ["CliError", "BAD_INPUT", "one_line", "run_cli", "torch_load_reason", "new_file"]

T = TypeVar("T")


class CliError(SystemExit):
    """The exit of a CLI after a printed error line: exit status 2, ``str()`` is the message."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _bad_input_types() -> tuple:
    types = [OSError, ValueError, MemoryError, OverflowError, KeyError, EOFError]
    try:
        from PIL import Image
        types.append(Image.DecompressionBombError)  # a subclass of Exception only
    except ImportError:  # pragma: no cover - PIL is a dependency
        pass
    return tuple(types)


# OSError covers FileNotFoundError, FileExistsError, PermissionError and a full disk (ENOSPC).
BAD_INPUT = _bad_input_types()


def one_line(error: BaseException) -> str:
    """The exception's message on one line (its type name when it has none)."""
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = f"missing key {error.args[0]!r}"
    if not text:
        text = type(error).__name__
    elif isinstance(error, (MemoryError, OverflowError)):
        text = f"{type(error).__name__}: {text}"
    return text if len(text) <= 1000 else text[:997] + "..."


def run_cli(prog: str, work: Callable[[], T], debug: bool = False) -> T:
    """``work()``, with its errors turned into one stderr line and exit status 2 (bad input) or 1."""
    if debug:
        return work()
    try:
        return work()
    except CliError as e:
        if e.message:
            print(f"{prog}: error: {e.message}", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise CliError("interrupted", 130) from None
    except BAD_INPUT as e:
        message = one_line(e)
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise CliError(message) from None
    except Exception as e:  # a bug or an unforeseen failure: still one line, status 1
        message = f"{type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)"
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise CliError(message, 1) from None


def torch_load_reason(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to rerun it with
    ``weights_only=False`` (which would run the file's code) and never empty."""
    text = str(error)
    if "Weights only load failed" in text or "weights_only" in text:
        detail = [line.strip() for line in text.splitlines()[1:] if line.strip()
                  and not line.strip().startswith(("Please file an issue", "Check the documentation"))]
        detail = " ".join(d.replace("WeightsUnpickler error:", "").strip() for d in detail).strip()
        return ("it is not a plain tensor file (refused without running it"
                + (f": {detail[:300]}" if detail else "") + ")")
    reason = one_line(error)
    if reason == type(error).__name__ or "unexpected pos" in reason or "PytorchStreamReader" in reason:
        return f"not a complete torch file (empty, truncated or corrupt: {reason})"
    return reason


def new_file(path: str) -> str:
    """argparse type of an output file that does not exist yet, in a folder that does (a CLI's
    results never overwrite a file): a bad path is one argparse line and exit status 2."""
    if os.path.lexists(path):
        raise argparse.ArgumentTypeError(f"{path} exists; give a new file (nothing is overwritten)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{path}: folder {folder} does not exist")
    return path
