"""models.storage on both backends: a real directory, and GridFS on the live SecantusDB."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import stat
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from models.errors import ValidationFailed
from models.storage import (
    GRIDFS_CHUNK_SIZE,
    READ_CHUNK,
    ContentNotFound,
    CorruptContent,
    FileSystemStorage,
    FileTooLarge,
    GridFSStorage,
    Storage,
    StoredFile,
    check_sha256,
    make_storage,
    parse_file_hash,
)

MIB = 1 << 20
PAYLOAD = random.Random(20251215).randbytes(5 * MIB + 12345)  # not a multiple of any chunk size
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
# Uneven pieces, so buffering and chunking boundaries never line up with the writes.
PIECES = (1, 1000, 65536, 70001, 262144, 1, MIB + 3, 17)

BAD_DIGESTS: list[Any] = [
    "../../etc/passwd",
    "../" + "a" * 61,
    "/" + "a" * 63,
    "a" * 62 + "/.",
    "A" * 64,
    "a" * 63,
    "a" * 65,
    "a" * 64 + "\n",
    "",
    "sha256:" + "a" * 64,
    "g" * 64,
    "a" * 32 + "\x00" + "a" * 31,
    {"$gt": ""},
    None,
    42,
]


def pieces(data: bytes) -> list[bytes]:
    out, offset, i = [], 0, 0
    while offset < len(data):
        size = PIECES[i % len(PIECES)]
        out.append(data[offset : offset + size])
        offset, i = offset + size, i + 1
    return out


async def store(storage: Storage, data: bytes) -> StoredFile:
    writer = await storage.writer()
    for piece in pieces(data):
        await writer.write(piece)
    return await writer.commit()


async def read_all(storage: Storage, sha: str, start: int = 0, end: int | None = None) -> bytes:
    out = []
    async for piece in storage.read(sha, start, end):
        assert 0 < len(piece) <= READ_CHUNK
        out.append(piece)
    return b"".join(out)


async def leftovers(storage: Storage) -> dict[str, int]:
    """Everything a backend holds, by kind: what "stored once" and "abort leaves nothing" assert on."""
    if isinstance(storage, FileSystemStorage):
        files = [p for p in storage.root.rglob("*") if p.is_file()]
        return {
            "content": sum(1 for p in files if p.parent != storage.tmp_dir),
            "temporary": sum(1 for p in files if p.parent == storage.tmp_dir),
        }
    assert isinstance(storage, GridFSStorage)
    return {
        "content": await storage.files.count_documents({}),
        "chunks": await storage.chunks.count_documents({}),
        "temporary": await storage.uploads.count_documents({}),
    }


def chunk_count(size: int) -> int:
    return math.ceil(size / GRIDFS_CHUNK_SIZE)


@pytest.fixture(params=["filesystem", "gridfs"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "filesystem":
        return make_storage("filesystem", root=tmp_path / "files")
    # Only the GridFS case starts the server's services (and the database with them).
    return make_storage("gridfs", db=request.getfixturevalue("db"), tmp_dir=tmp_path)


# ---------------------------------------------------------------- both backends


@pytest.mark.gen_test(timeout=60)
async def test_round_trip_hash_size_and_local_path(storage: Storage) -> None:
    stored = await store(storage, PAYLOAD)
    assert stored == StoredFile(PAYLOAD_SHA, len(PAYLOAD))
    assert stored.file_hash == "sha256:" + PAYLOAD_SHA
    assert await storage.exists(PAYLOAD_SHA) and await storage.size(PAYLOAD_SHA) == len(PAYLOAD)
    assert await read_all(storage, PAYLOAD_SHA) == PAYLOAD

    async with storage.local_path(PAYLOAD_SHA) as path:
        assert path.read_bytes() == PAYLOAD
    if isinstance(storage, FileSystemStorage):
        sha = PAYLOAD_SHA
        assert path == storage.root / sha[:2] / sha[2:4] / sha and path.exists()
        assert stat.S_IMODE(path.stat().st_mode) == 0o440
    else:
        assert not path.exists(), "the temporary copy outlives its context"
        assert await leftovers(storage) == {"content": 1, "chunks": chunk_count(len(PAYLOAD)), "temporary": 0}


@pytest.mark.gen_test(timeout=60)
async def test_empty_and_tiny_files(storage: Storage) -> None:
    for data in (b"", b"x"):
        stored = await store(storage, data)
        assert stored == StoredFile(hashlib.sha256(data).hexdigest(), len(data))
        assert await read_all(storage, stored.sha256) == data
        async with storage.local_path(stored.sha256) as path:
            assert path.read_bytes() == data


@pytest.mark.gen_test(timeout=60)
async def test_identical_content_is_stored_once(storage: Storage) -> None:
    first = await store(storage, PAYLOAD)
    second = await store(storage, PAYLOAD)
    assert first == second
    # Concurrent identical uploads: both finish writing before either commits, then both commit at once.
    writers = [await storage.writer(), await storage.writer()]
    for piece in pieces(PAYLOAD):
        for writer in writers:
            await writer.write(piece)
    results = await asyncio.gather(*(writer.commit() for writer in writers))
    assert set(results) == {first}
    expected = {"content": 1, "temporary": 0}
    if isinstance(storage, GridFSStorage):
        expected["chunks"] = chunk_count(len(PAYLOAD))
    assert await leftovers(storage) == expected
    assert await read_all(storage, first.sha256) == PAYLOAD


@pytest.mark.gen_test(timeout=60)
async def test_abort_leaves_nothing(storage: Storage) -> None:
    writer = await storage.writer()
    for piece in pieces(PAYLOAD[: 3 * MIB]):
        await writer.write(piece)
    await writer.abort()
    await writer.abort()  # idempotent
    with pytest.raises(ValueError):
        await writer.write(b"more")
    with pytest.raises(ValueError):
        await writer.commit()

    with pytest.raises(RuntimeError, match="client went away"):
        async with await storage.writer() as writer:
            await writer.write(PAYLOAD[: 2 * MIB])
            raise RuntimeError("client went away")

    async with await storage.writer() as writer:
        await writer.write(b"never committed")
    assert all(count == 0 for count in (await leftovers(storage)).values()), await leftovers(storage)
    assert not await storage.exists(hashlib.sha256(PAYLOAD[: 3 * MIB]).hexdigest())


@pytest.mark.gen_test(timeout=60)
async def test_cancelled_or_concurrently_aborted_writes_leave_nothing(storage: Storage) -> None:
    big = PAYLOAD[: 4 * MIB]
    # The request handler's task is cancelled in the middle of a write (thread or database call in flight).
    writer = await storage.writer()
    await writer.write(big)
    task = asyncio.ensure_future(writer.write(big))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ValueError):
        await writer.write(b"after the cancellation")
    # The connection closes (another task calls abort) while a write is in progress: the abort waits for it.
    writer = await storage.writer()
    await writer.write(big)
    pending = asyncio.ensure_future(writer.write(big))
    await asyncio.sleep(0)
    await writer.abort()
    await asyncio.gather(pending, return_exceptions=True)
    with pytest.raises(ValueError):
        await writer.commit()
    assert all(count == 0 for count in (await leftovers(storage)).values()), await leftovers(storage)


@pytest.mark.gen_test(timeout=60)
async def test_size_limit_aborts_the_upload(storage: Storage) -> None:
    writer = await storage.writer(max_size=2 * MIB)
    await writer.write(PAYLOAD[: 2 * MIB])  # exactly the limit is fine
    with pytest.raises(FileTooLarge) as caught:
        await writer.write(b"!")
    assert caught.value.status == 413 and caught.value.code == "FILE_TOO_LARGE"
    with pytest.raises(ValueError):
        await writer.commit()
    assert all(count == 0 for count in (await leftovers(storage)).values())


@pytest.mark.gen_test(timeout=60)
async def test_byte_ranges(storage: Storage) -> None:
    sha = (await store(storage, PAYLOAD)).sha256
    size = len(PAYLOAD)
    chunk = GRIDFS_CHUNK_SIZE
    for start, end in [
        (0, 1),
        (0, size),
        (5, 17),
        (chunk - 1, chunk + 1),
        (chunk, 2 * chunk),
        (MIB - 5, 3 * MIB + 7),
        (size - 10, None),
        (size - 1, size),
        (1234, size + 999),
    ]:
        assert await read_all(storage, sha, start, end) == PAYLOAD[start:end], (start, end)
    assert await read_all(storage, sha, size, None) == b""
    assert await read_all(storage, sha, 100, 100) == b""
    for start, end in [(-1, None), (size + 1, None), (10, 5)]:
        with pytest.raises(ValueError):
            await read_all(storage, sha, start, end)


@pytest.mark.gen_test(timeout=60)
async def test_delete(storage: Storage) -> None:
    sha = (await store(storage, PAYLOAD[:MIB])).sha256
    other = (await store(storage, b"another file")).sha256
    assert await storage.delete(sha) is True
    assert not await storage.exists(sha) and await storage.size(sha) is None
    assert await storage.delete(sha) is False
    with pytest.raises(ContentNotFound):
        await read_all(storage, sha)
    with pytest.raises(ContentNotFound):
        async with storage.local_path(sha):
            pass
    assert await read_all(storage, other) == b"another file"
    expected = {"content": 1, "temporary": 0}
    if isinstance(storage, GridFSStorage):
        expected["chunks"] = 1
    assert await leftovers(storage) == expected


@pytest.mark.gen_test(timeout=60)
async def test_malformed_digests_are_refused(storage: Storage, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("do not touch")
    sha = (await store(storage, b"content")).sha256
    for bad in BAD_DIGESTS:
        with pytest.raises(ValidationFailed) as caught:
            await storage.exists(bad)
        assert caught.value.status == 400 and "file_hash" in caught.value.field_errors
        with pytest.raises(ValidationFailed):
            await storage.size(bad)
        with pytest.raises(ValidationFailed):
            await storage.delete(bad)
        with pytest.raises(ValidationFailed):
            await read_all(storage, bad)
        with pytest.raises(ValidationFailed):
            async with storage.local_path(bad):
                pass
    assert victim.read_text() == "do not touch"
    assert await read_all(storage, sha) == b"content"


@pytest.mark.gen_test(timeout=60)
async def test_purge_incomplete_removes_abandoned_uploads(storage: Storage) -> None:
    abandoned = await storage.writer()
    await abandoned.write(PAYLOAD[: 2 * MIB])  # flushed, as a crashed process would leave it
    kept = await store(storage, b"finished")
    assert await storage.purge_incomplete(older_than=3600) == 0
    # A negative age puts the cut-off in the future: everything in progress counts as abandoned.
    assert await storage.purge_incomplete(older_than=-60) == 1
    remaining = await leftovers(storage)
    assert remaining["temporary"] == 0 and remaining["content"] == 1 and remaining.get("chunks", 1) == 1
    assert await read_all(storage, kept.sha256) == b"finished"
    await abandoned.abort()


# ---------------------------------------------------------------- filesystem only


@pytest.mark.gen_test(timeout=60)
async def test_filesystem_writes_200_mib_in_bounded_memory(tmp_path: Path) -> None:
    storage = FileSystemStorage(tmp_path / "files", durable=False)
    block = random.Random(7).randbytes(MIB)
    piece_size = 64 * 1024  # what Tornado's streamed request bodies deliver
    expected = hashlib.sha256()
    tracemalloc.start()
    try:
        writer = await storage.writer()
        for i in range(200):
            # A different MiB each time (one byte differs), so the file is not 200 copies of one block.
            head = i.to_bytes(4, "little")
            for offset in range(0, MIB, piece_size):
                piece = (head + block[4:piece_size]) if offset == 0 else block[offset : offset + piece_size]
                expected.update(piece)
                await writer.write(piece)
        stored = await writer.commit()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stored == StoredFile(expected.hexdigest(), 200 * MIB)
    assert peak < 5 * MIB, f"peak {peak / MIB:.1f} MiB"
    assert await storage.size(stored.sha256) == 200 * MIB


@pytest.mark.gen_test
async def test_filesystem_layout_stays_inside_root(tmp_path: Path) -> None:
    storage = FileSystemStorage(tmp_path / "files")
    stored = await store(storage, b"layout")
    files = sorted(p.relative_to(storage.root).as_posix() for p in storage.root.rglob("*") if p.is_file())
    sha = stored.sha256
    assert files == [f"{sha[:2]}/{sha[2:4]}/{sha}"]
    assert [p.name for p in tmp_path.iterdir()] == ["files"]


# ---------------------------------------------------------------- GridFS only


@pytest.mark.gen_test(timeout=60)
async def test_gridfs_documents_follow_the_spec(db: Any, tmp_path: Path) -> None:
    storage = GridFSStorage(db, "designs", tmp_dir=tmp_path)
    stored = await store(storage, PAYLOAD)
    # The driver's own reader understands what the writer stored.
    stream = await storage.bucket.open_download_stream_by_name(stored.sha256)
    assert await stream.read() == PAYLOAD
    doc = await db["designs.files"].find_one({"filename": stored.sha256})
    assert doc["length"] == len(PAYLOAD) and doc["metadata"] == {"sha256": stored.sha256}
    # And content the driver stored is readable here.
    other = b"uploaded by another tool"
    await storage.bucket.upload_from_stream(hashlib.sha256(other).hexdigest(), other)
    assert await read_all(storage, hashlib.sha256(other).hexdigest()) == other


@pytest.mark.gen_test(timeout=60)
async def test_gridfs_detects_a_missing_chunk(db: Any) -> None:
    storage = GridFSStorage(db)
    stored = await store(storage, PAYLOAD[:MIB])
    doc = await storage.files.find_one({"filename": stored.sha256})
    await storage.chunks.delete_one({"files_id": doc["_id"], "n": 2})
    with pytest.raises(CorruptContent):
        await read_all(storage, stored.sha256)
    assert await read_all(storage, stored.sha256, 0, 100) == PAYLOAD[:100]


@pytest.mark.gen_test(timeout=60)
async def test_gridfs_writes_and_reads_in_bounded_memory(db: Any) -> None:
    storage = GridFSStorage(db)
    data = PAYLOAD * 3  # ~15 MiB: gridfs.AsyncGridIn would hold all of it
    tracemalloc.start()
    try:
        writer = await storage.writer()
        for offset in range(0, len(data), 64 * 1024):
            await writer.write(data[offset : offset + 64 * 1024])
        stored = await writer.commit()
        write_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        async for piece in storage.read(stored.sha256):  # AsyncGridOut's first batch alone is ~25 MB
            digest.update(piece)
        read_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stored == StoredFile(digest.hexdigest(), len(data))
    assert write_peak < 8 * MIB, f"write peak {write_peak / MIB:.1f} MiB"
    assert read_peak < 8 * MIB, f"read peak {read_peak / MIB:.1f} MiB"


# ---------------------------------------------------------------- helpers


def test_digest_parsing() -> None:
    sha = "ab" * 32
    assert check_sha256(sha) == sha
    assert parse_file_hash("sha256:" + sha.upper()) == sha
    assert parse_file_hash(sha) == sha
    for bad in ("sha256:" + "a" * 63, "md5:" + sha, "sha256:" + sha + "\n", {"$ne": None}):
        with pytest.raises(ValidationFailed):
            parse_file_hash(bad)
    for bad in BAD_DIGESTS:
        with pytest.raises(ValidationFailed):
            check_sha256(bad)


def test_make_storage(tmp_path: Path) -> None:
    assert isinstance(make_storage("filesystem", root=tmp_path), FileSystemStorage)
    for kind, kwargs in [("filesystem", {}), ("gridfs", {}), ("s3", {"root": tmp_path})]:
        with pytest.raises(ValueError):
            make_storage(kind, **kwargs)
