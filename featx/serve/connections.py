"""Connection handling of `featx serve`: a deadline to send a whole request, and a cap on open
connections.

uvicorn times out idle keep-alive connections but not a client that sends a request slowly (a
partial header, a trickling body): a few thousand such sockets use up the process's file
descriptors and the service stops answering. Here every connection has `--read-timeout` seconds
to send each request, headers and body (then it is closed; 408 when nothing of it reached the
app), and at most `--max-connections` are open: a new connection beyond the cap closes the
oldest one still sending its request, or, when every open connection is busy with a request,
is answered 503 and closed at once. A flood of slow sockets thus costs neither descriptors nor
the answers of normal clients."""

from __future__ import annotations

import json
import logging
import resource
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

DESCRIPTORS_KEPT = 64  # file descriptors left for everything but connections (stores, models, logs, jobs)


def connection_cap(wanted: int, backlog: int = 0) -> int:
    """`wanted`, lowered to fit the process's file-descriptor limit (less `backlog` connections
    accepted at once before any can be closed)."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return wanted
    room = soft - DESCRIPTORS_KEPT - backlog
    if soft == resource.RLIM_INFINITY or room >= wanted:
        return wanted
    cap = max(1, room)
    log.warning("--max-connections %d lowered to %d: the process may open %d files", wanted, cap, soft)
    return cap


def _raw_response(status: str, code: str, message: str, retry: bool = False) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            + ("retry-after: 1\r\n" if retry else "") + "connection: close\r\n\r\n")
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the read deadline and the connection cap (set by `guarded_protocol`)."""

    cap = 512
    read_timeout_s = 30.0
    busy = b""  # the answers written by the protocol itself (the app never sees these connections)
    slow = b""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = None
        self._arm()
        if len(self.connections) > self.cap:
            self._make_room()

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._reading_since = time.monotonic()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._read_expired)

    def _reading(self) -> bool:
        """Still sending (or about to send) a request: nothing the app is working on."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return True
        return cycle.more_body and not cycle.response_started

    def _close(self, answer: bytes | None) -> None:
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if answer is not None and (cycle is None or cycle.response_complete):  # the app has no part in it
            self.transport.write(answer)
        self.transport.close()

    def _read_expired(self) -> None:
        self._deadline = None
        if self._reading():
            self._close(self.slow)

    def _make_room(self) -> None:
        waiting = [p for p in self.connections if p is not self and not p.transport.is_closing()
                   and getattr(p, "_reading", None) is not None and p._reading()]
        if waiting:
            min(waiting, key=lambda p: p._reading_since)._close(self.slow)
        else:
            self._close(self.busy)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection has its own deadline

    def connection_lost(self, exc) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)


def guarded_protocol(max_connections: int, read_timeout_s: float, backlog: int = 0) -> type[H11Protocol]:
    """The protocol class for uvicorn (`http=`), with this server's cap and deadline."""
    cap = connection_cap(max_connections, backlog)
    busy = _raw_response("503 Service Unavailable", "unavailable",
                         f"the server has its {cap} connections (--max-connections) busy; retry shortly", retry=True)
    slow = _raw_response("408 Request Timeout", "request_timeout",
                         f"the request was not sent within {read_timeout_s:g} s (--read-timeout)")
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"cap": cap, "read_timeout_s": float(read_timeout_s), "busy": busy, "slow": slow})
