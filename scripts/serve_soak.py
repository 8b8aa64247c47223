"""A bounded concurrent load on a running ``vllm serve``, every answer checked.

Used by ``engine_check.py``'s ``soak_serve`` case: a fixed number of client threads send
greedy completions of known prompts (token ids in, token ids out) for a set time, and each
answer is compared with the tokens a no-connector engine gave for the same prompt. Beside the
load, the server's memory is sampled (resident memory of its whole process group, and the
GPUs' used memory where ``nvidia-smi`` exists), so a leak shows as growth between the warm-up
and the end, and vLLM's own counters are read from ``/metrics`` at the end.

Only the standard library: the GPU machine has no network to install a client with.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
COUNTERS = ("vllm:num_preemptions_total", "vllm:prefix_cache_hits_total",
            "vllm:prefix_cache_queries_total", "vllm:external_prefix_cache_hits_total",
            "vllm:external_prefix_cache_queries_total", "vllm:request_success_total",
            "vllm:prompt_tokens_total", "vllm:generation_tokens_total")


def complete(url: str, model: str, prompt: Sequence[int], max_tokens: int,
             timeout: float = 120.0) -> list[int]:
    """One greedy completion of ``prompt`` (token ids), its generated token ids."""
    body = json.dumps({"model": model, "prompt": list(prompt), "max_tokens": max_tokens,
                       "temperature": 0.0, "ignore_eos": True,
                       "return_token_ids": True}).encode()
    request = urllib.request.Request(f"{url}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    token_ids = answer["choices"][0].get("token_ids")
    if token_ids is None:
        raise ValueError("the server returned no token_ids (vLLM older than return_token_ids?)")
    return [int(t) for t in token_ids]


def counters(url: str, wanted: Sequence[str] = COUNTERS) -> dict[str, float]:
    """vLLM's Prometheus counters of ``wanted``, summed over their label sets."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def group_rss_bytes(pgid: int, proc: Path = Path("/proc")) -> int:
    """Resident memory of every process in process group ``pgid`` (the server, its engine
    core and its workers: ``vllm serve`` started in a session of its own)."""
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) != pgid:  # fields after the name: state, ppid, pgrp, ...
                continue
            total += int((entry / "statm").read_text().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue  # a process that ended while being read
    return total


def gpu_used_mib() -> list[int] | None:
    """Used memory of each GPU (``nvidia-smi``), or None where it cannot be read."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
        return [int(x) for x in out.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


@dataclass
class Soak:
    """What the client threads saw; filled while they run (``lock`` guards every field)."""

    answers: int = 0
    wrong: list[tuple[int, int]] = field(default_factory=list)  # (prompt, first differing)
    variants: dict[tuple[int, tuple[int, ...]], int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """Where two outputs part (an output cut short by an error parts where it ends)."""
    parted = (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    return next(parted, min(len(a), len(b)))


def run_load(url: str, model: str, prompts: Sequence[Sequence[int]],
             expected: Sequence[Sequence[int]], seconds: float, concurrency: int,
             max_tokens: int, seed: int = 0,
             sample: Callable[[], dict[str, Any]] | None = None,
             sample_every: float = 5.0) -> dict[str, Any]:
    """``concurrency`` threads, each sending one request at a time (a random prompt) until
    ``seconds`` have passed; every answer compared with ``expected[prompt]``. ``sample`` is
    called every ``sample_every`` seconds meanwhile (memory), its results kept in order."""
    if len(prompts) != len(expected):
        raise ValueError("one expected answer per prompt")
    soak = Soak()
    deadline = time.monotonic() + seconds
    start = time.monotonic()

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        while time.monotonic() < deadline:
            i = rng.randrange(len(prompts))
            began = time.perf_counter()
            try:
                got = complete(url, model, prompts[i], max_tokens)
            except Exception as exc:  # every failure is a finding of the soak
                with soak.lock:
                    soak.errors.append(f"prompt {i}: {type(exc).__name__}: {str(exc)[:200]}")
                time.sleep(0.5)
                continue
            with soak.lock:
                soak.answers += 1
                soak.latencies_ms.append((time.perf_counter() - began) * 1000)
                if list(got) != list(expected[i][:max_tokens]):
                    soak.wrong.append((i, first_difference(got, expected[i])))
                    key = (i, tuple(got))
                    soak.variants[key] = soak.variants.get(key, 0) + 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True)
               for n in range(concurrency)]
    for t in threads:
        t.start()
    samples: list[dict[str, Any]] = []
    while any(t.is_alive() for t in threads):
        if sample is not None:
            samples.append({"t_s": round(time.monotonic() - start, 1), **sample()})
        for t in threads:
            t.join(timeout=max(0.0, sample_every / len(threads)))
    latencies = sorted(soak.latencies_ms)
    return {"seconds": round(time.monotonic() - start, 1), "concurrency": concurrency,
            "answers": soak.answers, "wrong": soak.wrong, "errors": soak.errors[:20],
            # each distinct wrong answer once, with how often it came: whether another run
            # (no connector, another connector) gives the same ones
            "variants": [[i, list(tokens), n] for (i, tokens), n in sorted(soak.variants.items())],
            "error_count": len(soak.errors),
            "latency_ms": ({"p50": round(latencies[len(latencies) // 2], 1),
                            "p99": round(latencies[int(len(latencies) * 0.99)], 1)}
                           if latencies else {}),
            "memory": samples}


def memory_growth(samples: Sequence[dict[str, Any]], key: str = "rss_mib",
                  warm_fraction: float = 0.25) -> dict[str, Any] | None:
    """From the first sample after the warm-up (``warm_fraction`` of the samples) to the
    last: how much ``key`` grew. None with too few samples to tell."""
    values = [s[key] for s in samples if s.get(key) is not None]
    if len(values) < 4:
        return None
    warm = values[int(len(values) * warm_fraction)]
    return {"after_warmup": warm, "end": values[-1], "max": max(values),
            "growth": values[-1] - warm}
