"""Source: LMCache (github LMCache/LMCache), commit
54641cad896b0bacde6b119a9f349cbd56af49b5 (2024-10-24),
lmcache/storage_backend/local_backend.py, lines 163-241
(class LMCLocalDiskBackend; verbatim minimization).

put_worker is the target of a threading.Thread and creates a stream with
torch.cuda.Stream() as its first statement; the thread never sets its device,
so the stream lands on device 0 whatever GPU the engine runs on. No patch
of set_stream exists in this code, so no SC104.
"""
import queue
import threading
from typing import Set, Tuple, Union

import torch
from safetensors.torch import save_file

from lmcache.storage_backend.abstract_backend import LMCBackendInterface
from lmcache.utils import CacheEngineKey, _lmcache_nvtx_annotate


class LocalBackendEndSignal:
    pass


class LMCLocalDiskBackend(LMCBackendInterface):

    def __init__(self, config):
        super().__init__()
        self.path = config.local_device
        self.existing_keys: Set[CacheEngineKey] = set()
        # For async put
        self.put_queue: queue.Queue[
            Union[Tuple[CacheEngineKey, torch.Tensor],
                  LocalBackendEndSignal]] = queue.Queue()
        self.put_thread = threading.Thread(target=self.put_worker, args=())
        self.put_thread.start()
        self.update_lock = threading.Lock()

        # TODO (Jiayi): please remove this hard code
        self.dst_device = "cuda"

    def _key_to_path(self, key: CacheEngineKey) -> str:
        return self.path + key.to_string().replace("/", "-") + ".pt"

    @_lmcache_nvtx_annotate
    def put_worker(self, ):
        put_stream = torch.cuda.Stream()  # expect: SC103
        while True:
            item = self.put_queue.get()
            if isinstance(item, LocalBackendEndSignal):
                break
            key, value = item
            with torch.cuda.stream(put_stream):
                self.put_blocking(key, value)

    def put_blocking(self, key: CacheEngineKey, kv_chunk: torch.Tensor) -> None:
        save_file({"kv_chunk": kv_chunk}, self._key_to_path(key))
        self.update_lock.acquire()
        self.existing_keys.add(key)
        self.update_lock.release()
