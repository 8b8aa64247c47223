"""Storage backends of the reference KV connector: host memory, local disk, a Redis server.

A backend only moves fixed-size KV blocks between host buffers and its store; ``base`` holds
the contract the connector runtime codes against.
"""

from streamcheck.connector.backends.base import (
    BackendError,
    KVBackend,
    Transfer,
    TransferResult,
    TransferState,
    validate_key,
)
from streamcheck.connector.backends.disk import DiskBackend
from streamcheck.connector.backends.host import HostBackend
from streamcheck.connector.backends.redis_store import RedisBackend

__all__ = [
    "BackendError",
    "DiskBackend",
    "HostBackend",
    "KVBackend",
    "RedisBackend",
    "Transfer",
    "TransferResult",
    "TransferState",
    "validate_key",
]
