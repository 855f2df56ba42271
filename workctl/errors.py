"""The one exception hierarchy and the exit-code table (shared/design/CLI.md).

Core code raises these; the CLI's single error boundary (``workctl.cli``) turns them into a one-line
message on stderr, an ``{"error": …}`` document under ``--json``, and the exit code below.
"""

from __future__ import annotations

import sys
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    NO_WORK = 3
    NOT_FOUND = 4
    INVALID = 5
    CONFLICT = 6
    REMOTE = 7
    STORE = 8
    INTERRUPTED = 130
    BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (`| head`); said quietly


# What each code means, in the words of the README's table (kept here so the table can be generated).
EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "unexpected failure (a bug); set WORKCTL_DEBUG=1 for a traceback",
    ExitCode.USAGE: "bad flags or arguments",
    ExitCode.NO_WORK: "checkout found nothing to lease (run/sync with nothing to do exit 0)",
    ExitCode.NOT_FOUND: "unknown order id, item id or order type",
    ExitCode.INVALID: "payload or result failed validation; bad JSON input",
    ExitCode.CONFLICT: "illegal state transition, lease held by another agent, lease expired/lost, "
    "idempotency key reused with a different request",
    ExitCode.REMOTE: "a source or webhook failed after retries",
    ExitCode.STORE: "database locked past the timeout, corrupt, read-only, or created by a newer workctl",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.BROKEN_PIPE: "stdout was closed by its reader (e.g. piped into head); nothing more is printed",
}


class WorkctlError(Exception):
    """A failure the user can act on: a machine code, a message, optional details, an exit code."""

    exit_code: ExitCode = ExitCode.ERROR
    default_code: str = "error"

    def __init__(self, message: str, *, code: str | None = None, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details or []

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class Usage(WorkctlError):
    """Options that do not go together (Typer's own parse errors are exit 2 as well)."""

    exit_code = ExitCode.USAGE
    default_code = "usage"


class NoWork(WorkctlError):
    exit_code = ExitCode.NO_WORK
    default_code = "no_items_available"


class NotFound(WorkctlError):
    exit_code = ExitCode.NOT_FOUND
    default_code = "not_found"


class Invalid(WorkctlError):
    exit_code = ExitCode.INVALID
    default_code = "invalid"


class Conflict(WorkctlError):
    exit_code = ExitCode.CONFLICT
    default_code = "conflict"


class IllegalTransition(Conflict):
    default_code = "illegal_transition"


class LeaseLost(Conflict):
    default_code = "lease_lost"


class RemoteError(WorkctlError):
    exit_code = ExitCode.REMOTE
    default_code = "remote_error"


class StoreError(WorkctlError):
    exit_code = ExitCode.STORE
    default_code = "store_error"


def warn(message: str) -> None:
    """A warning for the person at the terminal (stderr), for the rare library-level problem that must
    not stop the command (a plugin that fails to load)."""
    sys.stderr.write(f"workctl: warning: {message}\n")
