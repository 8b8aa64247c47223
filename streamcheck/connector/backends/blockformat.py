"""The stored block format: a 24-byte header in front of the raw payload, verified on load.

Header (little endian): magic ``b"SCKV"``, format version (u16), header length (u16), payload
length (u64), CRC-32 (u32), reserved (u32, zero). No pickle, nothing evaluated: a load reads
fixed-width integers and compares them.

Why CRC-32 (``zlib.crc32``) rather than BLAKE2b: the checksum guards against accidents — a torn or
truncated write, a flipped bit, a block filed under the wrong key — not against an attacker (who
could write a matching digest of any unkeyed hash). CRC-32 catches every burst error up to 32
bits and random damage with probability 1 - 2**-32, and runs about 4x faster than
``blake2b(digest_size=8)`` (measured 3.6 vs 0.9 GB/s on 64 KiB blocks), which matters because it
is on the path of every save and load.

The CRC is seeded with the key, so a block that lands under another key (a rename mix-up, a
copied file) fails verification even though its bytes are intact.
"""

from __future__ import annotations

import struct
import zlib

from streamcheck.connector.backends.base import BackendError

MAGIC = b"SCKV"
VERSION = 1
_HEADER = struct.Struct("<4sHHQII")
HEADER_NBYTES = _HEADER.size


def block_crc(key: str, payload: memoryview | bytes) -> int:
    """CRC-32 of the payload, chained from the CRC of the key."""
    return zlib.crc32(payload, zlib.crc32(key.encode("ascii")))


def encode_header(key: str, payload: memoryview | bytes) -> bytes:
    """The header for ``payload`` stored under ``key``."""
    return _HEADER.pack(MAGIC, VERSION, HEADER_NBYTES, len(payload), block_crc(key, payload), 0)


def decode_header(header: bytes | memoryview, expected_nbytes: int) -> int:
    """Check a header against the expected block size; return the CRC it promises.

    Raises ``BackendError`` naming what is wrong, so a failed load says why.
    """
    if len(header) < HEADER_NBYTES:
        raise BackendError(f"corrupt block: truncated header ({len(header)} bytes)")
    magic, version, header_nbytes, nbytes, crc, _ = _HEADER.unpack_from(header)
    if magic != MAGIC:
        raise BackendError(f"corrupt block: bad magic {magic!r}")
    if version != VERSION or header_nbytes != HEADER_NBYTES:
        raise BackendError(f"unsupported block format version {version} (header {header_nbytes})")
    if nbytes != expected_nbytes:
        raise BackendError(f"corrupt block: payload is {nbytes} bytes, expected {expected_nbytes}")
    return crc


def verify_payload(key: str, payload: memoryview | bytes, crc: int) -> None:
    """Raise ``BackendError`` (with "checksum mismatch" in the message) if the CRC differs."""
    actual = block_crc(key, payload)
    if actual != crc:
        raise BackendError(
            f"checksum mismatch for block {key!r}: stored crc32 {crc:#010x}, got {actual:#010x}"
        )


def decode_block(key: str, data: bytes | memoryview, expected_nbytes: int) -> memoryview:
    """Verify a whole stored block (header + payload); return a view of the payload."""
    view = memoryview(data)
    crc = decode_header(view[:HEADER_NBYTES], expected_nbytes)
    payload = view[HEADER_NBYTES:]
    if len(payload) != expected_nbytes:
        raise BackendError(
            f"corrupt block: {len(payload)} payload bytes stored, header says {expected_nbytes}"
        )
    verify_payload(key, payload, crc)
    return payload
