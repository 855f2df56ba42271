"""The Typer app: global options and command registration. Errors are turned into exit codes by the
boundary in ``commands._common``; ``main`` adds one-line usage errors and Ctrl-C for the real process."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import __version__
from ..commands import approve, cancel, checkout, demo, heartbeat, init, log, maintain, orders, propose, reject, release, retry
from ..commands import diff as diff_command
from ..commands import failures as failures_command
from ..commands import revert as revert_command
from ..commands import run as run_command
from ..commands import serve as serve_command
from ..commands import show, sources, status, submit, sync, tokens, transfer, types
from ..commands import why as why_command
from ..commands._common import Globals
from ..errors import ExitCode

app = typer.Typer(
    name="workctl",
    help="Work-order control plane for data syncs: propose, check out, submit, approve — on one SQLite file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals can hold secrets
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"workctl {__version__}\n")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option("--db", envvar="WORKCTL_DB", show_default=False,
                                           help="SQLite store (default ./workctl.db).")] = None,
    config: Annotated[str | None, typer.Option("--config", envvar="WORKCTL_CONFIG", show_default=False,
                                               help="Config file (default ./workctl.toml if present).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    ctx.obj = Globals(db=db, config=config)


app.add_typer(types.app, name="types")
app.add_typer(sources.app, name="sources")
app.add_typer(tokens.app, name="tokens")
for command in (init.init, demo.demo, propose.propose, checkout.checkout, heartbeat.heartbeat, release.release, submit.submit,
                approve.approve, reject.reject, cancel.cancel, status.status, orders.orders, show.show, log.log,
                maintain.maintain, retry.retry, sync.sync, run_command.run, diff_command.diff, revert_command.revert,
                why_command.why, failures_command.failures, serve_command.serve):
    app.command(command.__name__)(command)
app.command("export")(transfer.export)
app.command("import")(transfer.import_)


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

        error = Usage(exc.format_message())
        render.error(error, as_json="--json" in args or "--nl" in args)
        exit_code: int = exc.exit_code  # type: ignore[attr-defined]  # click's exceptions carry it (checked above)
        return int(ExitCode.USAGE) if exit_code == 2 else exit_code
    return code if isinstance(code, int) else 0

