"""The README and the guides stay in step with the code: the two set-up commands (CI's test command
verbatim), a README short enough to read, links that lead somewhere, every command covered by a guide,
and the exit/error tables living in the generated reference (tests/test_docs_reference.py keeps that
current)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from workctl.errors import EXIT_CODE_MEANINGS, ExitCode

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
ERRORS_PAGE = DOCS / "reference" / "errors.md"
CI_RUN = ROOT / ".ci" / "run"
INSTALL_ONE_LINER = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && workctl demo"
TEST_ONE_LINER = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' "
                  "&& python -m pytest -q")
GUIDES = [p for p in DOCS.glob("*.md") if p.name != "tour.md"]  # hand-written pages (the tour is recorded)


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def errors_page() -> str:
    return ERRORS_PAGE.read_text(encoding="utf-8")


def command_paths() -> list[str]:
    """Every command as 'name' or 'group sub', found the way the generated reference finds them (click's own
    listing, so lazily loaded groups count)."""
    from workctl.docsgen.reference import command_paths as walk

    return [" ".join(words) for words in walk() if words]


def test_walk_finds_the_commands() -> None:
    paths = command_paths()
    for expected in ("propose", "checkout", "submit", "approve", "types", "types show"):
        assert expected in paths


def test_the_set_up_is_two_commands(readme: str) -> None:
    """The set-up section has exactly two commands: install + demo, and CI's test command."""
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^```bash\n(.*?)^```$", setup, flags=re.S | re.M)
    assert [c.strip() for c in commands] == [INSTALL_ONE_LINER, TEST_ONE_LINER]


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


def test_the_readme_is_short(readme: str) -> None:
    assert len(readme.splitlines()) <= 300, "README.md grew past ~300 lines: move the detail to a guide in docs/"


def test_the_readme_tour_comes_before_the_reference_material(readme: str) -> None:
    """The path an operator follows (a source in workctl.toml -> sync -> diff -> approve) is near the top."""
    tour = readme.index("<!-- tour:start -->")
    assert tour < len(readme) // 2
    section = readme[tour:readme.index("<!-- tour:end -->")]
    positions = [section.index(step) for step in ("workctl.toml", "workctl sync", "workctl diff", "workctl approve")]
    assert positions == sorted(positions)
    assert "*/15 * * * *" in readme  # the cron recipe


@pytest.mark.parametrize("page", [README, *sorted(DOCS.rglob("*.md"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```$", "", text, flags=re.S | re.M)  # code is not links
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path = target.split("#", 1)[0]
        if not path or re.match(r"^[a-z]+:", path):
            continue
        if not (page.parent / path).exists():
            broken.append(target)
    assert broken == [], f"{page.name} links to missing files: {broken}"


@pytest.mark.parametrize("path", command_paths())
def test_every_command_is_in_a_guide(path: str) -> None:
    """Every command is explained in a guide (the generated reference has its --help on top of that)."""
    mentioned = [p.name for p in GUIDES if f"workctl {path}" in p.read_text(encoding="utf-8")]
    assert mentioned, f"no guide in docs/ mentions `workctl {path}`"


def exit_code_rows(page: str) -> dict[int, list[str]]:
    """Rows of the exit-code table (the one headed `| code | name | meaning |`)."""
    lines = page.splitlines()
    header = [i for i, line in enumerate(lines)
              if re.match(r"^\|\s*code\s*\|\s*name\s*\|\s*meaning\s*\|\s*$", line)]
    assert header, "docs/reference/errors.md has no exit-code table headed | code | name | meaning |"
    rows: dict[int, list[str]] = {}
    for line in lines[header[0] + 2:]:  # skip the header and its |---| separator
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert cells[0].isdigit(), f"unexpected row in the exit-code table: {line!r}"
        rows[int(cells[0])] = cells[1:]
    return rows


@pytest.mark.parametrize("code", list(ExitCode), ids=lambda c: f"{c.value}-{c.name}")
def test_every_exit_code_is_in_the_table(errors_page: str, code: ExitCode) -> None:
    rows = exit_code_rows(errors_page)
    assert code.value in rows, f"exit code {code.value} ({code.name}) is missing from the reference's table"
    cells = rows[code.value]
    assert cells[0] == code.name
    assert cells[1] == EXIT_CODE_MEANINGS[code]


def test_no_undocumented_extra_exit_codes(errors_page: str) -> None:
    assert set(exit_code_rows(errors_page)) == {int(c) for c in ExitCode}


def test_the_error_code_table_is_the_registry(errors_page: str) -> None:
    from workctl.errors import error_code_table

    assert error_code_table() in errors_page


def test_the_error_tables_live_in_the_reference_only(readme: str) -> None:
    """One generated copy: the README links to it instead of carrying a second one that could drift."""
    from workctl.errors import error_code_table, exit_code_table

    assert exit_code_table() not in readme and error_code_table().splitlines()[2] not in readme
    assert "docs/reference/errors.md" in readme
