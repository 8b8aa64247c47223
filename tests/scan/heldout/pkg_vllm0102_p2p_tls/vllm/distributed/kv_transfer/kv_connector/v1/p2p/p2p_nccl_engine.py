"""Source: vllm 0.10.2,
vllm/distributed/kv_transfer/kv_connector/v1/p2p/p2p_nccl_engine.py,
lines 4-23, 117-160, 306-345, 403-455, 511-535 (verbatim minimization).

Same helper-thread `with torch.cuda.stream(...)` shape as the vllm 0.9.2
package, but the imported vllm.utils keeps the current stream per thread
(threading.local), so no module with an SC102 patch is imported. No finding.
"""
import threading
from collections import deque
from typing import Any, Optional

import msgpack
import torch
import zmq

from vllm.utils import current_stream, get_ip


class P2pNcclEngine:

    def __init__(self, local_rank: int, config, hostname: str = "",
                 port_offset: int = 0, library_path: Optional[str] = None) -> None:
        self.config = config
        self.local_rank = local_rank
        self.device = torch.device(f"cuda:{self.local_rank}")
        if not hostname:
            hostname = get_ip()
        self.context = zmq.Context()
        self.router_socket = self.context.socket(zmq.ROUTER)
        self.poller = zmq.Poller()
        self.poller.register(self.router_socket, zmq.POLLIN)
        self.send_queue_cv = threading.Condition()

        self.send_stream = torch.cuda.Stream()
        self.recv_stream = torch.cuda.Stream()

        self.send_type = self.config.get_from_extra_config("send_type", "PUT")
        self.send_queue: deque = deque()
        if self.send_type == "PUT_ASYNC":
            self._send_thread = threading.Thread(target=self.send_async,
                                                 daemon=True)
            self._send_thread.start()

        self.recv_store: dict[str, Any] = {}
        self.socks: dict[str, Any] = {}
        self.comms: dict[str, Any] = {}

        self._listener_thread = threading.Thread(
            target=self.listen_for_requests, daemon=True)
        self._listener_thread.start()

    def listen_for_requests(self):
        while True:
            socks = dict(self.poller.poll())
            if self.router_socket not in socks:
                continue

            remote_address, message = self.router_socket.recv_multipart()
            data = msgpack.loads(message)
            if data["cmd"] == "PUT":
                tensor_id = data["tensor_id"]
                with torch.cuda.stream(self.recv_stream):
                    tensor = torch.empty(data["shape"],
                                         dtype=getattr(
                                             torch, data["dtype"]),
                                         device=self.device)
                self.router_socket.send_multipart([remote_address, b"0"])
                comm, rank = self.comms[remote_address.decode()]
                self.recv(comm, tensor, rank ^ 1, self.recv_stream)
                self.recv_store[tensor_id] = tensor

    def send_async(self):
        while True:
            with self.send_queue_cv:
                while not self.send_queue:
                    self.send_queue_cv.wait()
                item = self.send_queue.popleft()
                if not self.send_queue:
                    self.send_queue_cv.notify()
            self.send_sync(item)

    def send_sync(self, item) -> bool:
        comm, rank = self.comms[item.remote_address]
        self.send(comm, item.tensor.to(self.device), rank ^ 1, self.send_stream)
        return True

    def send(self, comm, tensor: torch.Tensor, dst: int, stream=None):
        assert tensor.device == self.device
        if stream is None:
            stream = current_stream()

        with torch.cuda.stream(stream):
            self.nccl.ncclSend(tensor.data_ptr(), tensor.numel(), dst, comm,
                               stream.cuda_stream)
        stream.synchronize()

    def recv(self, comm, tensor: torch.Tensor, src: int, stream=None):
        assert tensor.device == self.device
        if stream is None:
            stream = current_stream()

        with torch.cuda.stream(stream):
            self.nccl.ncclRecv(tensor.data_ptr(), tensor.numel(), src, comm,
                               stream.cuda_stream)
        stream.synchronize()
