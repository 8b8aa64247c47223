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
    """One hex digest per FULL block of ``token_ids`` (a trailing partial block has none)."""
    digests: list[str] = []
    previous = hashlib.blake2b(namespace.encode(), digest_size=16).digest()
    full = len(token_ids) // block_size
    for i in range(full):
        chunk = token_ids[i * block_size:(i + 1) * block_size]
        h = hashlib.blake2b(previous, digest_size=16)
        h.update(struct.pack(f"<{len(chunk)}q", *chunk))
        previous = h.digest()
        digests.append(previous.hex())
    return digests


def layer_key(block_hash: str, layer: int) -> str:
    return f"{block_hash}.L{layer}"
