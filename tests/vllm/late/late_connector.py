"""A user's KV connector, defined only after the audit started (as vLLM's factory imports it).

Its methods launch nothing real; they count their calls. The audit must find the class through
``KVConnectorBase_V1`` even though it did not exist when ``install()`` ran.
"""

from typing import ClassVar

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1


class LateConnector(KVConnectorBase_V1):
    calls: ClassVar[list] = []

    def start_load_kv(self, forward_context, **kwargs):
        self.calls.append("start_load_kv")

    def wait_for_layer_load(self, layer_name):
        self.calls.append("wait_for_layer_load")

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        self.calls.append("save_kv_layer")

    def wait_for_save(self):
        self.calls.append("wait_for_save")
