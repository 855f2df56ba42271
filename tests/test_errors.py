"""Every machine error code workctl can raise is in the registry (errors.ERROR_CODES), with the exit code
of the exception class that carries it; the docs' tables are generated from that registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from workctl import errors
from workctl.errors import ERROR_CODES, EXIT_CODE_MEANINGS, ExitCode, WorkctlError

PACKAGE = Path(__file__).resolve().parents[1] / "workctl"


def error_classes() -> dict[str, type[WorkctlError]]:
    """Every WorkctlError subclass defined in workctl, by class name."""
    import importlib
    import pkgutil

    import workctl

    for info in pkgutil.walk_packages(workctl.__path__, "workctl."):
        if ".server" in info.name or info.name.endswith("__main__"):  # an optional extra; the entry runs on import
            continue
        importlib.import_module(info.name)
    found: dict[str, type[WorkctlError]] = {}
    stack: list[type[WorkctlError]] = [WorkctlError]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


def raised_codes() -> list[tuple[str, str, str, int]]:
    """(file:line, exception class name, code) for every ``SomeError(…, code="…")`` in workctl."""
    uses = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            for kw in node.keywords:
                if kw.arg == "code" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    uses.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", name, kw.value.value,
                                 node.lineno))
    return uses


def test_every_raised_code_is_registered_with_its_class_exit_code() -> None:
    classes = error_classes()
    problems = []
    for where, cls_name, code, _ in raised_codes():
        if code not in ERROR_CODES:
            problems.append(f"{where}: code {code!r} is not in errors.ERROR_CODES")
            continue
        cls = classes.get(cls_name)
        if cls is not None and ERROR_CODES[code][0] != cls.exit_code:
            problems.append(f"{where}: {cls_name} (exit {int(cls.exit_code)}) raises {code!r}, registered as "
                            f"exit {int(ERROR_CODES[code][0])}")
    assert problems == []


def test_every_default_code_is_registered() -> None:
    for cls in error_classes().values():
        assert cls.default_code in ERROR_CODES, cls.__name__
        assert ERROR_CODES[cls.default_code][0] == cls.exit_code, cls.__name__


def test_every_registered_code_is_used() -> None:
    used = {code for _, _, code, _ in raised_codes()} | {c.default_code for c in error_classes().values()}
    assert sorted(set(ERROR_CODES) - used) == []


@pytest.mark.parametrize("code", list(ExitCode), ids=lambda c: c.name)
def test_every_exit_code_has_a_meaning(code: ExitCode) -> None:
    assert EXIT_CODE_MEANINGS[code]


def test_the_registry_is_importable_without_the_cli() -> None:
    assert errors.ERROR_CODES is ERROR_CODES
