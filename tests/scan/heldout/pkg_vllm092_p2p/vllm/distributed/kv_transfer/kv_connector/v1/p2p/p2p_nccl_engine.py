"""Source: vllm 0.9.2,
vllm/distributed/kv_transfer/kv_connector/v1/p2p/p2p_nccl_engine.py,
lines 4-22, 62-160, 293-330, 388-445, 500-526 (verbatim minimization).

The listener thread and the PUT_ASYNC send thread make streams current with
`with torch.cuda.stream(...)`, and this module imports vllm.utils, which
installs the process-wide set_stream patch (torch.cuda.stream's context
manager calls torch.cuda.set_stream, so every enter/exit on these helper
threads overwrites the single global _current_stream that the main thread
reads back through current_stream()). _send/_recv run on the helper threads
through _send_async -> _send_sync -> _send and _listen_for_requests -> _recv.
Stream creation happens in __init__ on the constructing thread (no SC103).
"""
import threading
import typing
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
        self.rank = port_offset
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
        self.send_queue: deque[list[Any]] = deque()
        if self.send_type == "PUT_ASYNC":
            self._send_thread = threading.Thread(target=self._send_async,
                                                 daemon=True)
            self._send_thread.start()

        self.recv_store: dict[str, Any] = {}
        self.socks: dict[str, Any] = {}  # remote_address: client socket
        self.comms: dict[str, Any] = {}  # remote_address: (ncclComm_t, rank)

        self._listener_thread = threading.Thread(
            target=self._listen_for_requests, daemon=True)
        self._listener_thread.start()

    def _listen_for_requests(self):
        while True:
            socks = dict(self.poller.poll())
            if self.router_socket in socks:
                remote_address, message = self.router_socket.recv_multipart()
                data = msgpack.loads(message)
                if data["cmd"] == "PUT":
                    tensor_id = data["tensor_id"]
                    with torch.cuda.stream(self.recv_stream):  # expect: SC104
                        tensor = torch.empty(data["shape"],
                                             dtype=getattr(
                                                 torch, data["dtype"]),
                                             device=self.device)
                    self.router_socket.send_multipart(
                        [remote_address, b"0"])
                    comm, rank = self.comms[remote_address.decode()]
                    self._recv(comm, tensor, rank ^ 1, self.recv_stream)
                    self.recv_store[tensor_id] = tensor

    def _send_async(self):
        while True:
            with self.send_queue_cv:
                while not self.send_queue:
                    self.send_queue_cv.wait()
                tensor_id, remote_address, tensor = self.send_queue.popleft()
                if not self.send_queue:
                    self.send_queue_cv.notify()
            self._send_sync(tensor_id, tensor, remote_address)

    def _send_sync(
        self,
        tensor_id: str,
        tensor: torch.Tensor,
        remote_address: typing.Optional[str] = None,
    ) -> bool:
        if remote_address is None:
            return False
        sock = self.socks[remote_address]
        comm, rank = self.comms[remote_address]
        data = {"cmd": "PUT", "tensor_id": tensor_id, "shape": tensor.shape,
                "dtype": str(tensor.dtype).replace("torch.", "")}
        sock.send(msgpack.dumps(data))
        response = sock.recv()
        if response != b"0":
            return False
        self._send(comm, tensor.to(self.device), rank ^ 1, self.send_stream)
        return True

    def _send(self, comm, tensor: torch.Tensor, dst: int, stream=None):
        assert tensor.device == self.device
        if stream is None:
            stream = current_stream()

        with torch.cuda.stream(stream):  # expect: SC104
            self.nccl.ncclSend(tensor.data_ptr(), tensor.numel(), dst, comm,
                               stream.cuda_stream)
        stream.synchronize()

    def _recv(self, comm, tensor: torch.Tensor, src: int, stream=None):
        assert tensor.device == self.device
        if stream is None:
            stream = current_stream()

        with torch.cuda.stream(stream):  # expect: SC104
            self.nccl.ncclRecv(tensor.data_ptr(), tensor.numel(), src, comm,
                               stream.cuda_stream)
        stream.synchronize()
