"""The README's five-minute tour, run for real: extracted from the README, executed in one bash process
against a temporary directory (a SQLite store there, or the store ``WORKCTL_DB`` names), and written down
as a terminal session in docs/tour.md.

The tour is the README's ```` ```bash ```` blocks between ``<!-- tour:start -->`` and ``<!-- tour:end -->``.
Each block is cut into statements the way bash reads them (a statement ends where ``bash -n`` accepts the
text so far, so heredocs and multi-line quotes stay whole); all statements run in ONE shell, so variables
and the background sample CRM carry from one to the next, and each statement's output (stdout and stderr,
in the order written) and exit status are recorded apart. Ids, lease tokens, ports, the directory and
measured speeds are normalised, and the clock is pinned (``WORKCTL_NOW``), so a re-run writes the same
session.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import REGENERATE

START, END = "<!-- tour:start -->", "<!-- tour:end -->"
PINNED_NOW = "2026-03-02T09:00:00Z"
_MARK = "\x1e"  # record separator: never in workctl's output


@dataclass
class Step:
    command: str        # the statement as the README has it (comment lines before it included)
    output: str
    exit_code: int


def blocks(readme: str) -> list[str]:
    """The tour's bash blocks, in order."""
    if START not in readme or END not in readme:
        raise ValueError(f"README.md has no tour between {START} and {END}")
    section = readme.split(START, 1)[1].split(END, 1)[0]
    return re.findall(r"^```bash\n(.*?)^```$", section, flags=re.S | re.M)


def _is_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


def _complete(text: str) -> bool:
    """bash would run ``text`` as it stands: it parses, and no here-document is still waiting for its end
    (bash -n only warns about that)."""
    check = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    return check.returncode == 0 and "here-document" not in check.stderr


def statements(block: str) -> list[str]:
    """``block`` cut into the statements bash would read one at a time (comments stay with the next one)."""
    found: list[str] = []
    pending: list[str] = []
    for line in block.splitlines():
        pending.append(line)
        if all(_is_comment(part) for part in pending):
            continue
        if _complete("\n".join(pending) + "\n"):
            found.append("\n".join(pending).strip("\n"))
            pending = []
    if not all(_is_comment(part) for part in pending):
        raise ValueError(f"the tour's block ends inside a statement: {pending!r}")
    return found


def tour_statements(readme: str) -> list[str]:
    return [stmt for block in blocks(readme) for stmt in statements(block)]


def page_statements(page: str) -> list[str]:
    """Every statement of every bash block of a guide whose examples are pasted in order (the tests run them)."""
    return [stmt for block in re.findall(r"^```bash\n(.*?)^```$", page, flags=re.S | re.M)
            for stmt in statements(block)]


def _shim(directory: Path) -> None:
    """``workctl`` on PATH as this interpreter's ``python -m workctl``, whether or not the console script is
    installed (it runs the same entry point)."""
    shim = directory / "workctl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m workctl "$@"\n')
    shim.chmod(0o755)


def tour_env(bin_dir: Path, extra: dict[str, str] | None = None, *, pin_clock: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKCTL_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(Path(__file__).resolve().parents[2]),
               WORKCTL_LOAD_PLUGINS="0", COLUMNS="100", NO_COLOR="1", TERM="dumb")
    if pin_clock:
        env["WORKCTL_NOW"] = PINNED_NOW
    env.update(extra or {})
    return env


def run(stmts: list[str], workdir: Path, *, env: dict[str, str] | None = None, timeout: float = 600,
        pin_clock: bool = True) -> list[Step]:
    """Run the statements in one bash in ``workdir``; what each printed, and its exit status. ``pin_clock``
    pins ``WORKCTL_NOW`` for the whole run (examples that move time themselves pass False)."""
    script = ["exec 2>&1"]
    for n, stmt in enumerate(stmts):
        script += [f"printf '{_MARK}S{n}{_MARK}\\n'", stmt, f"printf '{_MARK}E{n} %d{_MARK}\\n' $?"]
    with tempfile.TemporaryDirectory() as bin_dir:
        _shim(Path(bin_dir))
        proc = subprocess.Popen(["bash", "-c", "\n".join(script) + "\n"], cwd=workdir, stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=tour_env(Path(bin_dir), env, pin_clock=pin_clock),
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            # The tour starts a background sample CRM and stops it itself; if a statement failed before
            # that, it is still running in the shell's process group (ours: start_new_session).
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = out.decode("utf-8", "replace")
    steps = []
    for n, stmt in enumerate(stmts):
        match = re.search(f"{_MARK}S{n}{_MARK}\\n(.*?){_MARK}E{n} (\\d+){_MARK}\\n", text, flags=re.S)
        if not match:
            raise RuntimeError(f"the tour stopped at statement {n + 1}:\n{stmt}\n--- output ---\n{text[-3000:]}")
        steps.append(Step(stmt, match.group(1), int(match.group(2))))
    return steps


_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def normalise(text: str, workdir: Path) -> str:
    """The same text for every run: ids in order of appearance, tokens, ports, paths and speeds fixed."""
    ids: dict[str, str] = {}
    for found in _UUID.findall(text):
        ids.setdefault(found, str(uuid.uuid5(uuid.NAMESPACE_URL, f"workctl-tour-{len(ids) + 1}")))
    for real, fake in ids.items():
        text = text.replace(real, fake)
        # Short forms (a table's "18935c0a-2ec5-…", an 8-character prefix) of a known id.
        def shorten(match: re.Match[str], fake: str = fake) -> str:
            return fake[: len(match.group())]

        text = re.sub(rf"\b{real[:8]}[0-9a-f-]*", shorten, text)
    text = re.sub(r"\b[0-9a-f]{32}\b", "0123456789abcdef0123456789abcdef", text)
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:8765", text)
    text = text.replace(str(workdir.resolve()), "/home/you").replace(str(workdir), "/home/you")
    text = re.sub(r"\d+(\.\d+)? users/s\)", "2000 users/s)", text)
    # the sync report's timing rows, in a boxed (terminal) or a plain (piped) table
    text = re.sub(r"(?m)^(seconds\s+(?:│ )?)[\d.]+", r"\g<1>0.250", text)
    text = re.sub(r"(?m)^(users/s\s+(?:│ )?)[\d.]+", r"\g<1>600.0", text)
    text = re.sub(r"\b\d+(\.\d+)? ms\b", "4.0 ms", text)
    return "\n".join(line.rstrip() for line in text.splitlines())


def shown_command(command: str) -> list[str]:
    """A statement as a terminal shows it: its comments, then ``$`` and ``>`` continuation prompts."""
    lines = command.splitlines()
    first = next(n for n, line in enumerate(lines) if not _is_comment(line))
    shown = lines[:first] + ["$ " + lines[first]] + ["> " + line for line in lines[first + 1:]]
    return [line.rstrip() for line in shown]


def render(steps: list[Step], workdir: Path) -> str:
    out = [f"<!-- generated by `{REGENERATE}`: the README's tour, run; do not edit by hand -->\n",
           "# The five-minute tour, recorded\n",
           "The README's tour as it ran: every command of its code blocks, in one shell, each followed by what "
           "it printed (stdout and stderr as they interleave). Ids, ports, paths and speeds are normalised and "
           f"the clock is pinned (`WORKCTL_NOW={PINNED_NOW}`), so the session reads the same on every re-run. "
           f"`{REGENERATE}` records it again; the tests run the same tour on SQLite and on PostgreSQL.\n",
           "```console"]
    session: list[str] = []
    for step in steps:
        session += shown_command(step.command)
        if step.output.strip("\n"):
            session.append(step.output.strip("\n"))
        if step.exit_code:
            session.append(f"[exit {step.exit_code}]")
    # One pass over the whole session, so an id keeps one stand-in from the step that made it to the last.
    return "\n".join([*out, normalise("\n".join(session), workdir), "```"]) + "\n"


def record(readme: Path, *, env: dict[str, str] | None = None) -> tuple[list[Step], str]:
    """Run the README's tour in a new temporary directory; the steps and the rendered session."""
    stmts = tour_statements(readme.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="workctl-tour-") as tmp:
        workdir = Path(tmp)
        steps = run(stmts, workdir, env=env)
        return steps, render(steps, workdir)


def write(readme: Path, out: Path) -> Path:
    steps, text = record(readme)
    failed = [s for s in steps if s.exit_code]
    if failed:
        raise RuntimeError(f"the tour failed at:\n{failed[0].command}\n{failed[0].output}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
