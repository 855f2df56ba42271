"""The Typer app: global options and the command table. Errors are turned into exit codes by the boundary
in ``commands._common``; ``main`` adds one-line usage errors and Ctrl-C for the real process.

Start-up is most of what an operator's ``workctl status`` or a cron line costs, so the app loads only the
command it runs (bench/startup_bench.py measures every command):

- **Lazy commands.** ``COMMANDS`` names each command's module, its one-line summary and an example; the
  root group's command mapping imports a module the first time its command is looked up. ``workctl
  --help`` is written from the table alone (tests/test_cli_conventions.py checks each summary against the
  command's own docstring, so the two cannot drift).
- **No pydantic.** Typer 0.29 coerces every parameter through a pydantic ``TypeAdapter`` built on first
  use, which imports pydantic (about as long as the whole rest of a command). Our parameters are only
  str, int, float and bool (optionally None), so ``cli.coercion`` gives each one a stdlib coercer.
- **Plain help.** Help is Click's plain formatter (``rich_markup_mode=None``): no rich import, no
  ``<bool>`` metavars, and the same text on a terminal and in a pipe.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .. import __version__
from ..commands._common import example_epilog
from ..errors import ExitCode

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


class Command:
    """One entry of the command table: where the command lives, what ``workctl --help`` says about it,
    and the example its own help ends with. (A plain class: a dataclass costs a millisecond of start-up
    to create, on every command.)"""

    __slots__ = ("module", "attribute", "summary", "example", "hidden")

    def __init__(self, module: str, attribute: str, summary: str, example: str, hidden: bool = False) -> None:
        self.module, self.attribute, self.summary, self.example, self.hidden = \
            module, attribute, summary, example, hidden


COMMANDS: dict[str, Command] = {
    "init": Command("init", "init", "Create (or migrate) the store at --db and say where it is.",
                    "workctl --db /var/lib/workctl/sync.db init"),
    "demo": Command("demo", "demo", "Run the seed's sync end to end: 150 users from a built-in sample CRM, "
                    "synced and approved.", "workctl --db /tmp/demo.db demo"),
    "propose": Command("propose", "propose", "Propose a work order: validate the payload against the type's "
                       "schema and plan its items.",
                       "workctl propose user.data.sync --payload '{\"source\": \"crm\", \"user_ids\": [1, 2, 3]}'"),
    "checkout": Command("checkout", "checkout", "Lease the next item (highest priority, then oldest); exit 3 "
                        "when there is none.", "workctl checkout --type user.data.sync --agent bot-1 --json"),
    "heartbeat": Command("heartbeat", "heartbeat", "Extend your lease on an item.",
                         "WORKCTL_LEASE_TOKEN=$TOKEN workctl heartbeat 3f2a9c1e --ttl 600"),
    "release": Command("release", "release", "Give a lease back; the item is queued again (or failed, if "
                       "--error used its last attempt).",
                       "WORKCTL_LEASE_TOKEN=$TOKEN workctl release 3f2a9c1e --error 'source timed out'"),
    "submit": Command("submit", "submit", "Submit the result of a leased item (validated; on failure you keep "
                      "the lease).", "WORKCTL_LEASE_TOKEN=$TOKEN workctl submit 3f2a9c1e --result @result.json "
                      "--next --json"),
    "approve": Command("approve", "approve", "Apply every item's result in one transaction and print the diff.",
                       "workctl approve 9b1d47e2 --dry-run"),
    "reject": Command("reject", "reject", "Reject submitted work: for good, or back to the queue with --requeue "
                      "(attempts kept).", "workctl reject 9b1d47e2 --reason 'wrong field mapping' --requeue"),
    "cancel": Command("cancel", "cancel", "Withdraw an order: it and its open items become cancelled; agents "
                      "still working on them are stopped.", "workctl cancel 9b1d47e2 --reason 'duplicate' --yes"),
    "status": Command("status", "status", "Counts of orders and items per state and leases held; or one order: "
                      "its counts, progress and ETA, its items (a page of --limit) and last events.",
                      "workctl status 9b1d47e2"),
    "orders": Command("orders", "orders", "List orders, newest first.",
                      "workctl orders --state submitted --limit 20"),
    "show": Command("show", "show", "An order in full: payload, items with inputs and results, and its diff "
                    "once applied.", "workctl show 9b1d47e2 --json"),
    "log": Command("log", "log", "The audit trail of an order: every transition with actor, time and payload.",
                   "workctl log 9b1d47e2"),
    "maintain": Command("maintain", "maintain", "Reclaim expired leases, dead-letter failed items, purge old "
                        "idempotency keys and events, send webhooks.", "workctl maintain --dry-run"),
    "retry": Command("retry", "retry", "Put failed or dead-lettered items back in the queue with fresh attempts.",
                     "workctl retry --order 9b1d47e2"),
    "sync": Command("sync", "sync", "Fetch and submit batches until no work is left",
                    "workctl sync --source crm --users 1-150 --fields email,phone"),
    "run": Command("run", "run", "Check out items and run CMD for each; submit its stdout, release on failure.",
                   "workctl run --exec ./agent.sh --type task.batch --workers 4"),
    "diff": Command("diff", "diff", "Show the exact field-level changes approve would make (old -> new per user "
                    "and field).", "workctl diff 9b1d47e2"),
    "revert": Command("revert", "revert", "Restore the values an applied order overwrote, where they still hold "
                      "what it wrote (once only).", "workctl revert 9b1d47e2 --dry-run"),
    "why": Command("why", "why", "Show the history of a user's fields: each value, when, by which order, source "
                   "and agent.", "workctl why 42 --field email"),
    "failures": Command("failures", "failures", "The per-user error ledger: every failed user of every submitted "
                        "batch.", "workctl failures --order 9b1d47e2"),
    "serve": Command("serve", "serve", "Serve the seed's HTTP API (/api/agent/work/…) with bearer tokens from "
                     "`workctl tokens create`.", "workctl serve --host 127.0.0.1 --port 8080"),
    "export": Command("transfer", "export", "Write every order, item, event and record of the store as JSON "
                      "lines (for workctl import).", "workctl --db old.db export > store.jsonl"),
    "import": Command("transfer", "import_", "Load an export into a new, empty store, all or nothing (orders, "
                      "items, events, keys, tokens).",
                      "workctl --db postgresql://localhost/workctl import store.jsonl"),
    "config": Command("config", "config", "Show the effective configuration and where each value comes from.",
                      "workctl --config /etc/workctl.toml config --json"),
    "completion": Command("completion", "completion", "Print the shell completion script for bash, zsh or fish.",
                          "workctl completion bash > ~/.local/share/bash-completion/completions/workctl"),
    "types": Command("types", "app", "List registered order types, or show one's JSON Schema.",
                     "workctl types show user.data.sync"),
    "sources": Command("sources", "app", "External sources: list, check, and the built-in sample server.",
                       "workctl sources check crm"),
    "tokens": Command("tokens", "app", "Bearer tokens for `workctl serve` (shown once, stored hashed).",
                      "workctl tokens create --scope agent --name bot-1"),
}


def build(name: str) -> Any:
    """The Click command for ``name``, importing only its module."""
    from typer.main import get_command, get_group

    from .coercion import without_pydantic

    entry = COMMANDS[name]
    target = getattr(importlib.import_module(f"workctl.commands.{entry.module}"), entry.attribute)
    if isinstance(target, typer.Typer):
        command: Any = get_group(target)
        command.name = name
    else:
        single = typer.Typer(rich_markup_mode=None, add_completion=False)
        single.command(name, epilog=example_epilog(entry.example), hidden=entry.hidden)(target)
        command = get_command(single)
    if command.epilog is None:
        command.epilog = example_epilog(entry.example)
    _plain_help(command)
    return without_pydantic(command)


def _plain_help(command: Any) -> None:
    """Click's plain help for a sub-app (``types``, ``sources``, ``tokens``) and its commands, as for the rest."""
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None
    for sub in (command.commands.values() if type(getattr(command, "commands", None)) is dict else ()):
        _plain_help(sub)


class LazyCommands(dict):
    """The root group's ``commands``: every name of the table, each command built on first lookup.

    A ``dict`` (Click, Typer and our docs walk ``commands`` as one) whose reading methods go through the
    table; the dict itself holds only what was built."""

    def __getitem__(self, name: str) -> Any:
        if not dict.__contains__(self, name):
            if name not in COMMANDS:
                raise KeyError(name)
            dict.__setitem__(self, name, build(name))
        return dict.__getitem__(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in COMMANDS else default

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)

    def keys(self) -> Any:
        return list(COMMANDS)

    def items(self) -> Any:
        return [(name, self[name]) for name in COMMANDS]

    def values(self) -> Any:
        return [self[name] for name in COMMANDS]


class LazyGroup(TyperGroup):
    def __init__(self, **attrs: Any) -> None:
        from .coercion import without_pydantic

        super().__init__(**attrs)
        self.commands = LazyCommands()
        without_pydantic(self)

    def _main_shell_completion(self, ctx_args: Any, prog_name: str, complete_var: str | None = None) -> None:
        import os

        from .shell import COMPLETE_VARIABLE

        if os.environ.get(COMPLETE_VARIABLE):  # a completion script asking: register the shells' answerers
            from typer._completion_classes import completion_init

            completion_init()
        super()._main_shell_completion(ctx_args, prog_name, complete_var or COMPLETE_VARIABLE)

    def list_commands(self, ctx: Any) -> list[str]:
        return [name for name, entry in COMMANDS.items() if not entry.hidden]

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # From the table: listing every command must not import every command.
        rows = [(name, entry.summary) for name, entry in COMMANDS.items() if not entry.hidden]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name="workctl",
    cls=LazyGroup,
    help="Work-order control plane for data syncs: propose, check out, submit, approve — on one SQLite file "
    "or PostgreSQL.",
    epilog=example_epilog("workctl sync --source crm --users 1-150", "workctl approve 9b1d47e2"),
    invoke_without_command=True,
    add_completion=False,  # `workctl completion bash|zsh|fish` prints the script instead
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
    pretty_exceptions_show_locals=False,  # locals can hold secrets
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"workctl {__version__}\n")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option("--db", envvar="WORKCTL_DB", show_default=False, metavar="PATH|URL",
                                           help="Store: a SQLite path (default ./workctl.db) or a "
                                           "postgresql:// URL.")] = None,
    config: Annotated[str | None, typer.Option("--config", envvar="WORKCTL_CONFIG", show_default=False,
                                               metavar="PATH",
                                               help="Config file (default ./workctl.toml if present).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    from ..commands._common import Globals

    ctx.obj = Globals(db=db, config=config)
    if ctx.invoked_subcommand is None:  # bare `workctl`: the help, and success (as git and gh do)
        sys.stdout.write(ctx.get_help() + "\n")
        raise typer.Exit(0)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: usage errors as one line (JSON too under --json), Ctrl-C as 130."""
    from typer.main import get_command

    args = sys.argv[1:] if argv is None else argv
    try:
        code = get_command(app).main(args=args, prog_name="workctl", standalone_mode=False)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:
        # Click's usage errors (typer vendors click, so match the interface, not a private class).
        if not (hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)):
            raise
        from . import render
        from ..errors import Usage

        error = Usage(exc.format_message(), hint=_usage_hint(exc))
        render.error(error, as_json="--json" in args or "--nl" in args)
        exit_code: int = exc.exit_code  # type: ignore[attr-defined]  # click's exceptions carry it (checked above)
        return int(ExitCode.USAGE) if exit_code == 2 else exit_code
    return code if isinstance(code, int) else 0


def _usage_hint(exc: Exception) -> str:
    """The next step after a parse error: the help of the command that refused the arguments."""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "workctl"
    return f"see: {path} --help"
