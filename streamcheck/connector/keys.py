"""Block keys: a chained hash of the token ids of each full block, plus the layer.

Block i's key covers tokens [0, (i+1) * block_size): the same prefix gives the same keys on
any worker, and a different prefix never reuses a key (the chain carries every earlier token).
Keys are short hex strings that every backend accepts (no path or protocol characters).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence


def block_hashes(token_ids: Sequence[int], block_size: int, namespace: str = "") -> list[str]:
    """One hex digest per FULL block of ``token_ids`` (a trailing partial block has none).

    Block i's digest is blake2b-128 of block i-1's digest and its tokens as little-endian
    int64 (block 0's "previous" is the digest of the namespace). A store kept on disk is
    found again only if this never changes (a test pins it). The tokens are packed once, not
    per block: the scheduler hashes every new request's prompt on the engine's thread."""
    digests: list[str] = []
    blake2b = hashlib.blake2b
    previous = blake2b(namespace.encode(), digest_size=16).digest()
    step = 8 * block_size
    count = len(token_ids) // block_size * block_size
    packed = memoryview(struct.pack(f"<{count}q", *token_ids[:count]))
    for start in range(0, 8 * count, step):
        h = blake2b(previous, digest_size=16)
        h.update(packed[start:start + step])
        previous = h.digest()
        digests.append(previous.hex())
    return digests


def layer_key(block_hash: str, layer: int) -> str:
    return f"{block_hash}.L{layer}"
