"""The console-script entry, and a fast path for the agent commands that never imports Typer.

A shell agent starts one process per call (``checkout``, ``heartbeat``, ``release``, ``submit``,
``status --json``), and Typer 0.29 with its pydantic adapters costs more start-up time than the
whole command. So ``run`` first tries a tiny stdlib parser for exactly the forms those commands
accept; anything else (``--help``, ``--version``, an unknown or repeated option, a value that looks
like an option, ``--``, an out-of-range ``--ttl``, a human ``status``, every other command) goes to
the Typer app in ``workctl.cli`` untouched, which parses it again from scratch and reports usage
errors itself. Nothing has happened before the fallback, so it is always safe. ``WORKCTL_NO_FASTPATH=1``
sends everything to Typer (for comparisons: bench/startup_bench.py, tests/test_fastpath.py).

When the fast path handles a command it produces the same stdout, stderr and exit code as the Typer
command: both call the same library method and the same renderers below, and errors go through the
same ``render.error`` as ``commands._common.boundary`` (tests/test_fastpath.py runs every hot command
both ways). The parser mirrors Click's: group options (``--db``, ``--config``) only before the
command name, command options and arguments interspersed, ``--opt value`` and ``--opt=value``,
flags without a value, environment variables only when set and non-empty.

The hand-written token loop is deliberate: argparse accepts forms Click refuses (``--ag`` for
``--agent``, ``--json=x``) and refuses forms Click accepts, which would break identical behaviour.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from ..limits import MAX_TTL_SECONDS
from . import render

if TYPE_CHECKING:
    from ..api import Workctl

# Option -> (keyword, takes a value). Every hot command also has --help, which is not listed: it falls back.
_AGENT = {"--agent": ("agent", True), "--json": ("json_", False)}
_FENCED = {**_AGENT, "--lease-token": ("lease_token", True)}
# command -> (positional parameters as (keyword, required), options, environment defaults); checked
# against the Typer commands' own parameters by tests/test_fastpath.py, so the two cannot drift.
SYNTAX: dict[str, tuple[tuple[tuple[str, bool], ...], dict[str, tuple[str, bool]], dict[str, str]]] = {
    "checkout": ((("order_id", False),), {**_AGENT, "--type": ("type_name", True), "--ttl": ("ttl", True)},
                 {"agent": "WORKCTL_AGENT_ID"}),
    "heartbeat": ((("item_id", True),), {**_FENCED, "--ttl": ("ttl", True)},
                  {"agent": "WORKCTL_AGENT_ID", "lease_token": "WORKCTL_LEASE_TOKEN"}),
    "release": ((("item_id", True),), {**_FENCED, "--error": ("error", True)},
                {"agent": "WORKCTL_AGENT_ID", "lease_token": "WORKCTL_LEASE_TOKEN"}),
    "submit": ((("item_id", True),), {**_FENCED, "--result": ("result", True),
                                      "--idempotency-key": ("idempotency_key", True), "--next": ("next_", False),
                                      "--next-order": ("next_order", True), "--next-type": ("next_type", True),
                                      "--ttl": ("ttl", True)},
               {"agent": "WORKCTL_AGENT_ID", "lease_token": "WORKCTL_LEASE_TOKEN"}),
    # Only the JSON form: the human view renders with rich, and --watch/--interval loop; both fall back.
    "status": ((("order_id", False),), {"--json": ("json_", False)}, {}),
}
_GLOBAL = {"--db": "db", "--config": "config"}
# Options of the Typer commands that the fast path deliberately leaves to Typer (they render with rich).
FALLBACK_ONLY = {"status": frozenset({"--watch", "--interval", "--limit"})}


def _value_ok(value: str) -> bool:
    # Click would take "--json" as the value of "--agent --json"; rather than mirror that, fall back.
    return value == "-" or not value.startswith("-")


class _Fallback(Exception):
    """The form is not one the fast path handles: the Typer app parses it (and reports any error)."""


def _value(argv: list[str], i: int, eq: str, value: str) -> tuple[str, int]:
    """The option's value (``--opt=value`` or ``--opt value``) and the index of the last token used."""
    if eq:
        return value, i
    if i + 1 >= len(argv) or not _value_ok(argv[i + 1]):
        raise _Fallback
    return argv[i + 1], i + 1


def _group_options(argv: list[str], args: dict[str, Any]) -> int:
    """``--db``/``--config`` before the command name; returns the command name's index."""
    i = 0
    while i < len(argv) and argv[i][:1] == "-" and len(argv[i]) > 1:
        name, eq, value = argv[i].partition("=")
        key = _GLOBAL.get(name)
        if key is None or args[key] is not None:
            raise _Fallback
        args[key], i = _value(argv, i, eq, value)
        i += 1
    if i >= len(argv) or argv[i] not in SYNTAX:
        raise _Fallback
    return i


def _command_options(argv: list[str], i: int, options: dict[str, tuple[str, bool]], args: dict[str, Any]) -> list[str]:
    """The command's options (into ``args``) and its positional words, interspersed as Click allows."""
    words: list[str] = []
    seen: set[str] = set()
    while i < len(argv):
        token = argv[i]
        if token == "--":
            raise _Fallback
        if token[:1] == "-" and len(token) > 1:
            name, eq, value = token.partition("=")
            if name not in options or name in seen:
                raise _Fallback
            seen.add(name)
            keyword, takes_value = options[name]
            if takes_value:
                args[keyword], i = _value(argv, i, eq, value)
            elif eq:
                raise _Fallback
            else:
                args[keyword] = True
        else:
            words.append(token)
        i += 1
    return words


def _positionals(words: list[str], positional: tuple[tuple[str, bool], ...], args: dict[str, Any]) -> None:
    if len(words) > len(positional):
        raise _Fallback
    for index, (keyword, required) in enumerate(positional):
        if index >= len(words) and required:
            raise _Fallback
        args[keyword] = words[index] if index < len(words) else None


def _check(command: str, args: dict[str, Any]) -> None:
    """What Click would refuse (or render with rich) goes to the fallback, which says it properly."""
    ttl = args.get("ttl")
    if ttl is not None:
        if not (ttl.isascii() and ttl.isdigit() and len(ttl) <= 10 and 1 <= int(ttl) <= MAX_TTL_SECONDS):
            raise _Fallback  # Click's IntRange message comes from the fallback
        args["ttl"] = int(ttl)
    if command == "submit" and args["result"] is None:
        raise _Fallback  # a missing required option: Click says so
    if command == "status" and not args["json_"]:
        raise _Fallback  # the human status renders with rich


def parse(argv: list[str]) -> tuple[str, dict[str, Any]] | None:
    """(command, keyword arguments incl. db and config) for a form the fast path handles, else None."""
    args: dict[str, Any] = {"db": None, "config": None}
    try:
        i = _group_options(argv, args)
        command = argv[i]
        positional, options, envvars = SYNTAX[command]
        for keyword, takes_value in options.values():
            args[keyword] = None if takes_value else False
        _positionals(_command_options(argv, i + 1, options, args), positional, args)
        _check(command, args)
    except _Fallback:
        return None
    for keyword, variable in envvars.items():  # Click: an option's envvar counts only when non-empty
        if args[keyword] is None:
            args[keyword] = os.environ.get(variable) or None
    for key, variable in (("db", "WORKCTL_DB"), ("config", "WORKCTL_CONFIG")):
        if args[key] is None:
            args[key] = os.environ.get(variable) or None
    return command, args


# -- running a parsed command: one table of (call, render) per command -------------------------------
Call = Callable[["Workctl", dict[str, Any]], dict[str, Any]]
Show = Callable[[dict[str, Any], dict[str, Any]], None]


HANDLERS: dict[str, tuple[Call, Show]] = {
    "checkout": (lambda wc, a: wc.checkout(a["order_id"], agent=a["agent"], type_name=a["type_name"], ttl=a["ttl"]),
                 lambda r, a: render.show_checkout(r, a["json_"])),
    "heartbeat": (lambda wc, a: wc.heartbeat(a["item_id"], agent=a["agent"], ttl=a["ttl"],
                                             lease_token=a["lease_token"]),
                  lambda r, a: render.show_heartbeat(r, a["item_id"], a["json_"])),
    "release": (lambda wc, a: wc.release(a["item_id"], agent=a["agent"], error=a["error"],
                                         lease_token=a["lease_token"]),
                lambda r, a: render.show_release(r, a["item_id"], a["json_"])),
    "submit": (lambda wc, a: wc.submit(a["item_id"], a["result"], agent=a["agent"], lease_token=a["lease_token"],
                                       idempotency_key=a["idempotency_key"], next=a["next_"],
                                       next_order=a["next_order"], next_type=a["next_type"], ttl=a["ttl"]),
               lambda r, a: render.show_submit(r, a["item_id"], a["json_"])),
    "status": (lambda wc, a: wc.status(a["order_id"]), lambda r, a: render.print_json(r)),
}


def _execute(command: str, a: dict[str, Any]) -> None:
    from ..api import Workctl
    from ..config import load_config

    call, show = HANDLERS[command]
    if command == "submit":  # read before opening the store, as the Typer command does
        from .jsoninput import read_json

        a["result"] = read_json(a["result"], option="--result")
    with Workctl(a["db"], config=load_config(a["config"])) as wc:
        result = call(wc, a)
    show(result, a)


def main(argv: list[str] | None = None) -> int | None:
    """Run a hot command without Typer and return its exit code; None when Typer must handle ``argv``.

    Errors go through the same boundary as the Typer commands (``render.failure_exit_code``)."""
    parsed = parse(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        return None
    command, arguments = parsed
    try:
        _execute(command, arguments)
    except (Exception, KeyboardInterrupt) as exc:
        return render.failure_exit_code(exc, as_json=bool(arguments["json_"]))
    return 0


_TEXT_VARIABLES = ("WORKCTL_DB", "WORKCTL_CONFIG", "WORKCTL_AGENT_ID", "WORKCTL_LEASE_TOKEN")


def _not_text(argv: list[str]) -> str | None:
    """Which argument or variable is not valid UTF-8 text (Python hands such bytes over as lone
    surrogates, which no store can hold): said once, here, instead of failing deep inside."""
    for position, arg in enumerate(argv, start=1):
        if not _encodable(arg):
            return f"argument {position} ({arg.encode('utf-8', 'replace').decode()[:40]!r})"
    for name in _TEXT_VARIABLES:
        if not _encodable(os.environ.get(name, "")):
            return f"the environment variable {name}"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def run() -> None:
    """The ``workctl`` console script and ``python -m workctl``: the fast path, else the Typer app."""
    argv = sys.argv[1:]
    bad = _not_text(argv)
    if bad is not None:
        from ..errors import Usage

        sys.exit(render.failure_exit_code(Usage(f"{bad} is not valid UTF-8 text; pass text in the locale's "
                                                "UTF-8 encoding"), as_json="--json" in argv))
    code = None if os.environ.get("WORKCTL_NO_FASTPATH") else main(argv)
    if code is None:
        from .app import main as typer_main

        code = typer_main(argv)
    sys.exit(code)
