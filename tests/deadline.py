"""A time limit for code that once hung (FIFOs, endless files, fuzzed headers): fail, never hang."""
from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def deadline(seconds: int = 20) -> Iterator[None]:
    """Raise TimeoutError in the main thread if the block runs past ``seconds`` (SIGALRM)."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
