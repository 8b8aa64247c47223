"""vLLM ``general_plugins`` entry point: ``STREAMCHECK=warn vllm serve ...`` audits every worker.

vLLM loads general plugins in every process it starts (engine core, workers), so this is
where the audit gets installed in a real deployment, with no change to vLLM or the model code.
"""

from __future__ import annotations


def register() -> None:
    from streamcheck.activation import process_startup

    process_startup()
    from streamcheck.audit import current_auditor

    if current_auditor() is not None:
        from streamcheck.wrappers.vllm import instrument_vllm

        instrument_vllm()
