"""The HTTP/1.1 protocol every connection runs: uvicorn's h11 one, bounded in what a client
can make the server hold before the app sees a request. A request head past
`max_header_bytes` is 431 (and no more of it is buffered), a head that has not arrived
within `header_timeout_s` is 408, and a body that has not within `body_timeout_s` of its
head ends the connection. These answers come before any middleware, API keys included, so a client
without a key can hold neither the server's memory nor its connections."""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from service.config import Settings
from service.http.errors import error_response


def head_bytes(request: h11.Request) -> int:
    """A request head's size as a client writes it: request line, header lines, blank line."""
    line = len(request.method) + len(request.target) + len(b" HTTP/1.1\r\n") + 1
    return line + sum(len(name) + len(value) + len(b": \r\n") for name, value in request.headers.raw_items()) + 2


class HeadBoundConnection(h11.Connection):
    """h11's server side, refusing a request head past `max_bytes` (431) whether it comes in
    pieces (h11 then buffers no more of it than that and one read) or whole, and keeping
    the error it refused the client with."""

    def __init__(self, max_bytes: int):
        super().__init__(h11.SERVER, max_incomplete_event_size=max_bytes)
        self.max_bytes = max_bytes
        self.refusal: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            event = super().next_event()
            if isinstance(event, h11.Request) and head_bytes(event) > self.max_bytes:
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
            return event
        except h11.RemoteProtocolError as err:
            self.refusal = err
            raise


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the bounds above; built per connection by uvicorn, given
    the settings with functools.partial (service.app)."""

    def __init__(self, config, server_state, app_state, _loop=None, *, settings: Settings):
        super().__init__(config, server_state, app_state, _loop)
        self.settings = settings
        self.conn = HeadBoundConnection(settings.server.max_header_bytes)
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.follow_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.head_timer = cancelled(self.head_timer)
        self.body_timer = cancelled(self.body_timer)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self.follow_reading()

    def follow_reading(self) -> None:
        """Time the part of a request the connection now waits for: a head (from its first
        byte, or from connecting), then its body. Between requests uvicorn's keep-alive
        timer bounds the wait instead."""
        state, closing = self.conn.their_state, self.transport.is_closing()
        reading_head = state is h11.IDLE and self.timeout_keep_alive_task is None and not closing
        self.head_timer = self.timer(self.head_timer, reading_head, self.settings.server.header_timeout_s,
                                     self.head_timed_out)
        self.body_timer = self.timer(self.body_timer, state is h11.SEND_BODY and not closing,
                                     self.settings.server.body_timeout_s, self.transport.close)

    def timer(self, running: asyncio.TimerHandle | None, wanted: bool, seconds: float,
              callback) -> asyncio.TimerHandle | None:
        """The timer to keep: the one `running` (its deadline unchanged), or a new one."""
        if not wanted:
            return cancelled(running)
        return running or self.loop.call_later(seconds, callback)

    def head_timed_out(self) -> None:
        self.refuse(408, "request_timeout", f"the request head did not arrive within "
                    f"{self.settings.server.header_timeout_s:g} s (server.header_timeout_s)")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 could not parse: 431 where the head was too large."""
        refusal = self.conn.refusal
        if refusal is None or refusal.error_status_hint != 431:
            return super().send_400_response(msg)
        self.refuse(431, "request_header_too_large",
                    f"the request head (request line and headers) is larger than the server's limit of "
                    f"{self.settings.server.max_header_bytes} bytes (server.max_header_bytes)")

    def refuse(self, status: int, code: str, message: str) -> None:
        """Answer with the service's JSON error and close: no request is being served."""
        response = error_response(status, code, message, headers={"connection": "close"})
        start = h11.Response(status_code=status, headers=response.raw_headers, reason=STATUS_PHRASES[status])
        for event in (start, h11.Data(data=response.body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def cancelled(timer: asyncio.TimerHandle | None) -> None:
    """`timer` cancelled, if there is one; None, the timer left."""
    if timer is not None:
        timer.cancel()
