"""Parameter coercion without pydantic, for Typer's parameters.

Typer 0.29 converts each command-line value through a pydantic ``TypeAdapter`` that it builds on first
use (``_TyperParameter.get_runtime_param``); importing pydantic for that costs more than everything else a
``workctl status`` does. Every workctl parameter is a str, int, float or bool (or one of those or None),
with at most a ``min``/``max``, so a stdlib coercer does the same job. ``without_pydantic`` hands one to
each parameter of a built Click command before Typer would build its adapter; a parameter of any other
type keeps Typer's own coercion, and a Typer without runtime params (older releases coerce through Click
types) is left alone. tests/test_cli_conventions.py checks that no command imports pydantic.
"""

from __future__ import annotations

import types
import typing
from typing import Any

_PLAIN = (str, int, float, bool)
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def _plain_type(annotation: Any) -> type | None:
    """str/int/float/bool for ``T`` or ``T | None``; None for anything else."""
    if annotation in _PLAIN:
        return annotation
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1 and members[0] in _PLAIN:
            return members[0]
    return None


def _make_runtime_param_classes() -> dict[type, Any] | None:
    """One RuntimeParam subclass per plain type (subclasses, not a new dataclass: creating a dataclass
    costs start-up time on every command)."""
    try:
        from typer._click.exceptions import BadParameter
        from typer._coercion import RuntimeParam
    except ImportError:  # a Typer that coerces through Click's own types: nothing to replace
        return None

    class PlainRuntimeParam(RuntimeParam):
        """The value as ``kind``, within the parameter's ``min``/``max``; Click's wording on failure."""

        kind: type = str

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            kind = self.kind
            if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
                converted = value
            elif kind is bool:
                text = str(value).strip().lower()
                if text not in _TRUE | _FALSE:
                    raise BadParameter(f"{value!r} is not a valid boolean.", ctx=ctx, param=param)
                converted = text in _TRUE
            else:
                try:
                    converted = kind(value)
                except (TypeError, ValueError):
                    noun = {int: "integer", float: "number"}.get(kind, kind.__name__)
                    raise BadParameter(f"{value!r} is not a valid {noun}.", ctx=ctx, param=param) from None
            low, high = getattr(self.parameter_info, "min", None), getattr(self.parameter_info, "max", None)
            if kind in (int, float) and ((low is not None and converted < low) or
                                         (high is not None and converted > high)):
                bounds = (f"{low}<=x<={high}" if low is not None and high is not None
                          else f"x>={low}" if low is not None else f"x<={high}")
                raise BadParameter(f"{converted} is not in the range {bounds}.", ctx=ctx, param=param)
            return converted

    return {kind: type(f"Plain{kind.__name__.title()}RuntimeParam", (PlainRuntimeParam,), {"kind": kind})
            for kind in _PLAIN}


_RUNTIME_PARAMS = _make_runtime_param_classes()


def _no_type(ctx: Any) -> None:
    return None


def _metavar(param: Any, kind: type) -> str:
    """``--type TYPE``, ``--limit N``, ``ORDER_ID``: the value's role, not its Python type."""
    opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    if not opts or param.param_type_name == "argument":
        return (param.name or "value").upper()
    if kind in (int, float):
        return "N"
    return max(opts, key=len)[2:].replace("-", "_").upper()


def _help_option(command: Any) -> list[Any]:
    """The command's ``-h/--help`` option, made now (Click makes it on first use, with Typer's coercion)."""
    if getattr(command, "_help_option", "absent") is not None or not command.add_help_option:
        return []
    from typer._click.decorators import help_option

    help_option(["-h", "--help"])(command)
    command._help_option = command.params.pop()
    return [command._help_option]


def without_pydantic(command: Any) -> Any:
    """Give every plain parameter of ``command`` (and of the subcommands it already holds) a stdlib
    coercer, and a metavar that names the value instead of its Python type. Returns ``command``."""
    for param in [*command.params, *_help_option(command)]:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None:
            continue
        kind = _plain_type(descriptor.annotation)
        if kind is None:
            continue
        if _RUNTIME_PARAMS is not None and getattr(param, "_runtime_param", "absent") is None:
            param._runtime_param = _RUNTIME_PARAMS[kind](parameter_info=descriptor.parameter_info,
                                                         annotation=descriptor.annotation)
        if param.metavar is None and not getattr(param, "is_flag", False):
            param.metavar = _metavar(param, kind)
        if param.param_type_name == "argument":  # its name already says it: no "<str>" after it
            param.display_type_rich = _no_type
    commands = getattr(command, "commands", None)
    if type(commands) is dict:  # a sub-app's commands; the root's lazy table converts each as it builds it
        for sub in commands.values():
            without_pydantic(sub)
    return command
