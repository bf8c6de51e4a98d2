"""Writing shared frames to Tornado streams: per-iteration coalescing, a direct send fast path, outbound accounting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tornado.iostream import IOStream, StreamClosedError


def unsent_bytes(stream: IOStream) -> int:
    """Bytes handed to `stream` that the kernel has not taken yet (0 once it is closed).

    Tornado keeps no public count of them (IOStream.writing() only says whether there are any); its private write
    buffer's length is exactly that figure, and this is the one place that reads it. The slow-consumer bound needs
    the number; tests/realtime/test_transport.py fails loudly if a Tornado release changes the buffer."""
    buffer = stream._write_buffer
    return len(buffer) if buffer is not None else 0


class Flusher:
    """Coalesces each connection's frames queued within one event-loop iteration into one send.

    A burst of events (a publisher's pipeline, a replay) costs one syscall per connection instead of one
    per event; a single event is flushed on the very next iteration, so latency does not suffer.
    """

    def __init__(self) -> None:
        self._dirty: list[StreamTransport] = []
        self._scheduled = False

    def mark(self, transport: StreamTransport) -> None:
        self._dirty.append(transport)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for transport in dirty:
            transport.flush()


class StreamTransport:
    """realtime.session.Transport over a WebSocket connection's IOStream (frames are complete, unmasked)."""

    __slots__ = ("stream", "_socket", "_close", "_flusher", "_queue", "_queued", "closed")

    def __init__(self, stream: IOStream, close: Callable[[int, str], None], flusher: Flusher) -> None:
        self.stream = stream
        # The fast path sends on the raw socket; a TLS stream must encrypt, so it always goes through Tornado.
        self._socket = stream.socket if type(stream) is IOStream else None
        self._close = close
        self._flusher = flusher
        self._queue: list[bytes] = []
        self._queued = 0
        self.closed = False

    def write_frame(self, frame: bytes) -> int:
        """Queue a frame for this iteration's flush; returns the bytes not yet handed to the kernel."""
        if self.closed or self.stream.closed():
            raise StreamClosedError()
        if not self._queue:
            self._flusher.mark(self)
        self._queue.append(frame)
        self._queued += len(frame)
        return self._queued + unsent_bytes(self.stream)

    def flush(self) -> None:
        queue = self._queue
        if not queue:
            return
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        self._queue = []
        self._queued = 0
        stream = self.stream
        if stream.closed():
            return
        if self._socket is not None and not stream.writing():
            # Nothing is waiting in Tornado's buffer, so order is kept by sending directly: this skips a
            # Future, a callback and the buffer bookkeeping per write, which dominate fan-out cost.
            try:
                sent = self._socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # let IOStream.write below meet the error and close the stream its own way
            if sent == len(data):
                return
            data = data[sent:]
        try:
            stream.write(data)
        except StreamClosedError:
            pass

    async def drain(self) -> None:
        self.flush()
        await self.stream.write(b"")

    def close(self, code: int, reason: str) -> None:
        # Queued frames go out before the close frame Tornado writes.
        self.flush()
        self.closed = True
        self._close(code, reason)
