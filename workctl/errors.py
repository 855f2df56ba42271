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


# What each code means (docs/reference/errors.md is generated from this: python -m workctl.docsgen).
EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "unexpected failure (a bug); set WORKCTL_DEBUG=1 for a traceback",
    ExitCode.USAGE: "bad flags or arguments, an unknown filter value, a missing lease token",
    ExitCode.NO_WORK: "checkout found nothing to lease (run/sync with nothing to do exit 0)",
    ExitCode.NOT_FOUND: "unknown order id, item id or order type",
    ExitCode.INVALID: "payload, result or config failed validation; bad JSON input",
    ExitCode.CONFLICT: "illegal state transition, lease held by another agent, lease expired/lost, order "
    "cancelled, idempotency key reused with a different request, auto-approve held by a rule",
    ExitCode.REMOTE: "a source, an agent command or a webhook failed: sync/run took an item they could not "
    "submit, or an order in their scope is failed or dead-lettered",
    ExitCode.STORE: "store missing, locked past the timeout, corrupt, read-only, out of disk space, replaced "
    "while in use, or created by a newer workctl",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C), or a confirmation answered no",
    ExitCode.BROKEN_PIPE: "stdout was closed by its reader (e.g. piped into head); nothing more is printed",
}


# Every machine code an error can carry: code -> (exit code, what it means). The docs' error-code table is
# generated from this, and tests/test_errors.py checks that every code raised anywhere is listed here with
# the exit code of the exception that carries it.
ERROR_CODES: dict[str, tuple[ExitCode, str]] = {
    # 130: the operator stopped it
    "declined": (ExitCode.INTERRUPTED, "a confirmation was answered no; nothing was done"),
    # 1: a bug
    "internal_error": (ExitCode.ERROR, "an unexpected failure inside workctl; WORKCTL_DEBUG=1 shows the traceback"),
    # 2: usage
    "usage": (ExitCode.USAGE, "bad flags or arguments"),
    "extra_missing": (ExitCode.USAGE, "the command needs an optional extra that is not installed"),
    "unauthorized": (ExitCode.USAGE, "HTTP API: the bearer token is missing, unknown, revoked or expired (401)"),
    "forbidden": (ExitCode.USAGE, "HTTP API: the token's scope does not allow this request (403)"),
    "idempotency_key_required": (ExitCode.USAGE, "HTTP API: this route needs an X-Idempotency-Key header (428)"),
    "body_too_large": (ExitCode.INVALID, "HTTP API: the request body is larger than the limit (413)"),
    "invalid_choice": (ExitCode.USAGE, "an unknown value for a filter option (the valid ones are listed)"),
    "lease_token_required": (ExitCode.USAGE, "a fenced write (heartbeat, release, submit) without a lease token"),
    # 3: no work
    "no_items_available": (ExitCode.NO_WORK, "checkout found nothing to lease"),
    # 4: not found
    "not_found": (ExitCode.NOT_FOUND, "the thing named does not exist"),
    "ambiguous_id": (ExitCode.NOT_FOUND, "an id prefix matches more than one order or item (the matches are listed)"),
    "order_not_found": (ExitCode.NOT_FOUND, "no order with that id"),
    "item_not_found": (ExitCode.NOT_FOUND, "no item with that id"),
    "token_not_found": (ExitCode.NOT_FOUND, "no API token with that name"),
    "route_not_found": (ExitCode.NOT_FOUND, "HTTP API: no such route (404) or method (405)"),
    "unknown_type": (ExitCode.NOT_FOUND, "no order type with that name"),
    # 5: invalid
    "invalid": (ExitCode.INVALID, "the input failed validation"),
    "invalid_json": (ExitCode.INVALID, "a JSON input could not be parsed"),
    "invalid_text": (ExitCode.INVALID, "a text value is not valid Unicode (a lone surrogate)"),
    "input_unreadable": (ExitCode.INVALID, "an input file could not be read"),
    "input_too_large": (ExitCode.INVALID, "an input is larger than its limit"),
    "payload_invalid": (ExitCode.INVALID, "the payload does not match the order type's schema"),
    "result_invalid": (ExitCode.INVALID, "the submitted result was refused (the lease is kept)"),
    "empty_plan": (ExitCode.INVALID, "the order plans no work items"),
    "field_not_allowed": (ExitCode.INVALID, "a field is not a column the sync may write"),
    "no_users_table": (ExitCode.INVALID, "the target database has no users table"),
    "target_missing": (ExitCode.INVALID, "the configured target database does not exist"),
    "target_unsupported": (ExitCode.INVALID, "the target's users is a view, or has no unique id column"),
    "apply_refused": (ExitCode.INVALID, "the target refused the apply (a constraint or trigger); nothing was "
                      "applied and the order is still submitted"),
    "wrong_order_type": (ExitCode.INVALID, "the order is of another type than the command handles"),
    "invalid_users": (ExitCode.INVALID, "--users selects no valid user ids"),
    "reason_required": (ExitCode.INVALID, "a rejection needs a reason"),
    "approval_check_failed": (ExitCode.INVALID, "the order type refused the approval"),
    "config_invalid": (ExitCode.INVALID, "the configuration file is malformed or has a bad value"),
    "config_missing": (ExitCode.INVALID, "the configuration file named does not exist"),
    "source_invalid": (ExitCode.INVALID, "a source's configuration is malformed"),
    "source_not_configured": (ExitCode.INVALID, "the source is not configured"),
    "secret_missing": (ExitCode.INVALID, "the environment variable holding a secret is not set"),
    "secret_invalid": (ExitCode.INVALID, "a secret holds characters it may not (control characters, …)"),
    # 6: conflict
    "conflict": (ExitCode.CONFLICT, "the request conflicts with the current state"),
    "illegal_transition": (ExitCode.CONFLICT, "the state transition is not allowed"),
    "order_not_submitted": (ExitCode.CONFLICT, "the order is not (yet) submitted"),
    "order_not_applied": (ExitCode.CONFLICT, "the order was not applied, so it cannot be reverted"),
    "order_changed": (ExitCode.CONFLICT, "the order changed while approve read it; nothing was applied"),
    "already_applied": (ExitCode.CONFLICT, "the order's results were already applied to the target"),
    "already_reverted": (ExitCode.CONFLICT, "the order was already reverted"),
    "not_retryable": (ExitCode.CONFLICT, "nothing to retry"),
    "not_leased": (ExitCode.CONFLICT, "the item is not leased"),
    "lease_lost": (ExitCode.CONFLICT, "the lease is gone"),
    "lease_held_by_other": (ExitCode.CONFLICT, "another agent holds the lease"),
    "lease_expired": (ExitCode.CONFLICT, "the lease expired"),
    "stale_lease_token": (ExitCode.CONFLICT, "the lease token is not the item's current one"),
    "idempotency_mismatch": (ExitCode.CONFLICT, "the idempotency key was used for a different request"),
    "token_exists": (ExitCode.CONFLICT, "an API token with that name exists already"),
    "order_cancelled": (ExitCode.CONFLICT, "the order was cancelled; its items take no more work"),
    "not_cancellable": (ExitCode.CONFLICT, "the order was applied, completed or rejected, so it cannot be cancelled"),
    "store_not_empty": (ExitCode.CONFLICT, "import needs a new, empty store (no orders, no API tokens)"),
    "approval_held": (ExitCode.CONFLICT, "auto-approve was held by an [approve] rule; the order stays submitted"),
    # 7: remote
    "remote_error": (ExitCode.REMOTE, "a source or webhook failed"),
    "sync_incomplete": (ExitCode.REMOTE, "sync took batches it could not submit"),
    "run_incomplete": (ExitCode.REMOTE, "run took items whose command failed or whose result was refused"),
    "source_unavailable": (ExitCode.REMOTE, "a source could not be reached (or answered 5xx) for a whole batch"),
    "order_failed": (ExitCode.REMOTE, "an order in the run's scope is failed or dead-lettered"),
    "source_unreachable": (ExitCode.REMOTE, "the source did not answer properly"),
    "source_auth": (ExitCode.REMOTE, "the source refused the credentials"),
    # 8: store
    "store_error": (ExitCode.STORE, "the store failed in an unexpected way"),
    "store_missing": (ExitCode.STORE, "no store at that path (only init, propose, sync proposing and demo create one)"),
    "store_locked": (ExitCode.STORE, "the store stayed locked past the busy timeout"),
    "store_read_only": (ExitCode.STORE, "the store, its -wal/-shm or its directory cannot be written"),
    "store_full": (ExitCode.STORE, "no space left on the store's disk (or the file-size limit is reached)"),
    "store_corrupt": (ExitCode.STORE, "the file is not a SQLite database"),
    "store_unavailable": (ExitCode.STORE, "the store cannot be opened (a directory, or not accessible)"),
    "store_replaced": (ExitCode.STORE, "the store file was deleted or replaced while the process had it open"),
    "store_too_new": (ExitCode.STORE, "the store was created by a newer workctl"),
}


# What to do next, per machine code: the second line of every error on stderr. A raise site that knows
# more (the id it looked for, the option that was missing) passes ``hint=`` instead.
# tests/test_cli_conventions.py checks that every code in ERROR_CODES has one.
NEXT_STEPS: dict[str, str] = {
    "declined": "run it again and answer y, or pass --yes",
    "internal_error": "run it again with WORKCTL_DEBUG=1 for a traceback, and report it",
    "usage": "see: workctl COMMAND --help",
    "extra_missing": "install the extra it names, e.g. pip install 'workctl[server]'",
    "unauthorized": "send a token from: workctl tokens create --scope agent",
    "forbidden": "use a token with the scope the route needs: workctl tokens create --scope operator",
    "idempotency_key_required": "send an X-Idempotency-Key header (any unique string per request)",
    "body_too_large": "send a smaller body, e.g. fewer user ids per order",
    "invalid_choice": "pick one of the values listed",
    "lease_token_required": "pass the token from checkout: export WORKCTL_LEASE_TOKEN=… or --lease-token",
    "no_items_available": "nothing to do now; see what is open with: workctl status",
    "not_found": "check the name; list what exists with: workctl orders",
    "ambiguous_id": "give more characters of the id (or the full id shown by: workctl orders)",
    "order_not_found": "list orders with: workctl orders",
    "item_not_found": "list an order's items with: workctl status ORDER_ID",
    "token_not_found": "list tokens with: workctl tokens list",
    "route_not_found": "see the routes in /openapi.json",
    "unknown_type": "list order types with: workctl types",
    "invalid": "fix the input named above and run it again",
    "invalid_json": "fix the JSON at the position named above (inline, @file.json or - for stdin)",
    "invalid_text": "pass the value as UTF-8 text",
    "input_unreadable": "check the path after @ and its permissions",
    "input_too_large": "split the input (e.g. fewer user ids per order)",
    "payload_invalid": "fix the fields listed; the schema is shown by: workctl types show TYPE",
    "result_invalid": "fix the result and submit again (you still hold the lease; heartbeat if it takes long)",
    "empty_plan": "give the order at least one unit of work (e.g. a non-empty user_ids)",
    "field_not_allowed": "drop the field, or allow it in [target] allow_fields of workctl.toml",
    "no_users_table": "point [target] db (or WORKCTL_TARGET_DB) at the database with the users table",
    "target_missing": "check [target] db in workctl.toml (or WORKCTL_TARGET_DB); see: workctl config",
    "target_unsupported": "sync into a table with a unique id column",
    "apply_refused": "fix the value in the source (or the constraint), then: workctl reject ORDER_ID --requeue",
    "wrong_order_type": "use the command for that order's type (see: workctl show ORDER_ID)",
    "invalid_users": "give --users as all, ranges like 1-150,200, or @ids.txt",
    "reason_required": "say why with --reason TEXT",
    "approval_check_failed": "see the order with: workctl show ORDER_ID",
    "config_invalid": "fix the file named above; see the effective configuration with: workctl config",
    "config_missing": "check --config / WORKCTL_CONFIG, or leave both unset to use ./workctl.toml",
    "source_invalid": "fix the [sources.NAME] table named above; see: workctl sources list",
    "source_not_configured": "add a [sources.NAME] table to workctl.toml; see: workctl sources list",
    "secret_missing": "export the environment variable named above",
    "secret_invalid": "set the variable to the token alone, without newlines or control characters",
    "conflict": "see the current state with: workctl status",
    "illegal_transition": "see the order's state with: workctl status ORDER_ID",
    "order_not_submitted": "wait until every item is submitted; progress: workctl status ORDER_ID",
    "order_not_applied": "only an applied order can be reverted; see: workctl show ORDER_ID",
    "order_changed": "run the command again",
    "already_applied": "nothing to do; see the diff with: workctl show ORDER_ID",
    "already_reverted": "nothing to do; see: workctl log ORDER_ID",
    "not_retryable": "see which items failed with: workctl status ORDER_ID",
    "not_leased": "check the item out first: workctl checkout",
    "lease_lost": "check out again with: workctl checkout",
    "lease_held_by_other": "act as the agent that checked it out: --agent ID or WORKCTL_AGENT_ID",
    "lease_expired": "check out again with: workctl checkout (heartbeat sooner next time)",
    "stale_lease_token": "the item was checked out again since; use the token of the latest checkout",
    "idempotency_mismatch": "use a new --idempotency-key for a different request",
    "token_exists": "choose another --name, or revoke the old one: workctl tokens revoke NAME",
    "order_cancelled": "stop working on it; check out other work with: workctl checkout",
    "not_cancellable": "see the order's state with: workctl status ORDER_ID",
    "store_not_empty": "import into a new store: --db new.db (or a new PostgreSQL database)",
    "approval_held": "review the diff and approve by hand: workctl approve ORDER_ID",
    "remote_error": "check the source or webhook named above; see: workctl sources check NAME",
    "sync_incomplete": "see what failed with: workctl failures; then run sync again",
    "run_incomplete": "see the failed items with: workctl status ORDER_ID; then run again",
    "source_unavailable": "check the source with: workctl sources check NAME; then run sync again",
    "order_failed": "retry it with: workctl retry --order ORDER_ID, or cancel it: workctl cancel ORDER_ID",
    "source_unreachable": "check the source's base_url and that it is up: workctl sources list",
    "source_auth": "check the token in the environment variable the source names: workctl sources list",
    "store_error": "run it again with WORKCTL_DEBUG=1 and report it",
    "store_missing": "create it with: workctl init (or point --db / WORKCTL_DB at the right store)",
    "store_locked": "wait for the other writer, or raise its busy timeout; see who holds it with: fuser STORE",
    "store_read_only": "make the store file and its directory writable by this user",
    "store_full": "free disk space (workctl maintain prunes old events), then run it again",
    "store_corrupt": "check --db points at a workctl store; restore from a backup if it does",
    "store_unavailable": "check --db / WORKCTL_DB and that the database is up",
    "store_replaced": "run the command again: it will open the new file",
    "store_too_new": "upgrade workctl: pip install -U workctl",
}


class WorkctlError(Exception):
    """A failure the user can act on: a machine code, a message, optional details, an exit code."""

    exit_code: ExitCode = ExitCode.ERROR
    default_code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, details: list[dict[str, Any]] | None = None,
                 hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details or []
        self._hint = hint

    @property
    def hint(self) -> str:
        """What to do next: the raiser's own words, else the registry's for the error's code."""
        return getattr(self, "_hint", None) or NEXT_STEPS.get(self.code, "")

    # True when the JSON error document is already part of what was printed (an agent run's report).
    json_shown: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def run_error(report: dict[str, Any], *, json_shown: bool = False) -> WorkctlError | None:
    """The error an agent run's report carries (``report["error"]``), with the exit code its code is
    registered with; None for a run that succeeded. Surfaces raise it after printing the report."""
    found = report.get("error")
    if not found:
        return None
    error = WorkctlError(found["message"], code=found["code"], details=found.get("details"))
    error.exit_code = ERROR_CODES.get(found["code"], (ExitCode.ERROR, ""))[0]
    error.json_shown = json_shown
    return error


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


class Unauthorized(WorkctlError):
    """The HTTP API's bearer token is missing, unknown, revoked or expired (HTTP 401). The CLI never
    raises it; its exit code is the one a script would see for a refused credential: usage."""

    exit_code = ExitCode.USAGE
    default_code = "unauthorized"


class Forbidden(WorkctlError):
    """The token is valid but its scope does not allow the request (HTTP 403)."""

    exit_code = ExitCode.USAGE
    default_code = "forbidden"


class Declined(WorkctlError):
    """The operator answered no to a confirmation: nothing was done."""

    exit_code = ExitCode.INTERRUPTED
    default_code = "declined"


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


def exit_code_table() -> str:
    """The docs' exit-code table (Markdown), generated from ExitCode and EXIT_CODE_MEANINGS."""
    rows = ["| code | name | meaning |", "|---|---|---|"]
    rows += [f"| {int(code)} | {code.name} | {EXIT_CODE_MEANINGS[code]} |" for code in ExitCode]
    return "\n".join(rows)


def error_code_table() -> str:
    """The docs' error-code table (Markdown), generated from ERROR_CODES, ordered by exit code."""
    rows = ["| error code | exit | meaning |", "|---|---|---|"]
    for code, (exit_code, meaning) in sorted(ERROR_CODES.items(), key=lambda kv: (int(kv[1][0]), kv[0])):
        rows.append(f"| `{code}` | {int(exit_code)} | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m workctl.errors: print both tables for the docs
    print(exit_code_table() + "\n\n" + error_code_table())
