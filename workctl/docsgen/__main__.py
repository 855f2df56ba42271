"""``python -m workctl.docsgen [--root DIR] [--only reference|tour]``: regenerate docs/reference/*.md and
docs/tour.md in the checkout (or under another root, as the drift tests do)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import reference, tour

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workctl.docsgen", description=__doc__)
    parser.add_argument("--root", type=Path, default=REPO,
                        help="write DIR/docs/… (default: this checkout); the README is always read from the checkout")
    parser.add_argument("--only", choices=("reference", "tour"), help="regenerate one part only")
    args = parser.parse_args(argv)
    written: list[Path] = []
    if args.only in (None, "reference"):
        written += reference.write_all(args.root / "docs" / "reference")
    if args.only in (None, "tour"):
        written.append(tour.write(REPO / "README.md", args.root / "docs" / "tour.md"))
    for path in written:
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
