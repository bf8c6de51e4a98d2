"""Worker functions for the pool tests: well-behaved, failing, crashing and slow jobs for spawned workers."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

Progress = Callable[[int, int, str], None]


def echo(value: Any) -> Any:
    return value


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def pid() -> int:
    return os.getpid()


def count_up(steps: int, progress: Progress) -> int:
    for step in range(1, steps + 1):
        progress(step, steps, f"step {step}")
    return steps


def fail(message: str) -> None:
    raise ValueError(message)


def exit_now(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)  # the signal is delivered before this returns


def sleep(seconds: float, progress: Progress | None = None) -> int:
    """Sleep, first announcing the worker's pid through progress so a test can watch the process."""
    if progress is not None:
        progress(0, 1, str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def timed_sleep(seconds: float) -> tuple[int, float, float]:
    start = time.monotonic()
    time.sleep(seconds)
    return os.getpid(), start, time.monotonic()


def loaded_modules(names: list[str]) -> dict[str, bool]:
    return {name: name in sys.modules for name in names}


def large_result(size: int) -> bytes:
    return b"x" * size


def allocate(mib: int) -> int:
    """Allocate and touch ``mib`` MiB at once, as a file that makes OpenCascade build a huge structure would."""
    block = bytearray(mib * 1024 * 1024)
    block[:: 1 << 20] = b"x" * len(range(0, len(block), 1 << 20))
    return len(block)


def address_space_limit() -> list[int]:
    """This process's RLIMIT_AS, soft and hard."""
    import resource

    return list(resource.getrlimit(resource.RLIMIT_AS))
