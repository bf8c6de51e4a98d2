"""realtime.transport.unsent_bytes, the one read of Tornado's private write buffer, against a real TCP stream: if a
Tornado release renames or changes that buffer, these tests say so before the slow-consumer bound silently breaks."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios

import pytest
from tornado.iostream import IOStream

from realtime.transport import unsent_bytes

PAYLOAD = 8 << 20  # far more than the kernel buffers of one loopback connection hold


def queued(sock: socket.socket, request: int) -> int:
    """Bytes in a socket's kernel queue: TIOCOUTQ, what it has not sent yet; FIONREAD, what it has not read."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0"))[0])


async def connected() -> tuple[IOStream, socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    server.close()
    peer.setblocking(False)
    return IOStream(client), peer


@pytest.mark.gen_test(timeout=30)
async def test_unsent_bytes_is_what_tornado_holds_back() -> None:
    stream, peer = await connected()
    try:
        assert hasattr(stream, "_write_buffer"), (
            "Tornado's IOStream no longer has _write_buffer: realtime.transport.unsent_bytes must find another "
            "way to count the bytes a connection has not sent"
        )
        assert unsent_bytes(stream) == 0
        done = stream.write(b"x" * PAYLOAD)
        # The peer reads nothing, so the kernel queues fill and Tornado keeps the rest.
        for _ in range(100):
            await asyncio.sleep(0.01)
            in_kernel = queued(stream.socket, termios.TIOCOUTQ) + queued(peer, termios.FIONREAD)
            if unsent_bytes(stream) + in_kernel == PAYLOAD:
                break
        held = unsent_bytes(stream)
        assert 0 < held < PAYLOAD
        assert held + in_kernel == PAYLOAD, (held, in_kernel)
        received = 0
        loop = asyncio.get_running_loop()
        while received < PAYLOAD:
            received += len(await loop.sock_recv(peer, 1 << 20))
        await done
        assert unsent_bytes(stream) == 0
    finally:
        stream.close()
        peer.close()


@pytest.mark.gen_test(timeout=30)
async def test_unsent_bytes_of_a_closed_stream_is_zero() -> None:
    stream, peer = await connected()
    stream.close()
    peer.close()
    assert unsent_bytes(stream) == 0
