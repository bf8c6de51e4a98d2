"""Content-addressed storage of uploads under their SHA-256: one interface, filesystem and GridFS backends."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from bson import Int64, ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from models.collections import CAD_FILES
from models.database import Db
from models.errors import PayloadTooLarge, ServiceUnavailable, ValidationFailed

# Largest piece read() yields: enough to amortise a thread hop or a cursor batch, small enough to bound memory
READ_CHUNK = 1 << 20
# Writes are gathered to this size before one thread hop hashes and writes them. Measured on this 2-core VM:
# asyncio.to_thread costs ~0.2 ms per call, os.write of 64 KiB ~0.03 ms, of 1 MiB ~2 ms (page cache under
# pressure), sha256 of 1 MiB ~0.7 ms. Hopping per 64 KiB body chunk would cost more than the work; doing
# 1 MiB of hashing and writing inline would stall the loop ~3 ms. One hop per MiB keeps both small.
WRITE_BUFFER = 1 << 20
GRIDFS_CHUNK_SIZE = 255 * 1024  # the GridFS default: a chunk document stays well under 16 MB
FILE_MODE = 0o440  # stored content is immutable; the group may be the workers' user
DIR_MODE = 0o750
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_HASH = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")
T = TypeVar("T")


class FileTooLarge(PayloadTooLarge):
    code = "FILE_TOO_LARGE"
    title = "File too large"


class ContentNotFound(FileNotFoundError):
    """No stored content has this SHA-256 (a server-side inconsistency if a document references it)."""


class CorruptContent(RuntimeError):
    """Stored content is shorter than recorded or has missing/mis-sized GridFS chunks."""


def check_sha256(value: Any) -> str:
    """``value`` if it is a canonical digest (64 lowercase hex): the only way a string becomes a key."""
    if isinstance(value, str) and _SHA256.fullmatch(value):
        return value
    shown = repr(value[:80]) if isinstance(value, str) else type(value).__name__
    message = "must be a SHA-256 digest: 64 lowercase hexadecimal characters."
    raise ValidationFailed(f"{shown} is not a valid file hash: it {message}", field_errors={"file_hash": [message]})


def parse_file_hash(value: Any) -> str:
    """The canonical digest from a client's ``sha256:<hex>`` or bare ``<hex>`` (either case)."""
    match = _FILE_HASH.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        message = "must be 'sha256:' followed by 64 hexadecimal characters."
        raise ValidationFailed("The file hash is not valid.", field_errors={"file_hash": [message]})
    return match.group(1).lower()


def _check_range(start: int, end: int | None, size: int) -> tuple[int, int]:
    # Half-open [start, end) like a slice; end=None means the end of the file, and an end past it is clamped
    # (an HTTP Range handler has already turned "bytes=a-b" into start=a, end=b+1).
    stop = size if end is None else min(end, size)
    if start < 0 or start > size or stop < start:
        raise ValueError(f"invalid byte range [{start}, {end}) for a file of {size} bytes")
    return start, stop


async def _to_thread_settled(func: Callable[..., T], *args: Any) -> T:
    """asyncio.to_thread, except that a cancelled caller still waits for the thread: the caller's clean-up
    then never closes a descriptor the thread is using (its number could already belong to another file)."""
    task = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


@dataclass(frozen=True, slots=True)
class StoredFile:
    sha256: str
    size: int

    @property
    def file_hash(self) -> str:
        """The API's spelling of the digest."""
        return f"sha256:{self.sha256}"


class StorageWriter(ABC):
    """One upload in progress: write() chunks in order, then commit() or abort(); also an async context
    manager that aborts unless committed. Hashes and counts as it goes; holds at most about WRITE_BUFFER bytes
    plus the chunk being written. Calls are serialised: an abort() from another task (the client went away)
    waits for the write in progress, then removes everything, so no chunk lands after the clean-up."""

    def __init__(self, max_size: int | None) -> None:
        self._hash = hashlib.sha256()
        self._size = 0
        self._max_size = max_size
        self._buffer = bytearray()
        self._state = "open"  # open -> committed | aborted
        self._lock = asyncio.Lock()

    @property
    def size(self) -> int:
        """Bytes accepted so far."""
        return self._size

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        async with self._lock:
            self._check_open()
            await self._write(chunk)

    async def _write(self, chunk: bytes | bytearray | memoryview) -> None:
        try:
            length = memoryview(chunk).nbytes
            if self._max_size is not None and self._size + length > self._max_size:
                raise FileTooLarge(
                    f"The file exceeds the limit of {self._max_size} bytes.", extra={"max_size": self._max_size}
                )
            self._size += length
            self._buffer += chunk
            if len(self._buffer) >= WRITE_BUFFER:
                await self._flush(final=False)
        except BaseException:
            # A failed write (disk full, database down, cancelled) leaves no partial content behind.
            if self._state == "open":
                await asyncio.shield(self._abort())
            raise

    async def commit(self, before_install: Callable[[StoredFile], Awaitable[None]] | None = None) -> StoredFile:
        """Move the content into place under its digest (identical content is stored once) and return it.

        ``before_install`` runs once the digest is known and before the content is made readable under it: the
        caller takes its reference to the digest there, so no deletion of an identical copy can slip in between
        (see models/content.py). If it raises, nothing is installed."""
        async with self._lock:
            self._check_open()
            return await self._commit(before_install)

    async def _commit(self, before_install: Callable[[StoredFile], Awaitable[None]] | None) -> StoredFile:
        try:
            await self._flush(final=True)
            stored = StoredFile(self._hash.hexdigest(), self._size)
            if before_install is not None:
                await before_install(stored)
            await self._install(stored)
            self._state = "committed"
            return stored
        except BaseException:
            if self._state == "open":
                await asyncio.shield(self._abort())
            raise

    async def abort(self) -> None:
        """Remove everything written so far. Idempotent; a no-op after commit."""
        async with self._lock:
            if self._state == "open":
                await self._abort()

    async def __aenter__(self) -> StorageWriter:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.abort()

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"this upload is already {self._state}")

    async def _abort(self) -> None:
        self._state = "aborted"
        self._buffer = bytearray()
        await self._discard()

    @abstractmethod
    async def _flush(self, final: bool) -> None:
        """Hash and persist buffered bytes (all of them when final)."""

    @abstractmethod
    async def _install(self, stored: StoredFile) -> None:
        """Make the fully flushed content readable under stored.sha256, or drop it if already stored."""

    @abstractmethod
    async def _discard(self) -> None:
        """Delete whatever this writer persisted."""


class Storage(ABC):
    """Immutable blobs keyed by SHA-256. Digests must be canonical (see check_sha256); anything else is a
    ValidationFailed (400), so a client-supplied string can never name a path or a query operator."""

    # Why this process must not store or analyse files here, for the API's 503 (set by models/cluster.py when
    # this process's store is not the deployment's); None when it may.
    refusal: str | None = None

    def refuse(self, reason: str | None) -> None:
        self.refusal = reason

    def require_usable(self) -> None:
        """ServiceUnavailable (503) with the reason while this process refuses to store or analyse files."""
        if self.refusal is not None:
            raise ServiceUnavailable(self.refusal)

    @abstractmethod
    async def writer(self, max_size: int | None = None) -> StorageWriter:
        """A new upload; with max_size, a write past it aborts the upload and raises FileTooLarge (413)."""

    @abstractmethod
    async def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    async def size(self, sha256: str) -> int | None:
        """The stored size in bytes, or None when absent."""

    @abstractmethod
    def read(self, sha256: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end) in pieces of at most READ_CHUNK (end None or past the end: to the end).

        An async generator: ContentNotFound and ValueError (bad range) surface on the first iteration, so
        call size() before sending response headers. Wrap in contextlib.aclosing() when a consumer may stop
        early.
        """

    @abstractmethod
    async def delete(self, sha256: str) -> bool:
        """Remove the content; True if it existed. Callers must ensure no document still references it."""

    @abstractmethod
    def local_path(self, sha256: str) -> contextlib.AbstractAsyncContextManager[Path]:
        """``async with storage.local_path(h) as path``: a file the analysis worker processes can open."""

    @abstractmethod
    async def purge_incomplete(self, older_than: float = 86400.0) -> int:
        """Remove uploads a crashed process abandoned over older_than seconds ago; returns how many."""


# -- filesystem ----------------------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _FileSystemWriter(StorageWriter):
    def __init__(self, storage: FileSystemStorage, fd: int, tmp: Path, max_size: int | None) -> None:
        super().__init__(max_size)
        self._storage = storage
        self._fd: int | None = fd
        self._tmp = tmp

    def _sink(self, data: bytearray) -> None:
        # hashlib releases the GIL for large buffers, so this thread does not slow the event loop either.
        self._hash.update(data)
        assert self._fd is not None
        _write_all(self._fd, data)

    async def _flush(self, final: bool) -> None:
        if self._buffer:
            data, self._buffer = self._buffer, bytearray()
            await _to_thread_settled(self._sink, data)

    async def _install(self, stored: StoredFile) -> None:
        fd, self._fd = self._fd, None
        assert fd is not None
        await _to_thread_settled(self._storage._install, fd, self._tmp, stored)

    def _remove(self, fd: int | None) -> None:
        if fd is not None:
            os.close(fd)
        self._tmp.unlink(missing_ok=True)

    async def _discard(self) -> None:
        fd, self._fd = self._fd, None
        await asyncio.to_thread(self._remove, fd)


class FileSystemStorage(Storage):
    """Content at ``<root>/<sha[0:2]>/<sha[2:4]>/<sha>``, read-only; uploads in progress in ``<root>/tmp/``.

    Blocking calls that can take milliseconds (open, write, read, fsync, rename, unlink) run in a thread;
    stat() runs inline, as it answers from the inode cache in microseconds. With ``durable`` the content and
    its directory are fsynced before commit returns, so a document recorded after commit never points at a
    file that a power cut left empty.
    """

    def __init__(self, root: Path | str, *, durable: bool = True) -> None:
        self.root = Path(root).absolute()
        self.tmp_dir = self.root / "tmp"
        self.durable = durable

    def _path(self, sha256: str) -> Path:
        digest = check_sha256(sha256)
        return self.root / digest[0:2] / digest[2:4] / digest

    def _open_temp(self) -> tuple[int, Path]:
        self.tmp_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return fd, tmp

    async def writer(self, max_size: int | None = None) -> StorageWriter:
        self.require_usable()
        fd, tmp = await asyncio.to_thread(self._open_temp)
        return _FileSystemWriter(self, fd, tmp, max_size)

    def _install(self, fd: int, tmp: Path, stored: StoredFile) -> None:
        try:
            if self.durable:
                os.fsync(fd)
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)
        final = self._path(stored.sha256)
        final.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        try:
            existing = final.stat().st_size
        except FileNotFoundError:
            existing = None
        if existing == stored.size:
            tmp.unlink()
            return
        # Absent, or a wrong-sized leftover of an earlier crash: the new copy replaces it. Two concurrent
        # commits of the same content both replacing is harmless: the bytes are identical by construction.
        os.replace(tmp, final)
        if self.durable:
            dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    async def exists(self, sha256: str) -> bool:
        return await self.size(sha256) is not None

    async def size(self, sha256: str) -> int | None:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    async def read(self, sha256: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self._path(sha256)
        try:
            handle = await asyncio.to_thread(open, path, "rb", buffering=0)
        except FileNotFoundError:
            raise ContentNotFound(sha256) from None
        try:
            start, stop = _check_range(start, end, os.fstat(handle.fileno()).st_size)
            handle.seek(start)
            position = start
            while position < stop:
                data = await _to_thread_settled(handle.read, min(READ_CHUNK, stop - position))
                if not data:
                    raise CorruptContent(f"{sha256} ended at byte {position}, expected {stop}")
                position += len(data)
                yield data
        finally:
            handle.close()

    async def delete(self, sha256: str) -> bool:
        path = self._path(sha256)
        try:
            await asyncio.to_thread(path.unlink)
            return True
        except FileNotFoundError:
            return False

    @contextlib.asynccontextmanager
    async def local_path(self, sha256: str) -> AsyncIterator[Path]:
        self.require_usable()
        path = self._path(sha256)
        if not path.is_file():
            raise ContentNotFound(sha256)
        yield path

    def _purge(self, cutoff: float) -> int:
        removed = 0
        try:
            entries = os.scandir(self.tmp_dir)
        except FileNotFoundError:
            return 0
        with entries:
            for entry in entries:
                try:
                    if entry.name.endswith(".part") and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # finished or aborted meanwhile
        return removed

    async def purge_incomplete(self, older_than: float = 86400.0) -> int:
        return await asyncio.to_thread(self._purge, time.time() - older_than)


# -- GridFS --------------------------------------------------------------------------------------------------


class _GridFSWriter(StorageWriter):
    """Writes GridFS-spec chunk documents itself, one insert per ~1 MiB, and the files document last.

    gridfs.AsyncGridIn buffers up to 48 MB of chunks (pymongo's MAX_MESSAGE_SIZE) before its first insert, so
    any file under that size would sit whole in memory; and it must name the file before the digest is known.
    Documents written here have the standard layout, so AsyncGridFSBucket reads and deletes them.
    """

    def __init__(self, storage: GridFSStorage, max_size: int | None) -> None:
        super().__init__(max_size)
        self._storage = storage
        self._file_id = ObjectId()
        self._chunk_size = storage.chunk_size
        self._chunks_written = 0
        self._marked = False
        self._tail = b""

    async def _flush(self, final: bool) -> None:
        whole = len(self._buffer) if final else len(self._buffer) - len(self._buffer) % self._chunk_size
        if whole == 0:
            return
        data = bytes(self._buffer[:whole])
        del self._buffer[:whole]
        await _to_thread_settled(self._hash.update, data)
        if final:
            self._tail = data  # written by _install, unless that content is already stored
        else:
            await self._insert_chunks(data)

    async def _insert_chunks(self, data: bytes) -> None:
        storage, size = self._storage, self._chunk_size
        if not self._marked:
            # Registered before the first chunk, so purge_incomplete() finds chunks a crash orphaned.
            await storage.uploads.insert_one({"_id": self._file_id})
            self._marked = True
        docs = [
            {"files_id": self._file_id, "n": self._chunks_written + i, "data": data[offset : offset + size]}
            for i, offset in enumerate(range(0, len(data), size))
        ]
        await storage.chunks.insert_many(docs)
        self._chunks_written += len(docs)

    async def _install(self, stored: StoredFile) -> None:
        storage = self._storage
        if await storage.exists(stored.sha256):
            await self._discard()
            return
        if self._tail:
            await self._insert_chunks(self._tail)
            self._tail = b""
        try:
            await storage.files.insert_one(
                {
                    "_id": self._file_id,
                    "filename": stored.sha256,
                    "length": Int64(stored.size),
                    "chunkSize": self._chunk_size,
                    "uploadDate": datetime.now(UTC),
                    "metadata": {"sha256": stored.sha256},
                }
            )
        except DuplicateKeyError:
            await self._discard()  # an identical upload committed between our check and our insert
            return
        await storage.uploads.delete_one({"_id": self._file_id})

    async def _discard(self) -> None:
        self._tail = b""
        if self._marked:
            await self._storage.chunks.delete_many({"files_id": self._file_id})
            await self._storage.uploads.delete_one({"_id": self._file_id})
            self._marked = False


class GridFSStorage(Storage):
    """Content in the GridFS bucket ``<bucket>.files``/``.chunks``, the digest being the (unique) filename.

    ``<bucket>.uploads`` lists uploads in progress so that chunks orphaned by a crash can be purged.
    local_path() copies the content to a temporary file under ``tmp_dir`` (default: the system's).
    """

    def __init__(
        self,
        db: Db,
        bucket: str = CAD_FILES,
        *,
        tmp_dir: Path | str | None = None,
        chunk_size: int = GRIDFS_CHUNK_SIZE,
    ) -> None:
        if not 0 < chunk_size <= READ_CHUNK:
            raise ValueError(f"chunk_size must be between 1 and {READ_CHUNK}")
        self.db = db
        self.bucket_name = bucket
        self.bucket = AsyncGridFSBucket(db, bucket_name=bucket, chunk_size_bytes=chunk_size)
        self.files = db[f"{bucket}.files"]
        self.chunks = db[f"{bucket}.chunks"]
        self.uploads = db[f"{bucket}.uploads"]
        self.tmp_dir = Path(tmp_dir) if tmp_dir is not None else None
        self.chunk_size = chunk_size
        self._indexed = False

    async def ensure_indexes(self) -> None:
        """The unique filename index is what makes concurrent identical uploads store one copy. Idempotent."""
        if not self._indexed:
            await self.files.create_indexes([IndexModel([("filename", ASCENDING)], unique=True)])
            await self.chunks.create_indexes([IndexModel([("files_id", ASCENDING), ("n", ASCENDING)], unique=True)])
            self._indexed = True

    async def writer(self, max_size: int | None = None) -> StorageWriter:
        self.require_usable()
        await self.ensure_indexes()
        return _GridFSWriter(self, max_size)

    async def _file_doc(self, sha256: str) -> dict[str, Any] | None:
        return await self.files.find_one({"filename": check_sha256(sha256)}, {"_id": 1, "length": 1, "chunkSize": 1})

    async def exists(self, sha256: str) -> bool:
        return await self._file_doc(sha256) is not None

    async def size(self, sha256: str) -> int | None:
        doc = await self._file_doc(sha256)
        return None if doc is None else int(doc["length"])

    async def read(self, sha256: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        # Chunks are fetched directly rather than through AsyncGridOut: its cursor's first batch is up to
        # 101 chunks (~25 MB) per download; here a batch is about READ_CHUNK, and a range seeks by chunk
        # number.
        doc = await self._file_doc(sha256)
        if doc is None:
            raise ContentNotFound(sha256)
        size, chunk_size = int(doc["length"]), int(doc["chunkSize"])
        start, stop = _check_range(start, end, size)
        if start == stop:
            return
        first, last = start // chunk_size, (stop - 1) // chunk_size
        cursor = self.chunks.find(
            {"files_id": doc["_id"], "n": {"$gte": first, "$lte": last}},
            sort=[("n", ASCENDING)],
            batch_size=max(1, READ_CHUNK // chunk_size),
        )
        expected, offset = first, first * chunk_size
        try:
            async for chunk in cursor:
                data = chunk["data"]
                if chunk["n"] != expected or len(data) != min(chunk_size, size - offset):
                    raise CorruptContent(f"{sha256}: chunk {chunk['n']} is missing, misplaced or mis-sized")
                lo, hi = max(start - offset, 0), min(stop - offset, len(data))
                yield bytes(data[lo:hi]) if (lo, hi) != (0, len(data)) else bytes(data)
                expected += 1
                offset += chunk_size
        finally:
            await cursor.close()
        if expected != last + 1:
            raise CorruptContent(f"{sha256}: chunk {expected} is missing")

    async def delete(self, sha256: str) -> bool:
        try:
            await self.bucket.delete_by_name(check_sha256(sha256))
            return True
        except NoFile:
            return False

    @contextlib.asynccontextmanager
    async def local_path(self, sha256: str) -> AsyncIterator[Path]:
        self.require_usable()
        digest = check_sha256(sha256)
        if not await self.exists(digest):
            raise ContentNotFound(digest)
        fd, name = await asyncio.to_thread(
            tempfile.mkstemp, prefix=f"enginel-{digest[:16]}-", suffix=".tmp", dir=self.tmp_dir
        )
        path = Path(name)
        try:
            try:
                pending = bytearray()
                async with contextlib.aclosing(self.read(digest)) as pieces:  # type: ignore[type-var]
                    async for piece in pieces:
                        pending += piece
                        if len(pending) >= WRITE_BUFFER:
                            data, pending = pending, bytearray()
                            await _to_thread_settled(_write_all, fd, data)
                await _to_thread_settled(_write_all, fd, pending)
            finally:
                os.close(fd)
            yield path
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def purge_incomplete(self, older_than: float = 86400.0, limit: int = 1000) -> int:
        # An upload's ObjectId carries its start time, so age needs no extra field.
        cutoff = ObjectId.from_datetime(datetime.now(UTC) - timedelta(seconds=older_than))
        stale = await self.uploads.find({"_id": {"$lt": cutoff}}, {"_id": 1}).limit(limit).to_list()
        for doc in stale:
            # A files document means the commit finished and only the marker's removal was lost.
            if await self.files.find_one({"_id": doc["_id"]}, {"_id": 1}) is None:
                await self.chunks.delete_many({"files_id": doc["_id"]})
            await self.uploads.delete_one({"_id": doc["_id"]})
        return len(stale)


STORAGE_KINDS = ("filesystem", "gridfs")


def make_storage(
    kind: str,
    *,
    root: Path | str | None = None,
    db: Db | None = None,
    bucket: str = CAD_FILES,
    tmp_dir: Path | str | None = None,
    durable: bool = True,
) -> Storage:
    """Build the configured backend: "filesystem" needs ``root``; "gridfs" needs ``db``."""
    if kind == "filesystem":
        if root is None:
            raise ValueError("filesystem storage needs a root directory")
        return FileSystemStorage(root, durable=durable)
    if kind == "gridfs":
        if db is None:
            raise ValueError("gridfs storage needs a database")
        return GridFSStorage(db, bucket, tmp_dir=tmp_dir)
    raise ValueError(f"unknown storage kind {kind!r}; expected one of {', '.join(STORAGE_KINDS)}")
