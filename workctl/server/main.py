"""Running the API: ``serve`` opens (and migrates) the store first, so a store problem is exit 8 before
anything listens, then serves with uvicorn until SIGINT/SIGTERM, finishing in-flight requests."""

from __future__ import annotations

import contextlib
import signal
import socket
from typing import Any, Iterator

from ..api import Workctl
from ..clock import Clock
from ..config import Config
from ..errors import Usage

GRACEFUL_SHUTDOWN_SECONDS = 30


def serve(db: str | None, config: Config, *, host: str, port: int, clock: Clock | None = None) -> None:
    """Serve until stopped. SIGTERM (a service manager's stop) returns normally once every request in
    flight has been answered; SIGINT (Ctrl-C) does the same and then raises KeyboardInterrupt (exit 130)."""
    import uvicorn

    from .app import create_app

    class Server(uvicorn.Server):
        """uvicorn re-raises the stopping signal after its graceful shutdown, so the process would end
        "killed by SIGTERM"; a stop that finished everything it had in hand is a clean exit here."""

        stopped_by: list[int] = []

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            def handle(sig: int, frame: Any) -> None:
                self.stopped_by.append(sig)
                self.handle_exit(sig, frame)

            previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    with Workctl(db, config=config, clock=clock) as wc:
        wc.status()  # open, check and migrate the store now: problems are reported before listening
        path = wc.db_path
    listening = listen(host, port)
    app = create_app(path, config=config, clock=clock)
    server = Server(uvicorn.Config(app, host=host, port=port, log_level="info", server_header=False,
                                   timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS))
    try:
        server.run(sockets=[listening])
    finally:
        listening.close()
    if signal.SIGINT in server.stopped_by:
        raise KeyboardInterrupt


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here rather than by uvicorn: a port in use or a host that does not
    resolve is a usage error naming the address (exit 2), where uvicorn would log it and exit 1 or 3."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             proto=socket.IPPROTO_TCP)[0]
        # proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only when the socket's proto
        # is IPPROTO_TCP, and without it every response waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)
        except BaseException:
            sock.close()
            raise
        return sock
    except (OSError, UnicodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise Usage(f"cannot listen on {host[:80]}:{port}: {reason}; choose another --host or --port") from None
