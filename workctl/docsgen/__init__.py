"""The generated half of the docs: the reference pages under docs/reference/ and the recorded tour
(docs/tour.md). Nothing here is hand-written prose about the surface — every page is produced from the
thing it describes (the commands' ``--help``, the errors registry, the keys the config loaders accept,
the HTTP route table, a real run of the README's tour), so the docs cannot drift from the code: the
tests regenerate into a temporary directory and compare.

Regenerate everything with one command, from a checkout: ``python -m workctl.docsgen``.
"""

from __future__ import annotations

REGENERATE = "python -m workctl.docsgen"
