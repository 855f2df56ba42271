"""``workctl serve``: the seed's HTTP API over the library (Starlette + uvicorn, the ``server`` extra).

Nothing here decides anything: each route checks the caller's token and scope, parses its input, calls
one ``Workctl`` method and returns the ``--json`` shape (or the ``{"error": …}`` document). Importing this
package needs ``pip install 'workctl[server]'``; no other command imports it.
"""
