"""Downloads as an attacker meets them over raw sockets: reclassified mid-stream, readers that stop reading or
leave, byte ranges that are huge or many, and what the audit trail keeps of them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import time
from typing import Any

import pytest

from tests.helpers import Caller, World, assert_envelope, cad, team, upload

MIB = 1 << 20
# Many requests from one caller in a few seconds: the rate limit is not what these tests are about.
UNLIMITED = {"rate_limit_per_minute": 1_000_000, "rate_limit_per_hour": 1_000_000, "uploads_per_hour": 1000}


def large_stl(size: int) -> bytes:
    """A valid binary STL of about `size` bytes: the generated box's triangles, repeated."""
    box = cad("box-binary.stl")
    triangles = box[84:]  # 50 bytes each
    repeats = (size - 84) // len(triangles)
    return box[:80] + struct.pack("<I", repeats * len(triangles) // 50) + triangles * repeats


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


def open_fds() -> int:
    """Descriptors open in this process, which in these tests is also the server's."""
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


class RawResponse:
    """One response read by hand off a socket, so the test decides when (and whether) to read the body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}

    async def read_headers(self) -> RawResponse:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        return self

    async def drain(self, left: int, piece: int = 256 * 1024, pause: float = 0.005, timeout: float = 90) -> int:
        """Read slowly (a reader on a modest link) until the `left` bytes of the body are in or the server ends
        the connection; the bytes received."""
        total = 0

        async def run() -> None:
            nonlocal total
            while total < left and (chunk := await self.reader.read(min(piece, left - total))):
                total += len(chunk)
                await asyncio.sleep(pause)

        await asyncio.wait_for(run(), timeout)
        return total

    def close(self) -> None:
        self.writer.close()


async def raw_get(base_url: str, path: str, caller: Caller, headers: dict[str, str] | None = None) -> RawResponse:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(base_url))
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {caller.token}\r\n{extra}\r\n".encode()
    )
    await writer.drain()
    return await RawResponse(reader, writer).read_headers()


async def serve_original_as_viewable(world: World, design_id: str) -> None:
    """Point the design's viewer GLB at its stored original, so /viewable/ streams the same large body (the
    endpoint streams whatever content it names; making a GLB this large would take the workers minutes)."""
    doc = await world.services.db.designs.find_one({"_id": design_id})
    record = {"sha256": doc["content_sha256"], "bytes": doc["file_size_bytes"], "format": "glb", "triangles": 0}
    assert await world.services.viewables.attach(design_id, record)


@pytest.mark.parametrize("settings_overrides", [UNLIMITED])
@pytest.mark.parametrize("artifact", ["download", "viewable"])
@pytest.mark.gen_test(timeout=240)
async def test_reclassified_mid_download_stops_streaming(world: World, base_url: str, db: Any, artifact: str) -> None:
    """Issue 25 #2: an uncleared reader starts a large download, the design is raised to SECRET after 1 MiB:
    the stream ends within a few MiB (the next re-check), audited as DOWNLOAD_REVOKED; a cleared reader still
    gets every byte."""
    _, people, series_id = await team(world)
    data = large_stl(32 * MIB)
    design = await upload(people["member"], series_id, "large.stl", data)
    if artifact == "viewable":
        await serve_original_as_viewable(world, design["id"])
    path = f"/api/designs/{design['id']}/{artifact}/"

    reader = await raw_get(base_url, path, people["viewer"])  # VIEWER, UNCLASSIFIED clearance
    assert reader.status == 200 and int(reader.headers["content-length"]) == len(data)
    first = await asyncio.wait_for(reader.reader.readexactly(MIB), 30)
    raised = await people["owner"].api.patch(f"/api/designs/{design['id']}/", {"classification": "SECRET"})
    assert raised.status == 200, raised.body
    received = len(first) + await reader.drain(len(data) - len(first))
    reader.close()
    assert received < len(data) - 8 * MIB, f"{received} of {len(data)} bytes reached the uncleared reader"

    revoked = await db.audit_log.find_one({"action": "DOWNLOAD_REVOKED", "resource_id": design["id"]})
    assert revoked is not None
    assert revoked["actor_id"] == people["viewer"].id
    changes = revoked["changes"]
    assert changes["reason"] == "PERMISSION_DENIED" and changes["bytes_total"] == len(data)
    assert changes["bytes_sent"] == received  # exactly what was let out before the stream ended
    assert changes["artifact"] == ("viewable" if artifact == "viewable" else "original")
    assert_envelope(await people["viewer"].api.get(path), 403, "PERMISSION_DENIED")
    # A reader cleared for SECRET is re-checked too, and passes every check.
    whole = await people["member"].api.get(path)
    assert whole.status == 200 and whole.body == data


@pytest.mark.parametrize("settings_overrides", [{**UNLIMITED, "download_flush_timeout": 1.0}])
@pytest.mark.gen_test(timeout=240)
async def test_readers_that_stop_reading_are_dropped(world: World, base_url: str) -> None:
    """Issue 25 #3: downloads whose clients never read. After the flush timeout the server closes them: its
    descriptors (socket and stored file of each) return to where they were while the clients still hold
    their ends open, and each client finds a short body and the end of the stream."""
    _, people, series_id = await team(world)
    data = large_stl(24 * MIB)
    design = await upload(people["member"], series_id, "large.stl", data)
    path = f"/api/designs/{design['id']}/download/"
    clients = 16
    # Concurrent downloads once, read to the end, so the database connection pool has grown to what this
    # many requests at once need before the baseline is taken.
    for done in await asyncio.gather(*[people["viewer"].api.get(path) for _ in range(clients)]):
        assert done.status == 200 and len(done.body) == len(data)
    await asyncio.sleep(0.5)
    baseline = open_fds()

    stalled = [await raw_get(base_url, path, people["viewer"]) for _ in range(clients)]
    assert all(s.status == 200 for s in stalled)
    await asyncio.sleep(0.3)
    # Each stalled download holds the client's socket, the server's socket and the server's open file.
    assert open_fds() >= baseline + 3 * clients, (open_fds(), baseline)

    deadline = time.monotonic() + 30
    while open_fds() > baseline + clients + 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert open_fds() <= baseline + clients + 4, f"server still holds {open_fds() - baseline - clients} descriptors"
    for s in stalled:
        rest = await s.drain(len(data), piece=MIB, pause=0)
        assert rest < len(data)  # what sat in socket buffers, then the end of the stream
        s.close()
    deadline = time.monotonic() + 10
    while open_fds() > baseline + 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert open_fds() <= baseline + 4


@pytest.mark.parametrize("settings_overrides", [UNLIMITED])
@pytest.mark.gen_test(timeout=120)
async def test_client_abort_is_routine(world: World, base_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 25 #3: a client that hangs up mid-download is logged at INFO, with no ERROR or traceback, and the
    server lets go of the file."""
    caplog.set_level(logging.INFO)
    _, people, series_id = await team(world)
    data = large_stl(16 * MIB)
    design = await upload(people["member"], series_id, "large.stl", data)
    path = f"/api/designs/{design['id']}/download/"
    await people["viewer"].api.get(path)
    await asyncio.sleep(0.3)
    baseline = open_fds()
    caplog.clear()
    aborted = await raw_get(base_url, path, people["viewer"])
    await aborted.reader.readexactly(64 * 1024)
    aborted.writer.transport.abort()  # hang up without reading the rest
    deadline = time.monotonic() + 20
    while open_fds() > baseline and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert open_fds() <= baseline
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert any("client closed the connection" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("settings_overrides", [UNLIMITED])
@pytest.mark.gen_test(timeout=120)
async def test_range_header_is_bounded_and_audited_parsed(world: World, db: Any) -> None:
    """Issues 10 #14 and 25 #4: a range of 5,000 digits is a 416 (it was a 500), a header of 6,500 ranges is
    answered with the whole file (multi-range is not served) and the audit trail keeps the parsed range only."""
    _, people, series_id = await team(world)
    data = cad("plate.igs")
    design = await upload(people["member"], series_id, "plate.igs", data)
    path = f"/api/designs/{design['id']}/download/"
    api = people["viewer"].api
    digits = "9" * 5000
    body = assert_envelope(await api.get(path, headers={"Range": f"bytes={digits}-"}), 416, "RANGE_NOT_SATISFIABLE")
    assert "detail" in body
    # A huge last position only means "to the end"; a huge suffix, the whole file.
    to_end = await api.get(path, headers={"Range": f"bytes=10-{digits}"})
    assert to_end.status == 206 and to_end.body == data[10:]
    assert to_end.headers["Content-Range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
    suffix = await api.get(path, headers={"Range": f"bytes=-{digits}"})
    assert suffix.status == 206 and suffix.body == data

    many = ",".join(f"{i}-{i}" for i in range(6500))  # 6,500 ranges, 62,779 characters, as in the report
    whole = await api.get(path, headers={"Range": f"bytes={many}"})
    assert whole.status == 200 and whole.body == data
    one = await api.get(path, headers={"Range": "bytes=100-199"})
    assert one.status == 206 and one.body == data[100:200]

    entries = [e async for e in db.audit_log.find({"action": "DOWNLOAD", "resource_id": design["id"]})]
    ranges = [e["changes"].get("range") for e in entries]
    assert {"start": 100, "end": 199} in ranges and {"start": 10, "end": len(data) - 1} in ranges
    assert {"start": 0, "end": len(data) - 1} in ranges
    assert all(r is None or set(r) == {"start", "end"} for r in ranges), ranges
    assert max(len(json.dumps(e["changes"])) for e in entries) < 200
