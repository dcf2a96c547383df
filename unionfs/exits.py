"""Exit statuses of every `pyunion` command, and the one error boundary their mains run in.

A command's body raises; the boundary turns what it raised into one line on stderr and a status:

| raised                                   | status            | line                          |
|------------------------------------------|-------------------|-------------------------------|
| a usage error (bad command line)         | 2                 | the reason (+ the usage hint) |
| one of the command's expected failures   | 1 (`run`: 125)    | the reason                    |
| KeyboardInterrupt                        | 130               | `PROG: interrupted`           |
| BrokenPipeError writing stdout           | 141 (as SIGPIPE)  | none: the reader went away    |
| anything else (a bug of ours)            | the failure status | `PROG: internal error: ...`  |

Only the last one can carry a traceback, and only when PYUNION_DEBUG=1 is set. The statuses are
the ones the issue promises across subcommands: 2 usage, 1 failure; `pyunion run` keeps docker
run's 125 for its own failures, since 1 is a status its container can exit with.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from unionfs.messages import one_line, os_message

USAGE = 2
FAILURE = 1
INTERRUPTED = 128 + signal.SIGINT
BROKEN_PIPE = 128 + signal.SIGPIPE
DEBUG_ENV = "PYUNION_DEBUG"


class UsageError(Exception):
    """A bad command line: unknown flag, missing or extra argument, a bad value. Exit 2."""


def describe(e: BaseException) -> str:
    """The reason an expected failure gives: an OSError without '[Errno N]', else str(e)."""
    return os_message(e) if isinstance(e, OSError) else str(e)


def _say(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):   # stderr may be gone too
        print(one_line(line), file=sys.stderr, flush=True)


def _stdout_gone() -> bool:
    """The reader of our stdout has gone (a pipe's read end closed: poll says POLLERR)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    p = select.poll()
    p.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's last flush of what is still buffered does not
    print 'Exception ignored ... BrokenPipeError' (Python's documented recipe)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


@dataclass(frozen=True)
class Boundary:
    """How one command says what went wrong. Lines are `PROG: ` + label + reason (+ hint)."""

    prog: str
    failures: tuple[type[BaseException], ...] = (OSError,)   # expected: the operation failed
    usage_errors: tuple[type[BaseException], ...] = (UsageError,)
    describe: Callable[[BaseException], str] = describe     # a failure's reason
    usage_label: str = ""     # e.g. "usage error: "
    usage_hint: str = ""      # e.g. " (see `pyunion snapshot --help`)"
    failure_label: str = ""   # e.g. "error: "
    failure_status: int = FAILURE

    def run(self, body: Callable[[], int]) -> int:
        """BODY's status, or the status of what it raised (SystemExit passes through: argparse's
        --help). stdout is flushed inside, so a reader that went away is seen here."""
        try:
            status = body()
            sys.stdout.flush()
            return status
        except BrokenPipeError as e:
            if _stdout_gone():
                _silence_stdout()
                return BROKEN_PIPE
            return self._failed(e)
        except KeyboardInterrupt:
            _say(f"{self.prog}: interrupted")
            return INTERRUPTED
        except Exception as e:  # noqa: BLE001 - the boundary: every error ends here, in one line
            return self._failed(e)

    def _failed(self, e: Exception) -> int:
        if isinstance(e, self.usage_errors):
            _say(f"{self.prog}: {self.usage_label}{e}{self.usage_hint}")
            return USAGE
        if isinstance(e, self.failures):
            _say(f"{self.prog}: {self.failure_label}{self.describe(e)}")
            return self.failure_status
        if os.environ.get(DEBUG_ENV):
            import traceback
            with contextlib.suppress(OSError, ValueError):
                traceback.print_exc(file=sys.stderr)
        hint = "" if os.environ.get(DEBUG_ENV) else f" ({DEBUG_ENV}=1 shows the traceback)"
        _say(f"{self.prog}: internal error: {type(e).__name__}: {e}{hint}")
        return self.failure_status
