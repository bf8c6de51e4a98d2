"""A small WebSocket test client (Tornado's) that speaks enginel.v1 in either codec and keeps pushed events aside."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from typing import Any

import msgpack
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

PROTOCOLS = {"json": "enginel.v1.json", "msgpack": "enginel.v1.msgpack"}


class Closed(Exception):
    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


class Client:
    def __init__(self, conn: WebSocketClientConnection, codec: str) -> None:
        self.conn = conn
        self.codec = codec
        self.next_id = 0
        self.stash: deque[dict[str, Any]] = deque()
        self.welcome: dict[str, Any] | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        codec: str = "json",
        token: str | None = None,
        headers: dict[str, str] | None = None,
        subprotocols: list[str] | None = None,
        wait_welcome: bool = True,
    ) -> Client:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Token {token}"
        if subprotocols is None:
            subprotocols = [PROTOCOLS[codec]] if codec in PROTOCOLS else []
        conn = await websocket_connect(HTTPRequest(url, headers=hdrs, request_timeout=10), subprotocols=subprotocols)
        client = cls(conn, codec)
        if token is not None and wait_welcome:
            client.welcome = await client.recv()
            assert client.welcome["type"] == "welcome", client.welcome
        return client

    def encode(self, message: dict[str, Any]) -> str | bytes:
        if self.codec == "msgpack":
            return msgpack.packb(message, use_bin_type=True)
        return json.dumps(message)

    async def send(self, message: dict[str, Any]) -> None:
        await self.conn.write_message(self.encode(message), binary=self.codec == "msgpack")

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        if raw is None:
            raise Closed(self.conn.close_code, self.conn.close_reason)
        if self.codec == "msgpack":
            assert isinstance(raw, bytes), raw
            return msgpack.unpackb(raw, raw=False)
        assert isinstance(raw, str), raw
        return json.loads(raw)

    async def request(self, kind: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send one message and return its reply (result or error); pushed messages wait in the stash."""
        self.next_id += 1
        msg_id = self.next_id
        await self.send({"type": kind, "id": msg_id, **fields})
        return await self.reply(msg_id, timeout)

    async def reply(self, msg_id: int, timeout: float = 10.0) -> dict[str, Any]:
        while True:
            message = await self.recv(timeout)
            if message.get("type") in ("result", "error") and message.get("id") == msg_id:
                return message
            self.stash.append(message)

    async def ok(self, kind: str, **fields: Any) -> dict[str, Any]:
        reply = await self.request(kind, **fields)
        assert reply["type"] == "result", reply
        return reply["result"]

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        if self.stash:
            return self.stash.popleft()
        return await self.recv(timeout)

    async def next_event(self, event: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The next pushed event (optionally of one name), skipping anything else."""
        while True:
            message = await self.next(timeout)
            if message.get("type") == "event" and (event is None or message["event"] == event):
                return message

    async def events(self, count: int, event: str | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
        return [await self.next_event(event, timeout) for _ in range(count)]

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str | None]:
        """Read until the server closes; returns (code, reason)."""
        while True:
            try:
                await self.next(timeout)
            except Closed as exc:
                return exc.code, exc.reason

    async def quiet(self, seconds: float = 0.2) -> list[dict[str, Any]]:
        """Whatever arrives within `seconds` (normally nothing)."""
        got = list(self.stash)
        self.stash.clear()
        try:
            while True:
                got.append(await self.recv(seconds))
        except TimeoutError:
            return got

    def close(self) -> None:
        self.conn.close()


Raw = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def raw_socket_client(port: int, token: str, rcvbuf: int = 16384) -> Raw:
    """A WebSocket client with a tiny receive buffer that reads only when told: a deliberately slow consumer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    # A small limit: StreamReader stops reading from the socket once 2 x limit bytes wait unread.
    reader, writer = await asyncio.open_connection(sock=sock, limit=16384)
    writer.write(
        (
            f"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Token {token}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head.split(b"\r\n")[0], head
    return reader, writer


def masked_frame(payload: bytes, opcode: int = 1) -> bytes:
    mask = b"\x01\x02\x03\x04"
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    else:
        header = bytes((0x80 | opcode, 0xFE)) + size.to_bytes(2, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(size)
