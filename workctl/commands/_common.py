"""What every command shares: global options, the Workctl it works on, and the error boundary."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, TypeVar

import typer

from ..cli import render
from ..limits import MAX_LIST_LIMIT, MAX_TTL_SECONDS

if TYPE_CHECKING:
    from ..api import Workctl

F = TypeVar("F", bound=Callable[..., Any])

Json = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")]
Nl = Annotated[bool, typer.Option("--nl", help="Print one JSON object per line (newline-delimited JSON).")]
Agent = Annotated[str | None, typer.Option("--agent", envvar="WORKCTL_AGENT_ID", show_default=False,
                                           help="Agent id (default USER@HOSTNAME).")]
IdempotencyKey = Annotated[str | None, typer.Option(
    "--idempotency-key", help="Replays with the same key and request return the stored response.")]
LeaseToken = Annotated[str | None, typer.Option(
    "--lease-token", envvar="WORKCTL_LEASE_TOKEN", show_default=False,
    help="Fence with the token from checkout: refused if the item was checked out again since.")]
Ttl = Annotated[int | None, typer.Option("--ttl", min=1, max=MAX_TTL_SECONDS,
                                         help="Lease length in seconds (default 600).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Progress as plain lines, one more as each batch "
                                       "starts (also on a terminal).")]
Limit = Annotated[int, typer.Option("--limit", min=1, max=MAX_LIST_LIMIT,
                                    help="At most this many rows; a cut listing says how many more there are.")]
DEFAULT_LIMIT = 100  # every listing's --limit default, so `orders`, `log` and `failures` agree
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation on a terminal.")]


def example_epilog(*examples: str) -> str:
    """A help page's closing example; ``\\b`` keeps Click from re-wrapping the command line."""
    return "\b\nExample:\n" + "\n".join(f"  $ {example}" for example in examples)


def interactive() -> bool:
    """A person at a terminal: stdin and stdout both a TTY (scripts and pipes are never asked)."""
    import sys

    return sys.stdin.isatty() and sys.stdout.isatty()


def confirm(question: str, lines: list[str], *, yes: bool) -> None:
    """Show what will happen and ask ``[y/N]`` on a terminal (unless --yes); a no raises Declined (exit 130)."""
    if yes or not interactive():
        return
    import sys

    from ..errors import Declined

    for text in lines:
        render.line(text)
    sys.stdout.write(f"{question} [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise Declined("not confirmed; nothing was done (use --yes to skip the question)")


@dataclass(frozen=True)
class Globals:
    db: str | None = None
    config: str | None = None


def open_workctl(ctx: typer.Context) -> Workctl:
    from ..api import Workctl
    from ..config import load_config

    options: Globals = ctx.obj or Globals()
    return Workctl(options.db, config=load_config(options.config))


def boundary(fn: F) -> F:
    """The CLI's one error boundary: WorkctlError → message (+ JSON error document) + its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("json_") or kwargs.get("nl"))
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            raise typer.Exit(render.failure_exit_code(exc, as_json=as_json)) from None

    return wrapper  # type: ignore[return-value]


def finite(value: float | None) -> float | None:
    """A float option's callback: Click's FloatRange lets NaN through (every comparison with it is
    false), and inf would overflow a sleep or a deadline; both are usage errors (exit 2)."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


MAX_PARALLEL = 1024          # threads or processes at once: more is a typo, not a plan
MAX_WAIT_SECONDS = 86_400    # polling intervals and command timeouts
