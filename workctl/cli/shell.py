"""Shell completion: the scripts ``workctl completion SHELL`` prints.

Each script calls ``workctl`` back with ``_WORKCTL_COMPLETE=complete_<shell>`` set; the Typer group then
answers with the words that fit (commands, options, their values) and exits, before any command runs
(``typer.core._main``). The fast path leaves such calls to the Typer app: they have no arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

COMPLETE_VARIABLE = "_WORKCTL_COMPLETE"


def completion_script(shell: str, shells: Sequence[str]) -> str:
    """The completion script for ``shell``; Usage (invalid_choice, exit 2) for a shell we do not support."""
    from ..errors import Usage

    if shell not in shells:
        raise Usage(f"no completion for shell {shell!r}; valid values: {', '.join(shells)}", code="invalid_choice",
                    hint=f"run: workctl completion {shells[0]}")
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="workctl", complete_var=COMPLETE_VARIABLE, shell=shell)
