"""Source: LMCache (github LMCache/LMCache), commit
54641cad896b0bacde6b119a9f349cbd56af49b5 (2024-10-24),
lmcache/storage_backend/remote_backend.py, lines 1-70 and 119-126
(class LMCRemoteBackend; verbatim minimization).

Look-alike of c16: the same put_worker thread, but the stream creation and
the stream context are commented out. No finding.
"""
import queue
import threading
from typing import Set, Tuple, Union

import torch

from lmcache.storage_backend.abstract_backend import LMCBackendInterface
from lmcache.storage_backend.connector import CreateConnector
from lmcache.utils import CacheEngineKey, _lmcache_nvtx_annotate


class RemoteBackendEndSignal:
    pass


class LMCRemoteBackend(LMCBackendInterface):

    def __init__(self, config, metadata):
        super().__init__()
        self.existing_keys: Set[CacheEngineKey] = set()
        self.put_thread = None
        self.connection = CreateConnector(config.remote_url)

        # For async put
        self.put_queue: queue.Queue[
            Union[Tuple[CacheEngineKey, torch.Tensor],
                  RemoteBackendEndSignal]] = queue.Queue()
        self.put_thread = threading.Thread(target=self.put_worker, args=())
        self.put_thread.start()

        # FIXME(Jiayi): please remove this hard code
        self.dst_device = "cuda"

    @_lmcache_nvtx_annotate
    def put_worker(self, ):
        # put_stream = torch.cuda.Stream()
        while True:
            item = self.put_queue.get()
            if isinstance(item, RemoteBackendEndSignal):
                break
            key, value = item
            # with torch.cuda.stream(put_stream):
            self.put_blocking(key, value)

    def put_blocking(self, key: CacheEngineKey, kv_chunk: torch.Tensor) -> None:
        bs = self.serializer.to_bytes(kv_chunk)
        self.connection.set(self._combine_key(key), bs)
        self.existing_keys.add(key)
