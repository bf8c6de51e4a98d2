"""MongoDB connection, the embedded SecantusDB child process, index creation and integer id counters."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, IndexModel, MongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

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
    # Linux only: the database child gets SIGTERM if the server is killed outright (SIGKILL, OOM),
    # so a crashed server never leaves an orphan holding the data directory's lock.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    # Its own process group, so a terminal's Ctrl-C reaches the server, which then stops it in order.
    os.setpgrp()


class EmbeddedMongo:
    """A SecantusDB server run as a child process on a free loopback port."""

    def __init__(
        self,
        storage_path: Path | str,
        command: str = "secantusd-py",
        start_timeout: float = 30.0,
        log_level: str = "WARNING",
    ) -> None:
        self.storage_path = str(storage_path)
        self.command = command
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def launch(self) -> None:
        """Start the child process. Call from a long-lived thread: the child's death signal follows it."""
        if self.storage_path != ":memory:":
            Path(self.storage_path).mkdir(parents=True, exist_ok=True)
        exe = self.command
        venv_exe = Path(sys.executable).parent / self.command
        if os.sep not in exe and venv_exe.exists():
            exe = str(venv_exe)  # prefer the copy installed beside this interpreter
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                exe,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                self.storage_path,
                "--log-level",
                self.log_level,
            ],
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"embedded database exited with code {self.process.returncode}")

    async def start(self) -> str:
        self.launch()
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.uri, serverSelectionTimeoutMS=250)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        try:
            while True:
                self._check_alive()
                try:
                    await client.admin.command("ping")
                    break
                except Exception:
                    if loop.time() > deadline:
                        raise RuntimeError("embedded database did not answer ping in time") from None
                    await asyncio.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        finally:
            await client.close()
        log.info(
            "embedded database (pid %s) on port %s, data in %s",
            self.process.pid if self.process else "?",
            self.port,
            self.storage_path,
        )
        return self.uri

    def start_blocking(self) -> str:
        """start() for synchronous callers (test fixtures), polling with the synchronous driver."""
        self.launch()
        client: MongoClient[dict[str, Any]] = MongoClient(self.uri, serverSelectionTimeoutMS=250)
        deadline = time.monotonic() + self.start_timeout
        try:
            while True:
                self._check_alive()
                try:
                    client.admin.command("ping")
                    return self.uri
                except Exception:
                    if time.monotonic() > deadline:
                        raise RuntimeError("embedded database did not answer ping in time") from None
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("embedded database did not stop in %ss; killing it", timeout)
            proc.kill()
            proc.wait()


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
    now = datetime.now(UTC)
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
    return datetime.now(UTC)
