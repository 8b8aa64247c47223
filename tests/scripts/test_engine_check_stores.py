"""The engine check's stores for its disk and Redis cases (``case_store``): a disk case starts
from an empty directory, a Redis case gets a server of its own for as long as it runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from streamcheck.connector.backends.redis_server import find_server, ping

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "engine_check.py"
spec = importlib.util.spec_from_file_location("engine_check", SCRIPT)
engine_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(engine_check)


def test_a_disk_case_starts_from_an_empty_directory(tmp_path):
    path = tmp_path / "kv"
    (path / "seg").mkdir(parents=True)
    (path / "seg" / "0.bin").write_bytes(b"old blocks")
    case = {**engine_check.CASES["ttft_pc_sc_disk"]}
    case["extra"] = {**case["extra"], "path": str(path)}
    with engine_check.case_store(case) as ready:
        assert ready == case and not path.exists()


def test_a_host_case_is_left_as_it_is():
    case = engine_check.CASES["ttft_pc_sc_host"]
    with engine_check.case_store(case) as ready:
        assert ready is case


@pytest.mark.skipif(find_server() is None, reason="redis-server not installed "
                    "(scripts/install_redis.sh)")
def test_a_redis_case_gets_a_server_for_its_run_only():
    case = engine_check.CASES["ttft_pc_sc_redis"]
    with engine_check.case_store(case) as ready:
        url = ready["extra"]["url"]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert ready["extra"]["backend"] == "redis" and ping(port)
    assert "url" not in case["extra"]  # the spec itself unchanged
    assert not ping(port)
