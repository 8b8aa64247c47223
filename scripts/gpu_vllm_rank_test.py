"""One rank's work as a test, for ``pytest --streamcheck=assert`` (see gpu_vllm_ranks.py).

The plugin turns the audit on when this test starts; vLLM is imported inside it, afterwards.
The test writes what it saw for the driver to judge, and fails (the plugin fails it) because
the leaking forms produce findings, which is what the driver checks for.
"""

import json
import os
from pathlib import Path

from gpu_vllm_ranks import rank_forms


def test_vllm_pynccl_forms() -> None:
    rank, world, port = (int(os.environ[k]) for k in ("SC_RANK", "SC_WORLD", "SC_PORT"))
    result = rank_forms(rank, world, port)
    Path(os.environ["SC_OUT"]).write_text(json.dumps(result))
