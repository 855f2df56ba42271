"""The generated docs are the code's: docs/reference/*.md regenerated into a temporary directory must equal
the committed pages, docs/tour.md must be the recording of the README's current tour, the generator refuses
a config key it has no words for, and the site builds with `mkdocs build --strict`."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest

from workctl.docsgen import REGENERATE, reference, tour

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference as `python -m workctl.docsgen` writes it now (the real command, in its own process)."""
    root = tmp_path_factory.mktemp("regenerated")
    proc = subprocess.run([sys.executable, "-m", "workctl.docsgen", "--only", "reference", "--root", str(root)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return root / "docs" / "reference"


@pytest.mark.parametrize("page", sorted(reference.PAGES))
def test_the_reference_is_up_to_date(regenerated: Path, page: str) -> None:
    committed = (REFERENCE / page).read_text(encoding="utf-8") if (REFERENCE / page).exists() else ""
    fresh = (regenerated / page).read_text(encoding="utf-8")
    if committed != fresh:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True),
                                                 f"docs/reference/{page} (committed)", "(the code now)"))[:40])
        pytest.fail(f"docs/reference/{page} is out of date: run `{REGENERATE}` and commit the result\n{diff}")


def test_the_cli_reference_has_every_command(regenerated: Path) -> None:
    page = (regenerated / "cli.md").read_text(encoding="utf-8")
    for words in reference.command_paths():
        assert f"## `{' '.join(['workctl', *words])}`" in page
    assert "\x1b[" not in page and "╭" not in page  # plain: no ANSI, no rich boxes
    assert page.count("Usage: workctl") == len(reference.command_paths())


def test_a_config_key_without_words_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    from workctl import config

    monkeypatch.setitem(config.KNOWN_KEYS, "lease", config.KNOWN_KEYS["lease"] | {"grace_seconds"})
    with pytest.raises(reference.Undocumented, match="grace_seconds.*workctl/docsgen/reference.py"):
        reference.config_page()


def test_the_recorded_tour_is_the_readmes_tour() -> None:
    """docs/tour.md shows the README's tour statements, all of them, in order (its outputs are the run's)."""
    recorded = (ROOT / "docs" / "tour.md").read_text(encoding="utf-8")
    position = 0
    for stmt in tour.tour_statements((ROOT / "README.md").read_text(encoding="utf-8")):
        shown = "\n".join(tour.shown_command(stmt))
        found = recorded.find(shown, position)
        assert found >= 0, (f"docs/tour.md was recorded from another tour (missing {stmt.splitlines()[0]!r}): "
                            f"run `{REGENERATE} --only tour` and commit the result")
        position = found + len(shown)
    assert "[exit " not in recorded  # every step of the recorded tour succeeded


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """Every page in the nav, every link resolving, no warning (mkdocs.yml sets strict: true)."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()
    assert (tmp_path / "site" / "tour" / "index.html").exists()
