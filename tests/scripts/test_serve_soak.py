"""The ``vllm serve`` soak's client (``scripts/serve_soak.py``) against a local fake server.

The soak runs only on the GPU machine; what it counts (answers, wrong answers, failures, the
number of requests in flight) and how it reads memory and vLLM's counters is checked here, so
a soak that "passed" cannot have been a client that compared nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "serve_soak.py"
spec = importlib.util.spec_from_file_location("serve_soak", SCRIPT)
serve_soak = importlib.util.module_from_spec(spec)
sys.modules.setdefault("serve_soak", serve_soak)  # its dataclass looks itself up
spec.loader.exec_module(serve_soak)

PROMPTS = [[10 + i, 20 + i, 30 + i] for i in range(4)]
EXPECTED = [[p[0], p[1], p[2], 7] for p in PROMPTS]  # what a right server answers
METRICS = """# HELP vllm:num_preemptions_total Cumulative number of preemption.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="m"} 2.0
vllm:num_preemptions_total{engine="1",model_name="m"} 1.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 64.0
vllm:some_other_total 5.0
"""


class FakeServer(ThreadingHTTPServer):
    """Answers completions with ``EXPECTED`` (prompt 2 wrong from token 1 when ``lie``, a
    500 for prompt 3 when ``fail``), and counts the requests in flight."""

    def __init__(self, lie: bool = False, fail: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lie, self.fail = lie, fail
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = self.requests = 0
        self.seen: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        body = METRICS.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        with srv.lock:
            srv.in_flight += 1
            srv.requests += 1
            srv.most_in_flight = max(srv.most_in_flight, srv.in_flight)
            srv.seen.append(request)
        time.sleep(0.005)
        index = PROMPTS.index(request["prompt"])
        tokens = list(EXPECTED[index][:request["max_tokens"]])
        if srv.lie and index == 2:
            tokens[1] = 999
        with srv.lock:
            srv.in_flight -= 1
        if srv.fail and index == 3:
            self.send_error(500, "boom")
            return
        body = json.dumps({"choices": [{"text": "", "token_ids": tokens}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake(request):
    server = FakeServer(**getattr(request, "param", {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_right_server_gives_only_right_answers_with_the_bounded_concurrency(fake):
    server, url = fake
    samples = iter(range(1000))
    result = serve_soak.run_load(url, "m", PROMPTS, EXPECTED, seconds=0.6, concurrency=3,
                                 max_tokens=4, sample=lambda: {"rss_mib": next(samples)},
                                 sample_every=0.1)
    assert result["answers"] == server.requests > 10
    assert result["wrong"] == [] == result["variants"] and result["error_count"] == 0
    assert server.most_in_flight <= 3
    assert {r["prompt"][0] for r in server.seen} == {10, 11, 12, 13}  # every prompt asked
    first = server.seen[0]
    assert (first["temperature"], first["ignore_eos"], first["return_token_ids"]) == (
        0.0, True, True)
    assert len(result["memory"]) >= 3
    assert [s["rss_mib"] for s in result["memory"]] == sorted(s["rss_mib"]
                                                             for s in result["memory"])
    assert result["latency_ms"]["p50"] > 0


@pytest.mark.parametrize("fake", [{"lie": True, "fail": True}], indirect=True)
def test_wrong_answers_and_failed_requests_are_counted_with_where_they_part(fake):
    _server, url = fake
    result = serve_soak.run_load(url, "m", PROMPTS, EXPECTED, seconds=0.8, concurrency=2,
                                 max_tokens=4)
    assert result["wrong"] and set(map(tuple, result["wrong"])) == {(2, 1)}
    assert result["variants"] == [[2, [12, 999, 32, 7], len(result["wrong"])]]
    assert result["error_count"] > 0
    assert all(e.startswith("prompt 3: HTTPError") for e in result["errors"])


def test_answers_are_compared_with_the_expected_tokens_cut_to_max_tokens(fake):
    """The reference ran 48 tokens; a soak asking for fewer compares the first ones."""
    _server, url = fake
    longer = [[*e, 8, 9] for e in EXPECTED]
    result = serve_soak.run_load(url, "m", PROMPTS, longer, seconds=0.3, concurrency=1,
                                 max_tokens=4)
    assert result["answers"] > 0 and result["wrong"] == []


def test_the_load_refuses_prompts_without_an_expected_answer(fake):
    with pytest.raises(ValueError, match="one expected answer per prompt"):
        serve_soak.run_load(fake[1], "m", PROMPTS, EXPECTED[:2], seconds=0.1, concurrency=1,
                            max_tokens=4)


def test_counters_sum_label_sets_and_keep_only_the_wanted(fake):
    assert serve_soak.counters(fake[1]) == {"vllm:num_preemptions_total": 3.0,
                                            "vllm:prefix_cache_hits_total": 64.0}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc needed")
def test_group_rss_counts_the_children_of_a_session_and_nothing_else():
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); "
                              "b[::4096] = b'x' * len(b[::4096]); print('ok', flush=True); "
                              "time.sleep(30)"], stdout=subprocess.PIPE,
                             start_new_session=True)
    try:
        assert child.stdout.readline().strip() == b"ok"
        rss = serve_soak.group_rss_bytes(child.pid)
        assert 64 << 20 < rss < 1 << 30
        assert serve_soak.group_rss_bytes(os.getpgrp()) > 0  # this test's own group
        assert serve_soak.group_rss_bytes(2 ** 22 + 12345) == 0
    finally:
        child.kill()
        child.wait()


def test_memory_growth_from_the_end_of_the_warm_up():
    samples = [{"rss_mib": v} for v in (100, 400, 500, 505, 510, 520, 530, 540)]
    assert serve_soak.memory_growth(samples) == {"after_warmup": 500, "end": 540, "max": 540,
                                                 "growth": 40}
    assert serve_soak.memory_growth(samples[:3]) is None
    assert serve_soak.memory_growth([{"gpu_mib": None}] * 8, "gpu_mib") is None
