"""Order types from the ``workctl.types`` entry-point group; a broken plugin is a warning, not a crash."""

from __future__ import annotations

import json
import sys

import pytest

from workctl.types import registry
from helpers import run

PLUGIN = '''
from workctl.types.base import OrderType, PlannedItem

class Echo(OrderType):
    name = "test.echo"
    description = "echo plugin"
    schema = {"type": "object", "required": ["words"], "properties": {"words": {"type": "array"}}}

    def plan(self, payload):
        for word in payload["words"]:
            yield PlannedItem(input={"word": word}, max_attempts=2)
'''


@pytest.fixture()
def plugin_path(tmp_path, monkeypatch):
    """A real distribution on sys.path declaring two entry points: one good, one broken."""
    (tmp_path / "echo_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "echo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[workctl.types]\necho = echo_plugin:Echo\nbroken = no_such_module_anywhere:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("WORKCTL_LOAD_PLUGINS", "1")
    monkeypatch.setattr(registry, "_plugins", None)
    monkeypatch.setattr(registry, "_cache", {})
    yield tmp_path
    sys.modules.pop("echo_plugin", None)


def test_plugin_type_is_listed_and_usable_and_broken_one_only_warns(plugin_path, tmp_path):
    db = tmp_path / "w.db"
    listed = run(db, "types", "--json")
    assert listed.exit_code == 0
    assert "test.echo" in {t["name"] for t in listed.json["types"]}
    assert "order type plugin 'broken' failed to load" in listed.stderr
    proposed = run(db, "propose", "test.echo", "--payload", json.dumps({"words": ["a", "b"]}), "--json")
    assert proposed.exit_code == 0, proposed.stderr
    assert [it["input"] for it in proposed.json["items"]] == [{"word": "a"}, {"word": "b"}]
    assert {it["max_attempts"] for it in proposed.json["items"]} == {2}


def test_builtin_lookup_does_not_load_plugins(plugin_path):
    registry.get_type("user.data.sync")
    assert registry._plugins is None
