"""Run code against a prepared vLLM Python-module env, one subprocess per version.

Several vLLM versions cannot share one interpreter (each patches ``torch.cuda.set_stream`` at
import and owns the ``vllm`` package name), so every check runs in a fresh interpreter whose
PYTHONPATH is that version's env. An env that is not prepared skips its tests with the exact
command that prepares it: a missing env is never a pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools.vllm_env.layout import Layout, default_root, env_vars, prepare_command
from tools.vllm_env.prepare import is_ready

REPO = Path(__file__).resolve().parents[2]
RESULT_TAG = "STREAMCHECK_TEST_RESULT:"


def require_prepared(version: str) -> None:
    """Skip (never pass) when this version's env is absent or built from other pins."""
    if not is_ready(Layout(default_root(), version)):
        pytest.skip(f"vLLM {version} env not prepared (or stale): run `{prepare_command(version)}`")


def run_in_vllm(version: str, code: str, timeout: float = 300,
                env_overlay: dict[str, str] | None = None) -> dict:
    """Run ``code`` with vLLM ``version`` importable; return the dict it passes to ``emit``.

    The child sees the env's site/ and deps/, this repository (for ``streamcheck``), and the
    CPU platform (``VLLM_TARGET_DEVICE=cpu``), as ``python -m tools.vllm_env env`` prints it.
    ``env_overlay`` is applied on top (an audit's ``child_env``: its PYTHONPATH goes first).
    """
    require_prepared(version)
    extra = env_vars(version, default_root(), gpu=False)
    env = dict(os.environ, **extra, VLLM_LOGGING_LEVEL="WARNING")
    env["PYTHONPATH"] = os.pathsep.join([extra["PYTHONPATH"], str(REPO)])
    for key in ("STREAMCHECK", "STREAMCHECK_REPORT_DIR", "STREAMCHECK_TARGETS",
                "STREAMCHECK_SELECT", "STREAMCHECK_STRICT", "STREAMCHECK_PYTEST"):
        env.pop(key, None)  # only what the test asks for
    for key, value in (env_overlay or {}).items():
        env[key] = os.pathsep.join([value, env["PYTHONPATH"]]) if key == "PYTHONPATH" else value
    prelude = textwrap.dedent(f"""\
        import json as _json
        def emit(value):
            print({RESULT_TAG!r} + _json.dumps(value), flush=True)
        """)
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise AssertionError(
        f"vLLM {version} child emitted nothing (rc={proc.returncode}):\n"
        f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
