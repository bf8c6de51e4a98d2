"""Launcher of the embedded SecantusDB server (`python -m models.embedded_db`) and the pid file that names it."""

# SecantusDB 0.7.0b3's own entry point (`secantusd-py`) stops the server inside a SIGTERM handler while the
# main thread sits in threading.Event.wait(); a signal that lands just as that thread blocks is never handled,
# and a second one that lands while the first handler holds the event's lock deadlocks: either hangs the
# process for good. Here the stop signals are blocked in every thread and taken with sigwait, so the server
# is stopped from ordinary code, and a watchdog bounds the stop.
# This module is started as its own process: it imports only the standard library and, in main(), secantus.

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from secantus.server import SecantusDBServer

MODULE = "models.embedded_db"
PID_FILE = "enginel-db.pid"
LOG_FILE = "enginel-db.log"
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# Graceful stop (drain connections, checkpoint, close WiredTiger) normally takes well under a second.
STOP_BOUND_SECONDS = 10.0
WATCHDOG_EXIT = 3
IN_USE_EXIT = 4

log = logging.getLogger("enginel.embedded_db")


class DirectoryInUse(RuntimeError):
    """The database directory belongs to a live Enginel server (or to a process that is not ours)."""


@dataclass(frozen=True)
class Owner:
    """What a locked pid file says about the launcher holding it."""

    pid: int
    parent_pid: int
    port: int
    storage_path: str


def pid_file(storage_path: Path | str) -> Path:
    return Path(storage_path) / PID_FILE


def process_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_parent(pid: int) -> int | None:
    """The pid's parent, or None when it is gone (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; state and ppid follow its last ")".
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return None if state in ("Z", "X") else int(ppid)


def is_launcher_for(pid: int, storage_path: str) -> bool:
    """Whether pid runs this launcher on storage_path: guards against a pid reused by another process."""
    argv = process_cmdline(pid)
    if not argv or MODULE not in argv:
        return False
    try:
        return argv[argv.index("--storage-path") + 1] == storage_path
    except (ValueError, IndexError):
        return False


def read_owner(storage_path: Path | str) -> Owner | None:
    """The live launcher holding the directory's pid file, or None when no process holds it.

    The launcher keeps an exclusive flock on the pid file for its whole life, so a file whose lock can be
    taken is stale whatever pid it names (the kernel drops the lock when the process dies)."""
    try:
        fd = os.open(pid_file(storage_path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        deadline = time.monotonic() + 2.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                return None
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            try:
                record = json.loads(text)
                return Owner(
                    int(record["pid"]), int(record["parent_pid"]), int(record["port"]), str(record["storage_path"])
                )
            except (ValueError, KeyError, TypeError):
                # The launcher writes its record right after locking and empties it just before unlocking.
                if time.monotonic() > deadline:
                    raise DirectoryInUse(
                        f"{pid_file(storage_path)} is locked by a process but names none ({text[:80]!r})"
                    ) from None
                time.sleep(0.02)
    finally:
        os.close(fd)


def _wait_released(storage_path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_owner(storage_path) is None:
            return True
        time.sleep(0.05)
    return read_owner(storage_path) is None


def reclaim_directory(storage_path: str, stop_timeout: float = STOP_BOUND_SECONDS + 5.0) -> None:
    """Stop a database left running by a server that is gone; refuse when a live server still uses it.

    Called by the server before it starts its own launcher on storage_path (an absolute path)."""
    owner = read_owner(storage_path)
    if owner is None:
        return
    path = pid_file(storage_path)
    if not is_launcher_for(owner.pid, storage_path):
        raise DirectoryInUse(
            f"{path} is locked by pid {owner.pid}, which is not Enginel's database launcher for "
            f"{storage_path}; not touching it. Stop that process or choose another data directory."
        )
    parent = process_parent(owner.pid)
    if parent is None:
        _wait_released(storage_path, 5.0)  # exiting right now
        return
    if parent == owner.parent_pid:
        # A process's parent only keeps its pid while it lives (orphans are re-parented), so this server is alive.
        raise DirectoryInUse(
            f"the embedded database in {storage_path} is in use by a running Enginel server (pid {parent}, "
            f"database pid {owner.pid}, port {owner.port}); stop that server or choose another data directory"
        )
    log.warning(
        "stopping the embedded database (pid %s) left running by a server that is gone (pid %s); it holds %s",
        owner.pid,
        owner.parent_pid,
        storage_path,
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(owner.pid, signal.SIGTERM)
    if _wait_released(storage_path, stop_timeout):
        return
    log.warning("leftover embedded database (pid %s) did not stop in %ss; killing it", owner.pid, stop_timeout)
    if is_launcher_for(owner.pid, storage_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(owner.pid, signal.SIGKILL)
    if not _wait_released(storage_path, 10.0):
        raise DirectoryInUse(f"the leftover embedded database (pid {owner.pid}) in {storage_path} would not exit")


def _claim(storage: Path, port: int, parent_pid: int) -> int | None:
    """Lock the pid file and write this process's record into it; None when another launcher holds it."""
    storage.mkdir(parents=True, exist_ok=True)
    fd = os.open(pid_file(storage), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + 2.0  # a server's read_owner() probe holds a shared lock for a moment
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.02)
    record = {"pid": os.getpid(), "parent_pid": parent_pid, "port": port, "storage_path": str(storage)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
    return fd


def _release(fd: int) -> None:
    # Emptied, not removed: unlinking a locked file lets a newcomer lock a fresh inode beside a live owner.
    os.ftruncate(fd, 0)
    os.close(fd)


def build_server(host: str, port: int, storage_path: str, log_level: str) -> SecantusDBServer:
    """The SecantusDBServer secantus.cli.main builds, from built-in defaults and these flags.

    No secantusd.toml is discovered: a stray one in the working directory must not reconfigure Enginel's database."""
    from secantus.config import SecantusConfig, apply_overrides
    from secantus.server import SecantusDBServer

    cfg = apply_overrides(
        SecantusConfig(), {"host": host, "port": port, "storage_path": storage_path, "log_level": log_level}
    )
    return SecantusDBServer(
        host=cfg.host,
        port=cfg.port,
        storage_path=cfg.storage_path,
        require_auth=cfg.auth,
        noop_heartbeat_seconds=cfg.noop_heartbeat_seconds,
        replica_set_name=None if cfg.standalone else "secantus",
        enable_test_commands=bool(cfg.enable_test_commands),
        oplog_retention_seconds=cfg.oplog_retention_seconds,
        oplog_max_entries=cfg.oplog_max_entries,
        oplog_archive_dir=cfg.oplog_archive_dir,
        cache_size=cfg.cache_size,
        session_max=cfg.session_max,
        sync_on_commit=cfg.sync_on_commit,
        tls_cert_file=cfg.tls_cert_file,
        tls_key_file=cfg.tls_key_file,
        tls_ca_file=cfg.tls_ca_file,
        tls_require_client_cert=cfg.tls_require_client_cert,
    )


def arm_watchdog(bound: float) -> None:
    """Exit the process hard if it is still alive `bound` seconds from now."""

    def expire() -> None:
        time.sleep(bound)
        os.write(2, f"embedded database: graceful stop took over {bound}s; exiting hard\n".encode())
        os._exit(WATCHDOG_EXIT)

    threading.Thread(target=expire, name="enginel-db-watchdog", daemon=True).start()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--storage-path", required=True, help="WiredTiger directory, or :memory:")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="The starting server; exit at once if it is already gone."
    )
    parser.add_argument("--stop-timeout", type=float, default=STOP_BOUND_SECONDS, help="Bound on a graceful stop.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then stop within the bound; exit codes 0, 1 (failed start), 3, 4 (in use)."""
    # Before any thread exists: threads inherit the mask, so no thread ever runs a handler for these signals;
    # they stay pending until wait_for_stop() takes them.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parent_pid = args.parent_pid if args.parent_pid is not None else os.getppid()
    if os.getppid() != parent_pid:
        log.warning("parent %s exited before the database started; not starting", parent_pid)
        return 0
    lock = None
    if args.storage_path != ":memory:":
        storage = Path(args.storage_path)
        lock = _claim(storage, args.port, parent_pid)
        if lock is None:
            owner = read_owner(storage)
            log.error("%s is in use by another embedded database (pid %s)", storage, owner.pid if owner else "?")
            return IN_USE_EXIT
    try:
        server = build_server(args.host, args.port, args.storage_path, args.log_level)
        server.start()
    except Exception:
        log.exception("embedded database failed to start")
        if lock is not None:
            _release(lock)
        return 1
    log.info("serving %s on %s:%s (pid %s)", args.storage_path, args.host, args.port, os.getpid())
    # The server's PR_SET_PDEATHSIG turns its death into a SIGTERM here, so this also covers a killed server.
    signum = signal.sigwait(STOP_SIGNALS)
    arm_watchdog(args.stop_timeout)
    log.info("stopping on %s", signal.Signals(signum).name)
    # server.stop() closes the listening socket, which on Linux does not wake the thread blocked in accept();
    # its join would wait the full 2 s. shutdown() wakes it (accept fails, and the accept loop returns).
    listener = getattr(server, "_socket", None)
    if listener is not None:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
    server.stop()
    if lock is not None:
        _release(lock)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # WiredTiger is closed; skipping interpreter teardown keeps the exit bounded (daemon threads, finalizers).
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
