"""Identifiers: UUIDs as canonical lowercase strings; the ones the gateway makes are UUIDv7."""

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_sequence = 0


def new_id() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then a 12-bit counter, then 62 random bits.

    The counter keeps ids made in the same millisecond by this process in creation order, so
    ids sort by time like the `llm` CLI's ULIDs while staying valid UUIDs for Chainlit's columns.
    """
    global _last_ms, _sequence
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms, _sequence = now_ms, int.from_bytes(os.urandom(2), "big") & 0x7FF
        else:
            _sequence += 1
            if _sequence > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms, _sequence = _last_ms + 1, 0
        ms, seq = _last_ms, _sequence
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def normalize_id(value: str) -> str:
    """The canonical form of a UUID string; raises ValueError when it is not a UUID."""
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("not a UUID")
    return str(uuid.UUID(value))
