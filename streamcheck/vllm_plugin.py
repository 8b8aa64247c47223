"""vLLM ``general_plugins`` entry point: ``STREAMCHECK=warn vllm serve ...`` audits every process.

vLLM loads general plugins in every process it starts (front end, engine core, workers). This
starts the audit there when the settings ask for it; the launch sites themselves (pynccl, the
connector class that ``KVConnectorFactory`` imports later) are patched by the audit's import
watch whenever vLLM imports them, so nothing here depends on what vLLM imported so far.
"""

from __future__ import annotations


def register() -> None:
    from streamcheck.activation import process_startup

    process_startup()
