"""MongoDB connection, the embedded SecantusDB child process, index creation and integer id counters."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pymongo import AsyncMongoClient, IndexModel, MongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from models import embedded_db
from models.collections import COUNTERS, META

log = logging.getLogger("enginel.database")

# Every module that owns a collection registers its indexes here at import time; start-up creates them all.
INDEXES: dict[str, list[IndexModel]] = {}


def register_indexes(collection: str, indexes: Iterable[IndexModel]) -> None:
    INDEXES.setdefault(collection, []).extend(indexes)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Linux only: the database child gets SIGTERM if the server is killed outright (SIGKILL, OOM), and the
    # launcher takes that signal with sigwait, so a crashed server never leaves it holding the data directory.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    # Its own process group, so a terminal's Ctrl-C reaches the server, which then stops it in order.
    os.setpgrp()


# The child's log is reopened on each start; past this size the previous one is kept as <log>.1 and a new one begun.
LOG_ROTATE_BYTES = 8 * 1024 * 1024


class EmbeddedMongo:
    """A SecantusDB server run through Enginel's launcher (models/embedded_db.py) as a child on a loopback port."""

    def __init__(
        self,
        storage_path: Path | str,
        start_timeout: float = 30.0,
        log_level: str = "WARNING",
        log_path: Path | str | None = None,
        stop_timeout: float = 15.0,
    ) -> None:
        self.storage_path = storage_path if storage_path == ":memory:" else str(Path(storage_path).resolve())
        self.start_timeout = start_timeout
        self.log_level = log_level
        # The child's output never shares the server's stdout: a reader of that pipe would wait on the child too.
        self.log_path: Path | None = Path(log_path) if log_path is not None else None
        self._temporary_log = False
        # Before SIGKILL; longer than the launcher's own bound on a graceful stop, after which it exits hard.
        self.stop_timeout = stop_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def _open_log(self) -> BinaryIO:
        if self.log_path is None:
            if self.storage_path == ":memory:":
                fd, name = tempfile.mkstemp(prefix="enginel-db-", suffix=".log")
                os.close(fd)
                self.log_path, self._temporary_log = Path(name), True
            else:
                self.log_path = Path(self.storage_path) / embedded_db.LOG_FILE
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        return self.log_path.open("ab")

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the child's log, for error messages."""
        if self.log_path is None:
            return ""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - limit))
                return fh.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def launch(self) -> None:
        """Start the child process. Call from a long-lived thread: the child's death signal follows it."""
        if self.storage_path != ":memory:":
            Path(self.storage_path).mkdir(parents=True, exist_ok=True)
            embedded_db.reclaim_directory(self.storage_path, self.stop_timeout)
        self.port = free_port()
        with self._open_log() as log_file:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    embedded_db.MODULE,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--storage-path",
                    self.storage_path,
                    "--log-level",
                    self.log_level,
                    "--parent-pid",
                    str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # The launcher is imported from this checkout, whatever the server's working directory.
                cwd=Path(__file__).resolve().parents[1],
                preexec_fn=_die_with_parent,
            )

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"embedded database exited with code {self.process.returncode}; its log {self.log_path} ends with:\n"
                + self.log_tail()
            )

    def _listening(self) -> bool:
        # A bare TCP probe: the driver's monitor retries only every 500 ms, which would dominate start-up.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.25):
                return True
        except OSError:
            return False

    async def start(self) -> str:
        self.launch()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        try:
            while not self._listening():
                self._check_alive()
                if loop.time() > deadline:
                    raise RuntimeError("embedded database did not start listening in time")
                await asyncio.sleep(0.02)
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                self.uri, serverSelectionTimeoutMS=max(1000, int((deadline - loop.time()) * 1000))
            )
            try:
                await client.admin.command("ping")
            finally:
                await client.close()
        except BaseException:
            self.stop()
            raise
        log.info(
            "embedded database (pid %s) on port %s, data in %s, log in %s",
            self.process.pid if self.process else "?",
            self.port,
            self.storage_path,
            self.log_path,
        )
        return self.uri

    def start_blocking(self) -> str:
        """start() for synchronous callers (test fixtures), polling with the synchronous driver."""
        self.launch()
        deadline = time.monotonic() + self.start_timeout
        try:
            while not self._listening():
                self._check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError("embedded database did not start listening in time")
                time.sleep(0.02)
            timeout_ms = max(1000, int((deadline - time.monotonic()) * 1000))
            client: MongoClient[dict[str, Any]] = MongoClient(self.uri, serverSelectionTimeoutMS=timeout_ms)
            with client:
                client.admin.command("ping")
        except BaseException:
            self.stop()
            raise
        return self.uri

    def stop(self, timeout: float | None = None) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout or self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded database did not stop in %ss; killing it", timeout or self.stop_timeout)
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            log.warning("embedded database exited with code %s; its log is %s", proc.returncode, self.log_path)
        elif self._temporary_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


# The types every repository constructor and service takes: one spelling, so a change of driver is one edit.
Mongo = AsyncMongoClient[dict[str, Any]]
Db = AsyncDatabase[dict[str, Any]]


def connect(uri: str) -> Mongo:
    # UUIDs are stored as strings, datetimes come back timezone-aware in UTC.
    return AsyncMongoClient(uri, tz_aware=True, uuidRepresentation="standard", serverSelectionTimeoutMS=10_000)


async def ensure_indexes(db: Db) -> None:
    """Create every registered index; creating an existing identical index is a no-op, so this is idempotent."""
    for collection, indexes in INDEXES.items():
        if indexes:
            await db[collection].create_indexes(indexes)


async def ensure_instance(db: Db) -> dict[str, Any]:
    """The deployment's identity document, created on first start and kept across restarts."""
    now = utcnow()
    doc = await db[META].find_one_and_update(
        {"_id": "instance"},
        # The secret signs cookies and upload URLs; every process of the deployment reads the same one.
        {
            "$setOnInsert": {"instance_id": str(uuid.uuid4()), "created_at": now, "secret": secrets.token_hex(32)},
            "$set": {"last_started_at": now},
        },
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    assert doc is not None
    return doc


async def next_id(db: Db, sequence: str) -> int:
    """The next integer id of a sequence (users, markups, BOM nodes, audit entries), atomic across processes."""
    doc = await db[COUNTERS].find_one_and_update(
        {"_id": sequence}, {"$inc": {"value": 1}}, upsert=True, return_document=ReturnDocument.AFTER
    )
    assert doc is not None
    return int(doc["value"])


def utcnow() -> datetime:
    """Now, in UTC, at MongoDB's precision (milliseconds): a document answered from memory right after a write shows
    the same time as a later read of what was stored."""
    return to_millis(datetime.now(UTC))


def to_millis(value: datetime) -> datetime:
    """`value` cut to whole milliseconds, as MongoDB stores it (it truncates, it does not round)."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)
