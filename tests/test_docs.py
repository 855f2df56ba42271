"""The README stays in step with the code: every command, every exit code, and CI's test command."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

import workctl.cli.app
from workctl.errors import EXIT_CODE_MEANINGS, ExitCode

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
TEST_ONE_LINER = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' "
                  "&& python -m pytest -q")


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


def command_paths() -> list[str]:
    """Every registered command as 'name' or 'group sub' (a group that runs on its own counts too)."""
    paths: list[str] = []

    def walk(command: Any, prefix: str) -> None:
        # Duck-typed: typer may vendor its own click, so isinstance(…, click.Group) is not reliable.
        if isinstance(getattr(command, "commands", None), dict):
            if prefix and getattr(command, "invoke_without_command", False):
                paths.append(prefix)
            for name, sub in command.commands.items():
                walk(sub, f"{prefix} {name}".strip())
        else:
            paths.append(prefix)

    walk(typer.main.get_command(workctl.cli.app.app), "")
    return paths


def test_walk_finds_the_commands() -> None:
    paths = command_paths()
    for expected in ("propose", "checkout", "submit", "approve", "types", "types show"):
        assert expected in paths


@pytest.mark.parametrize("path", command_paths())
def test_every_command_is_documented(readme: str, path: str) -> None:
    assert f"workctl {path}" in readme, f"README.md never mentions `workctl {path}`"


def exit_code_rows(readme: str) -> dict[int, list[str]]:
    """Rows of the README's exit-code table (the one headed `| code | name | meaning |`)."""
    lines = readme.splitlines()
    header = [i for i, line in enumerate(lines)
              if re.match(r"^\|\s*code\s*\|\s*name\s*\|\s*meaning\s*\|\s*$", line)]
    assert header, "README.md has no exit-code table headed | code | name | meaning |"
    rows: dict[int, list[str]] = {}
    for line in lines[header[0] + 2:]:  # skip the header and its |---| separator
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert cells[0].isdigit(), f"unexpected row in the exit-code table: {line!r}"
        rows[int(cells[0])] = cells[1:]
    return rows


@pytest.mark.parametrize("code", list(ExitCode), ids=lambda c: f"{c.value}-{c.name}")
def test_every_exit_code_is_in_the_table(readme: str, code: ExitCode) -> None:
    rows = exit_code_rows(readme)
    assert code.value in rows, f"exit code {code.value} ({code.name}) is missing from the README's table"
    cells = rows[code.value]
    assert cells[0] == code.name, f"exit code {code.value}: README says {cells[0]!r}, the code says {code.name!r}"
    assert cells[1] == EXIT_CODE_MEANINGS[code], (
        f"exit code {code.value}: README meaning {cells[1]!r} != EXIT_CODE_MEANINGS {EXIT_CODE_MEANINGS[code]!r}")


def test_no_undocumented_extra_exit_codes(readme: str) -> None:
    assert set(exit_code_rows(readme)) == {int(c) for c in ExitCode}


def test_readme_has_the_ci_test_command(readme: str) -> None:
    assert TEST_ONE_LINER in readme
    ci = CI_RUN.read_text(encoding="utf-8") if CI_RUN.exists() else ""
    commands = [line.strip() for line in ci.splitlines()
                if "pytest" in line and not line.lstrip().startswith("#")]
    if commands:
        for command in commands:
            assert command in readme, f"README.md lacks CI's test command {command!r}"
    else:
        assert "python -m pytest" in readme


def test_the_error_code_table_is_the_registry(readme: str) -> None:
    """The README's error-code table is exactly errors.ERROR_CODES (regenerate with python -m workctl.errors)."""
    from workctl.errors import error_code_table

    assert error_code_table() in readme


def test_the_exit_code_table_is_generated(readme: str) -> None:
    from workctl.errors import exit_code_table

    assert exit_code_table() in readme
