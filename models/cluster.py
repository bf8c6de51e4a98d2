"""The process registry: each server process's entry and heartbeat, and the checks that the live processes agree."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from models.collections import META, PROCESSES
from models.database import Db, register_indexes, utcnow
from models.storage import Storage

log = logging.getLogger("enginel.cluster")

STORE_MARKER = ".enginel-store"  # in the files folder: which store this folder is
STORE_RECORD = "file_store"  # _id of the META document naming the deployment's filesystem store
EXIT_REFUSED = 78  # EX_CONFIG (sysexits.h): a configuration error, which restarting will not fix
MAX_ENTRIES = 1000  # registry entries read per look; a deployment has a handful to tens
VIEW_TTL = 1.0  # seconds one look at the registry answers every health request
LEAVE_TIMEOUT = 5.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

FILE_STORE_MISMATCH = "FILE_STORE_MISMATCH"
STORAGE_BACKEND_MISMATCH = "STORAGE_BACKEND_MISMATCH"
BROKER_NOT_SHARED = "BROKER_NOT_SHARED"
VERSION_MISMATCH = "VERSION_MISMATCH"

# What the API's 503 says: the problem, without the paths and hosts that only the log and staff see.
PUBLIC_REFUSALS = {
    FILE_STORE_MISMATCH: "This server process refuses uploads and analysis: its files folder is not this "
    "deployment's file store (FILE_STORE_MISMATCH). The server log and /api/health/detailed/ say more.",
    STORAGE_BACKEND_MISMATCH: "This server process refuses uploads and analysis: its storage backend differs "
    "from the other processes' of this deployment (STORAGE_BACKEND_MISMATCH). The server log and "
    "/api/health/detailed/ say more.",
}

register_indexes(
    PROCESSES,
    # Only removes a crashed process's entry eventually (MongoDB's TTL monitor runs once a minute); who is live
    # is read from expires_at itself.
    [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0)],
)


class ClusterRefused(RuntimeError):
    """This process must not start: a live peer on the same database disagrees on the broker or the version."""


@dataclass(frozen=True)
class ClusterConfig:
    """What this process registers and how often (the ENGINEL_CLUSTER_* settings and those that must agree)."""

    storage_backend: str
    files_dir: Path
    workers: int
    redis_prefix: str  # meaningful only with Redis
    heartbeat_interval: float = 5.0
    heartbeat_expiry: float = 30.0
    allow_unshared_broker: bool = False
    version: str = ""  # empty: this installation's (enginel_version())


@dataclass(frozen=True)
class Problem:
    """One disagreement among the live processes: a stable code, the operator's explanation, who is involved."""

    code: str
    detail: str
    processes: tuple[str, ...]


@dataclass(frozen=True)
class StoreCheck:
    store_id: str | None
    problem: str | None  # the operator's explanation (paths and hosts): logged and shown to staff


# ---------------------------------------------------------------- version


def enginel_version() -> str:
    """The installed distribution's version (setup.cfg's), "unknown" when Enginel runs uninstalled."""
    try:
        return metadata.version("enginel")
    except metadata.PackageNotFoundError:
        return "unknown"


_RELEASE = re.compile(r"(\d+)\.(\d+)")


def release(version: str) -> str:
    """major.minor, the part that must agree; the whole string when it has none."""
    match = _RELEASE.match(version)
    return f"{match.group(1)}.{match.group(2)}" if match else version


def compatible(a: str, b: str) -> bool:
    """Same major.minor: patch releases may mix during a rolling restart, anything more stops every process first."""
    return release(a) == release(b)


# ---------------------------------------------------------------- this machine


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def machine_key() -> str | None:
    """Host name, boot and pid namespace: entries with this process's key name pids it can check; None off Linux."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{socket.gethostname()}|{boot}|{namespace}" if boot else None


def _stat(pid: int) -> list[str] | None:
    text = _read(f"/proc/{pid}/stat")
    # The command name may hold spaces and parentheses; the fields after its last ")" start at the state.
    return text.rsplit(")", 1)[1].split() if text and ")" in text else None


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot: with the pid, names one process for good."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def gone(entry: dict[str, Any], machine: str | None) -> bool:
    """Whether a peer's entry belongs to a process on this machine that no longer runs (killed, crashed)."""
    pid = entry.get("pid")
    if machine is None or entry.get("machine") != machine or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # EPERM: another user's process, alive
    fields = _stat(pid)
    if fields is None:
        return False  # /proc hidden from us: believe the heartbeat
    return fields[0] == "Z" or (entry.get("start_ticks") is not None and start_ticks(pid) != entry["start_ticks"])


# ---------------------------------------------------------------- the file store's identity


def read_marker(root: Path) -> str | None:
    """The store id written in `root`'s marker; None when there is no marker. OSError/ValueError when unreadable."""
    try:
        text = (root / STORE_MARKER).read_text()
    except FileNotFoundError:
        return None
    store_id = json.loads(text).get("store_id")
    if not isinstance(store_id, str) or not store_id:
        raise ValueError(f"{root / STORE_MARKER} names no store_id")
    return store_id


def create_marker(root: Path, host: str) -> str:
    """Mark `root` as a new store; when another process marked it first, its mark stands. The marker's id."""
    root.mkdir(mode=0o750, parents=True, exist_ok=True)
    body = {"store_id": uuid.uuid4().hex, "created_at": utcnow().isoformat(), "host": host, "path": str(root)}
    tmp = root / f"{STORE_MARKER}.{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o440)
        try:
            os.write(fd, json.dumps(body).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() is atomic and never replaces: of processes marking one shared folder at once, one wins whole.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, root / STORE_MARKER)
    finally:
        tmp.unlink(missing_ok=True)
    marker = read_marker(root)
    assert marker is not None
    return marker


async def check_file_store(db: Db, root: Path, host: str) -> StoreCheck:
    """Whether `root` is the deployment's filesystem store: the database records the first store's marker, and
    every later look compares the folder's marker with that record. A first use marks and records."""
    try:
        marker = await asyncio.to_thread(read_marker, root)
    except (OSError, ValueError) as exc:
        return StoreCheck(None, f"the store marker {root / STORE_MARKER} cannot be read ({exc}).")
    record = await db[META].find_one({"_id": STORE_RECORD})
    if record is None:
        if marker is None:
            marker = await asyncio.to_thread(create_marker, root, host)
        try:
            await db[META].insert_one(
                {"_id": STORE_RECORD, "store_id": marker, "host": host, "path": str(root), "recorded_at": utcnow()}
            )
            log.info("cluster: file store %s recorded as this deployment's store %s", root, marker)
            return StoreCheck(marker, None)
        except DuplicateKeyError:
            record = await db[META].find_one({"_id": STORE_RECORD})
            assert record is not None
    recorded = str(record["store_id"])
    if marker == recorded:
        return StoreCheck(marker, None)
    known = f"this database's file store is {recorded} (first used by {record.get('host')} at {record.get('path')})"
    fix = (
        f"Give every process the same files folder (ENGINEL_DATA_DIR/files on a shared mount holding "
        f"{STORE_MARKER}) or use ENGINEL_STORAGE_BACKEND=gridfs on every process."
    )
    if marker is None:
        return StoreCheck(None, f"the files folder {root} has no store marker ({STORE_MARKER}), but {known}. {fix}")
    return StoreCheck(marker, f"the files folder {root} is store {marker}, but {known}. {fix}")


# ---------------------------------------------------------------- agreement


def describe(entry: dict[str, Any]) -> str:
    return f"process {entry['_id']} on {entry.get('host')} (pid {entry.get('pid')})"


def _broker(entry: dict[str, Any]) -> dict[str, Any]:
    broker = entry.get("broker")
    return broker if isinstance(broker, dict) else {}


def _storage(entry: dict[str, Any]) -> dict[str, Any]:
    storage = entry.get("storage")
    return storage if isinstance(storage, dict) else {}


def broker_key(entry: dict[str, Any]) -> Hashable:
    """Processes share a broker only through one Redis (by its marker key) under one prefix; an in-process
    broker is its process's alone."""
    broker = _broker(entry)
    if broker.get("kind") == "redis":
        return ("redis", broker.get("redis_id"), broker.get("prefix"))
    return ("in-process", entry["_id"])


def broker_text(entry: dict[str, Any]) -> str:
    broker = _broker(entry)
    if broker.get("kind") == "redis":
        return f"Redis {broker.get('address')} (id {broker.get('redis_id')}) with prefix {broker.get('prefix')!r}"
    return "its in-process broker (no ENGINEL_REDIS_URL)"


def backend(entry: dict[str, Any]) -> str:
    return str(_storage(entry).get("backend", "?"))


def older(entry: dict[str, Any], than: dict[str, Any]) -> bool:
    """Registered first (the database's clock; ids break ties): on a disagreement the newcomer gives way."""
    return (entry["started_at"], entry["_id"]) < (than["started_at"], than["_id"])


def _groups(entries: list[dict[str, Any]], key: Callable[[dict[str, Any]], Hashable]) -> dict[Hashable, list[str]]:
    groups: dict[Hashable, list[str]] = {}
    for entry in entries:
        groups.setdefault(key(entry), []).append(entry["_id"])
    return groups


def disagreements(entries: list[dict[str, Any]]) -> list[Problem]:
    """Every way the live processes of one database disagree; empty when they act as one."""
    ids = tuple(e["_id"] for e in entries)
    problems = []
    for entry in entries:
        problem = _storage(entry).get("problem")
        if problem:
            problems.append(
                Problem(
                    FILE_STORE_MISMATCH, f"{describe(entry)} refuses uploads and analysis: {problem}", (entry["_id"],)
                )
            )
    backends = _groups(entries, backend)
    if len(backends) > 1:
        listed = "; ".join(f"{name}: {', '.join(members)}" for name, members in backends.items())
        problems.append(
            Problem(STORAGE_BACKEND_MISMATCH, f"the processes use different storage backends ({listed}).", ids)
        )
    if len(_groups(entries, broker_key)) > 1:
        listed = "; ".join(f"{describe(e)} uses {broker_text(e)}" for e in entries)
        problems.append(
            Problem(
                BROKER_NOT_SHARED,
                f"the processes on this database do not share one Redis, so realtime events and rate limits stay "
                f"inside each ({listed}). Give every process the same ENGINEL_REDIS_URL and "
                f"ENGINEL_REALTIME_REDIS_PREFIX.",
                ids,
            )
        )
    releases = _groups(entries, lambda e: release(str(e.get("version"))))
    if len(releases) > 1:
        listed = "; ".join(f"{describe(e)} runs {e.get('version')}" for e in entries)
        problems.append(Problem(VERSION_MISMATCH, f"the processes run incompatible versions ({listed}).", ids))
    return problems


def refusals(me: dict[str, Any], entries: list[dict[str, Any]], *, allow_unshared_broker: bool) -> list[str]:
    """Why this process must not start: an older live peer runs another major.minor version, or does not share
    its broker (unless the single-process override is set)."""
    reasons = []
    for peer in entries:
        if peer["_id"] == me["_id"] or not older(peer, me):
            continue
        if not compatible(str(peer.get("version")), str(me.get("version"))):
            reasons.append(
                f"{describe(peer)} runs Enginel {peer.get('version')} and this process {me.get('version')}: the "
                f"processes of one deployment must run the same major.minor version (patch releases may mix). "
                f"Stop the other processes first, or start the version they run."
            )
        if broker_key(peer) != broker_key(me) and not allow_unshared_broker:
            reasons.append(
                f"{describe(peer)} uses this database with {broker_text(peer)}, and this process would use "
                f"{broker_text(me)}: realtime events and rate limits would not reach from one to the other. Give "
                f"every process the same ENGINEL_REDIS_URL (and ENGINEL_REALTIME_REDIS_PREFIX), or set "
                f"ENGINEL_ALLOW_UNSHARED_BROKER=true to start this one with a broker of its own anyway."
            )
    return reasons


def backend_refusal(me: dict[str, Any], entries: list[dict[str, Any]]) -> str | None:
    """Why this process may not store files when an older live peer stores them with another backend."""
    for peer in entries:
        if peer["_id"] != me["_id"] and older(peer, me) and backend(peer) != backend(me):
            return (
                f"this process uses the {backend(me)} storage backend but {describe(peer)}, running since before "
                f"it, uses {backend(peer)}: files stored by one would be missing for the other. Set the same "
                f"ENGINEL_STORAGE_BACKEND on every process."
            )
    return None


# ---------------------------------------------------------------- rendering


def render_process(entry: dict[str, Any], this_process: str) -> dict[str, Any]:
    """One live process for platform staff: where it runs, what it does, what it was configured with."""
    storage = _storage(entry)
    broker = _broker(entry)
    workers = int(entry.get("workers") or 0)
    return {
        "id": entry["_id"],
        "this_process": entry["_id"] == this_process,
        "host": entry.get("host"),
        "pid": entry.get("pid"),
        "role": "workers" if workers > 0 else "web",
        "workers": workers,
        "version": entry.get("version"),
        "started_at": entry.get("started_at"),
        "last_heartbeat": entry.get("heartbeat_at"),
        "expires_at": entry.get("expires_at"),
        "storage": {
            "backend": storage.get("backend"),
            "store_id": storage.get("store_id"),
            "path": storage.get("path"),
            "problem": storage.get("problem"),
        },
        "broker": {"kind": broker.get("kind"), "redis": broker.get("address"), "prefix": broker.get("prefix")},
    }


def render_cluster(entries: list[dict[str, Any]], this_process: str, *, staff: bool) -> dict[str, Any]:
    """The detailed health document's cluster section: hosts, pids, paths and explanations only for platform
    staff; anyone else gets counts and the problems' codes."""
    problems = disagreements(entries)
    summary: dict[str, Any] = {
        "status": "degraded" if problems else "ok",
        "processes": len(entries),
        "with_workers": sum(1 for e in entries if int(e.get("workers") or 0) > 0),
        "problems": sorted({p.code for p in problems}),
    }
    if not staff:
        return summary
    return {
        **summary,
        "this_process": this_process,
        "processes": [render_process(e, this_process) for e in entries],
        "problems": [{"code": p.code, "detail": p.detail, "processes": list(p.processes)} for p in problems],
    }


# ---------------------------------------------------------------- this process


class ClusterMember:
    """This process in the registry. join() checks the file store, registers and refuses to start beside an
    older peer that disagrees on the broker or version; start() heartbeats, watches peers come and go and
    re-checks the store; leave() removes the entry. While the store is not the deployment's, the storage refuses
    uploads and the job runner claims nothing."""

    def __init__(self, db: Db, config: ClusterConfig, storage: Storage, redis: Redis | None = None) -> None:
        self.db = db
        self.config = config
        self.storage = storage
        self.redis = redis
        self.id = uuid.uuid4().hex[:16]
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.machine = machine_key()
        self.start_ticks = start_ticks(self.pid)
        self.version = config.version or enginel_version()
        self.store = StoreCheck(None, None)
        self.problems: list[Problem] = []
        self._redis_id: str | None = None
        self._me: dict[str, Any] | None = None
        self._peers: dict[str, dict[str, Any]] = {}
        self._refusal: str | None = None
        self._view: tuple[float, list[dict[str, Any]]] | None = None
        self._view_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._registered = False

    @property
    def collection(self) -> AsyncCollection[dict[str, Any]]:
        return self.db[PROCESSES]

    # ------------------------------------------------------------------ lifecycle

    async def join(self) -> None:
        """Register and check the peers; ClusterRefused (entry removed) when this process must not start."""
        await self._refresh()
        entries = await self._look()
        reasons = refusals(self._self(), entries, allow_unshared_broker=self.config.allow_unshared_broker)
        if reasons:
            # A peer that is stopping, or whose Redis identity is a heartbeat behind, settles within an interval.
            log.warning("cluster: %s; looking again in %gs", reasons[0], self.config.heartbeat_interval)
            await asyncio.sleep(self.config.heartbeat_interval)
            await self._refresh()
            entries = await self._look()
            reasons = refusals(self._self(), entries, allow_unshared_broker=self.config.allow_unshared_broker)
        if reasons:
            await self.leave()
            raise ClusterRefused(
                "refusing to start: "
                + " ".join(reasons)
                + f" (A process that is gone drops out {self.config.heartbeat_expiry:g} s after its last heartbeat: "
                "ENGINEL_CLUSTER_HEARTBEAT_EXPIRY.)"
            )
        peers = [e for e in entries if e["_id"] != self.id]
        log.info(
            "cluster: joined as process %s (host %s, pid %s, Enginel %s, %s, %s storage, broker: %s); %d other "
            "live process(es)%s",
            self.id,
            self.host,
            self.pid,
            self.version,
            f"{self.config.workers} analysis workers" if self.config.workers else "no analysis workers",
            self.config.storage_backend,
            broker_text(self._self()),
            len(peers),
            "".join(f"; {describe(p)} ({p.get('version')}, {p.get('workers') or 0} workers)" for p in peers),
        )
        self._evaluate(entries, announce=False)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._heartbeats(), name="enginel-cluster-heartbeat")

    async def leave(self) -> None:
        """Stop the heartbeat and remove this process's entry. Idempotent; bounded when the database is gone."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._registered:
            self._registered = False
            try:
                await asyncio.wait_for(self.collection.delete_one({"_id": self.id}), LEAVE_TIMEOUT)
                log.info("cluster: process %s left", self.id)
            except Exception as exc:
                log.warning("cluster: could not remove this process's entry (%s); it expires by itself", exc)

    # ------------------------------------------------------------------ reading the registry

    async def entries(self) -> list[dict[str, Any]]:
        """The live entries, read at most once per VIEW_TTL however many callers ask."""
        async with self._view_lock:
            loop = asyncio.get_running_loop()
            if self._view is not None and loop.time() - self._view[0] < VIEW_TTL:
                return self._view[1]
            return await self._look()

    async def report(self, *, staff: bool) -> dict[str, Any]:
        """The cluster section of the detailed health document (see render_cluster)."""
        try:
            entries = await self.entries()
        except Exception as exc:  # a probe reports, it never fails the request
            return {"status": f"error: {type(exc).__name__}"}
        return render_cluster(entries, self.id, staff=staff)

    async def _now(self) -> datetime:
        # The database's clock decides who is live, as it stamped the heartbeats: hosts' clocks may differ.
        hello = await self.db.command("hello")
        now = hello.get("localTime")
        if not isinstance(now, datetime):
            return utcnow()
        return now if now.tzinfo is not None else now.replace(tzinfo=UTC)

    async def _look(self) -> list[dict[str, Any]]:
        """The live entries, oldest first; entries of processes on this machine that no longer run are removed."""
        now = await self._now()
        found = (
            await self.collection.find({"expires_at": {"$gt": now}})
            .sort([("started_at", ASCENDING), ("_id", ASCENDING)])
            .limit(MAX_ENTRIES)
            .to_list()
        )
        entries = []
        for entry in found:
            if entry["_id"] != self.id and gone(entry, self.machine):
                # Matched on the heartbeat seen, so an entry written again meanwhile stays.
                await self.collection.delete_one({"_id": entry["_id"], "heartbeat_at": entry.get("heartbeat_at")})
                log.info("cluster: removed the entry of %s, which no longer runs", describe(entry))
                continue
            entries.append(self._me if entry["_id"] == self.id and self._me is not None else entry)
        self._view = (asyncio.get_running_loop().time(), entries)
        return entries

    def _self(self) -> dict[str, Any]:
        assert self._me is not None, "join() first"
        return self._me

    # ------------------------------------------------------------------ heartbeat

    async def _refresh(self) -> None:
        """Re-check the file store and the Redis identity, then write this process's entry."""
        if self.config.storage_backend == "filesystem":
            self.store = await check_file_store(self.db, self.config.files_dir, self.host)
        else:
            self.store = StoreCheck(f"{self.config.storage_backend}:{self.db.name}", None)
        if self.redis is not None:
            self._redis_id = await self._redis_identity(self.redis)
        await self._beat()

    async def _redis_identity(self, redis: Redis) -> str:
        # A key rather than INFO's run_id: it names the same data whatever address reaches it, differs per
        # logical database, and needs no INFO permission. A Redis that lost it (restart without persistence,
        # eviction) gets a new one, which every process reads at its next heartbeat.
        key = f"{self.config.redis_prefix}:cluster:redis-id"
        await redis.set(key, uuid.uuid4().hex, nx=True)
        value = await redis.get(key)
        return value.decode() if isinstance(value, bytes) else str(value)

    def _fields(self) -> dict[str, Any]:
        broker: dict[str, Any] = {"kind": "in-process"}
        if self.redis is not None:
            kwargs = self.redis.connection_pool.connection_kwargs
            where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
            broker = {
                "kind": "redis",
                "redis_id": self._redis_id,
                "prefix": self.config.redis_prefix,
                # Never the URL itself: it may carry a password.
                "address": f"{where}/{kwargs.get('db', 0)}",
            }
        return {
            "host": self.host,
            "pid": self.pid,
            "machine": self.machine,
            "start_ticks": self.start_ticks,
            "version": self.version,
            "workers": self.config.workers,
            "storage": {
                "backend": self.config.storage_backend,
                "store_id": self.store.store_id,
                "path": str(self.config.files_dir) if self.config.storage_backend == "filesystem" else None,
                "problem": self.store.problem,
            },
            "broker": broker,
        }

    async def _beat(self) -> None:
        expiry_ms = int(self.config.heartbeat_expiry * 1000)
        update = {
            **{name: {"$literal": value} for name, value in self._fields().items()},
            "started_at": {"$ifNull": ["$started_at", "$$NOW"]},
            "previous_expiry": "$expires_at",  # to tell a heartbeat after a lapse (compared here, not in the query)
            "heartbeat_at": "$$NOW",
            "expires_at": {"$add": ["$$NOW", expiry_ms]},
        }
        self._me = await self.collection.find_one_and_update(
            {"_id": self.id}, [{"$set": update}], upsert=True, return_document=ReturnDocument.AFTER
        )
        lapsed = self._me is not None and not self._me["heartbeat_at"] < (self._me.get("previous_expiry") or EPOCH)
        if self._registered and lapsed:
            log.warning(
                "cluster: this process's entry had expired or been removed (no heartbeat for over %gs: paused, "
                "or the database was out of reach); registered again",
                self.config.heartbeat_expiry,
            )
        self._registered = True

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            try:
                await self._refresh()
                self._evaluate(await self._look())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster: heartbeat failed (%s: %s); retrying", type(exc).__name__, exc)

    def _evaluate(self, entries: list[dict[str, Any]], *, announce: bool = True) -> None:
        """Log peers that came and went and what changed; apply or lift this process's storage refusal."""
        me = self._self()
        peers = {e["_id"]: e for e in entries if e["_id"] != self.id}
        if announce:
            for peer_id in peers.keys() - self._peers.keys():
                peer = peers[peer_id]
                log.info(
                    "cluster: %s joined (Enginel %s, %s workers, %s storage, broker: %s)",
                    describe(peer),
                    peer.get("version"),
                    peer.get("workers") or 0,
                    backend(peer),
                    broker_text(peer),
                )
            for peer_id in self._peers.keys() - peers.keys():
                log.info("cluster: %s left or stopped heartbeating", describe(self._peers[peer_id]))
        self._peers = peers

        code = FILE_STORE_MISMATCH if self.store.problem else None
        detail = self.store.problem
        if detail is None and (mismatch := backend_refusal(me, entries)) is not None:
            code, detail = STORAGE_BACKEND_MISMATCH, mismatch
        if detail != self._refusal:
            if detail is not None:
                log.error("cluster: this process refuses uploads and analysis: %s", detail)
            elif self._refusal is not None:
                log.info("cluster: the file store checks out again; uploads and analysis resume in this process")
            self._refusal = detail
        self.storage.refuse(PUBLIC_REFUSALS[code] if code else None)

        problems = disagreements(entries)
        before = {(p.code, p.processes) for p in self.problems}
        for problem in problems:
            own = problem.code == FILE_STORE_MISMATCH and problem.processes == (self.id,)  # logged above
            if (problem.code, problem.processes) not in before and not own:
                log.warning("cluster: %s: %s", problem.code, problem.detail)
        if self.problems and not problems:
            log.info("cluster: the live processes agree again")
        self.problems = problems
