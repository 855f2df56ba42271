"""workctl completion bash|zsh|fish"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ._common import boundary

SHELLS = ("bash", "zsh", "fish")


@boundary
def completion(shell: Annotated[str, typer.Argument(help="bash, zsh or fish.")]) -> None:
    """Print the shell completion script for bash, zsh or fish.

    Load it in the current shell with `source <(workctl completion bash)` (zsh: the same; fish:
    `workctl completion fish | source`), or write it where your shell looks for completions. Completing
    asks `workctl` itself (through the _WORKCTL_COMPLETE variable), so it always matches the installed
    version.
    """
    from ..cli.shell import completion_script

    render.line(completion_script(shell, SHELLS))
