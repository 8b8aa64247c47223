"""Checks and benchmarks in a real, compiled vLLM engine (run on the GPU machine).

    python scripts/engine_check.py MODEL_DIR --out DIR CASE [CASE ...]

Every case runs in a fresh interpreter started the way a user would start it (the audit turned
on by ``STREAMCHECK`` with the plugin from an installed wheel, or by the start-up hook alone),
and prints one JSON line; the driver adds a verdict and writes everything under ``--out``.

Cases:

``ref_tp2`` / ``faulty_tp2``
    24 requests in 4 families (shared 512-token prefixes, distinct suffixes), 3 passes in
    shuffled order, greedy, TP=2, a KV cache small enough to preempt. ``faulty_tp2`` uses
    streamcheck's connector on the host store with room for a third of the blocks (evictions),
    a corrupted host block every 7th load, slow saves, ``kv_load_failure_policy=recompute``,
    ``STREAMCHECK=assert`` and a report directory. Its tokens must equal ``ref_tp2``'s; every
    engine and worker process must leave a report; each worker must have audited pynccl and
    connector launches; no finding. ``faulty_tp1`` / ``faulty_tp1_nopreempt`` /
    ``faulty_tp1_f32``: the same at TP=1 (a one-GPU machine), against ``ref_tp1`` (``_f32``):
    two processes (the engine's is the worker), connector launches, no pynccl. An output
    equal to one of the reference's passes is the engine's own (they differ under preemption).
``leak_plugin`` / ``leak_plugin_python`` / ``leak_hook`` / ``leak_serve``
    The 0.9-style global stream cache injected in every worker (``engine_connectors``), with the
    audit turned on by the vLLM plugin (wheel; with the compiled hooks where built, and with the
    Python ones), by the start-up hook alone (no entry points), and under ``vllm serve``. The
    first pynccl collective must be stopped on every rank.
``soak_serve`` / ``soak_serve_none`` / ``soak_serve_offloading``
    ``vllm serve`` (TP=2) with streamcheck's connector from the wheel, ``assert`` on, under a
    bounded concurrent load of the same 24 prompts for a few minutes (``serve_soak.py``): no
    failed request, every answer equal to ``ref_tp2``'s, the server's memory flat after the
    warm-up, both workers audited, the connector's loads among their launches. The controls:
    the same server and load without a connector, and with vLLM's ``OffloadingConnector``
    (each distinct wrong answer is kept, to compare the runs' wrong answers).
    ``soak_serve_off``: the same connector with its audit off and no plugin (the audit's cost).
``soak1_serve`` / ``soak1_serve_off`` / ``soak1_serve_none`` / ``ref_tp1``; ``soak1_serve_f32`` /
``soak1_serve_none_f32`` / ``ref_tp1_f32``; ``soak1_serve_sync_f32`` (sync loads)
    The soaks at TP=1, for a one-GPU machine, against a TP=1 reference (``--soak-seconds``
    shortens every soak); float32 to tell numerics from wrong KV. ``--explain-splits``: a
    connector soak's answers that its control never gave are then looked for among the
    engine's own answers at every prefill split of those prompts (``engine_splits.py``, no
    connector, the soak's dtype and TP size; ``--split-seconds`` a prompt): a hit moves where
    a prefill splits, as vLLM's prefix cache does; only an answer no split gives fails. The
    same for an offline connector case (``faulty_*``): its outputs that no pass of its
    reference gave. ``--soak-from DIR`` judges (and explains) a soak an earlier run wrote to
    ``DIR`` instead of running it again.
``clean_tp2`` / ``clean_tp2_sync``
    ``faulty_tp2`` without the injected faults (async loads, sync loads).
``faulty_tp2_nopreempt`` / ``faulty_tp2_roomy`` / ``faulty_tp2_nas`` / ``faulty_tp2_f32``
    ``faulty_tp2`` with a KV cache that holds every request (no preemption), a store that
    holds everything (no eviction), vLLM's async scheduling off, float32.
``ref_tp2_roomy`` / ``ref_tp2_pc`` / ``offloading_tp2`` / ``simple_cpu_tp2`` / ``ref_tp2_f32``
    Controls without streamcheck: no preemption, vLLM's own prefix cache, vLLM's own
    connectors under the same pressure, float32. Every TP=2 case reports vLLM's counters
    (preemptions, prefix-cache hits) beside its tokens.
``ttft_<connector>`` (recompute, simple_cpu, offloading, sc_host, sc_host_off, sc_host_sync,
sc_host_sync_off, sc_disk)
    TP=1, 8 prompts of 1,792 tokens; pass 1 fills the connector (two tokens a request: see
    ``case_ttft``), pass 2 (prefix caching off) can only be served by it: time to first token
    per prompt, tokens/s of a batch, token ids. vLLM's SimpleCPUOffloadConnector turns itself
    off without prefix caching: compare with it in ``ttft_pc_*`` only.
``ttft_pc_<connector>`` (recompute, simple_cpu, offloading, sc_host, sc_host_nowait,
sc_host_sync, sc_host_off, sc_host_sync_off, sc_host_quiet, sc_disk, sc_redis)
    The same with vLLM's prefix cache on and a GPU KV cache too small to keep a prompt's blocks
    until its warm turn: the only setting where vLLM's SimpleCPUOffloadConnector runs (it turns
    itself off without prefix caching, and then measures recomputing). Reports vLLM's counters
    (prefix-cache hits, hits served by the connector) and each warm request's engine steps
    (``engine_steps.py``); the warm pass asks for every prompt twice.
``ttft_graphs_<connector>`` (recompute, simple_cpu, offloading, sc_host, sc_host_off,
sc_host_sync, sc_host_sync_off, sc_host_quiet: async, ``assert``, no trace)
    The ``ttft_pc`` setting with vLLM's default compilation and CUDA graphs (capture sizes up
    to 64) instead of eager mode; each result says the graph mode its engine settled on.
``ref_tp1_graphs`` / ``faulty_tp1_graphs``
    ``ref_tp1`` and ``faulty_tp1`` under graphs (the ``ttft_graphs`` setting).
``inv_graphs_<connector>`` (recompute, sc_host, sc_host_sync)
    ``inv_*`` (batch-invariant kernels, tokens compared with recomputing's) under graphs.
``ttft_long_<connector>`` (recompute, simple_cpu, offloading, sc_host, sc_host_sync)
    The ``ttft_pc`` setting with prompts of 8,192 tokens, for a model where loading can beat
    recomputing (``scripts/make_random_llama.py``: grouped-query attention).
``prof_<connector>`` (sc_host, sc_host_off, simple_cpu), ``prof_graphs_sc_host`` (and its
``_quiet`` and ``_off`` twins)
    The same, with the engine's thread under cProfile over the warm pass and the batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:  # its sibling modules, also when loaded from a file path
    sys.path.insert(0, str(HERE))

import engine_steps  # noqa: E402 (needs the path above; vLLM imported only in its calls)
import serve_soak  # noqa: E402 (needs the path above; the standard library only)
from serve_soak import first_difference  # noqa: E402

SAFE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
    "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
    "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",
}
MARK = "ENGINE_CHECK_RESULT:"


# ---- prompts --------------------------------------------------------------------------------

def family_prompts(vocab: int) -> list[list[int]]:
    """24 prompts: 4 families x 6, each family a shared 512-token prefix."""
    rng = random.Random(7)
    prompts = []
    for _family in range(4):
        prefix = [rng.randrange(3, vocab) for _ in range(512)]
        for _ in range(6):
            prompts.append(prefix + [rng.randrange(3, vocab) for _ in range(rng.randrange(200,
                                                                                           700))])
    return prompts


def long_prompts(vocab: int, tokens: int = 1792) -> list[list[int]]:
    rng = random.Random(11)
    return [[rng.randrange(3, vocab) for _ in range(tokens)] for _ in range(8)]


# ---- inside the case's own interpreter ------------------------------------------------------

CONNECTORS = {  # name -> (connector class, module path; None: one of vLLM's own)
    "sc": ("StreamcheckConnector", "streamcheck.connector.vllm_adapter"),
    "faulty": ("FaultyConnector", "engine_connectors"),
    "leaky": ("LeakyConnector", "engine_connectors"),
    "simple_cpu": ("SimpleCPUOffloadConnector", None),
    "offloading": ("OffloadingConnector", None),
}


def kv_config(name: str, extra: dict[str, Any]) -> Any:
    """Failed loads are recomputed, except with sync loads, which the connector allows only
    under the ``fail`` policy."""
    from vllm.config import KVTransferConfig

    if name == "none":
        return None
    connector, module = CONNECTORS[name]
    policy = "fail" if extra.get("load") == "sync" else "recompute"
    return KVTransferConfig(kv_connector=connector, kv_connector_module_path=module,
                            kv_role="kv_both", kv_connector_extra_config=extra,
                            kv_load_failure_policy=policy)


def make_llm(model: str, tp: int, connector: str, extra: dict[str, Any], **kw: Any) -> Any:
    """The engine as every case builds it; ``kw`` (a case's ``llm`` entry among them) wins."""
    from vllm import LLM

    kw = {"enable_prefix_caching": False, "enforce_eager": True, **kw}
    return LLM(model=model, tensor_parallel_size=tp, disable_custom_all_reduce=True,
               kv_transfer_config=kv_config(connector, extra), **kw)


def graph_mode(llm: Any) -> str:
    """The CUDA graph mode of the engine's config, as the front end resolved it (vLLM
    switches to piecewise graphs for a connector that asks; eager engines say NONE)."""
    try:
        return llm.llm_engine.vllm_config.compilation_config.cudagraph_mode.name
    except AttributeError as exc:
        return f"unknown ({exc})"


def generate(llm: Any, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp,
                        use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def case_tp2(model: str, connector: str, extra: dict[str, Any],
             llm_args: dict[str, Any], tp: int = 2) -> dict[str, Any]:
    llm = make_llm(model, tp, connector, extra, **{
        "max_model_len": 1536, "num_gpu_blocks_override": 320, "max_num_seqs": 24,
        "gpu_memory_utilization": 0.3, "disable_log_stats": False, **llm_args})
    vocab = llm.get_tokenizer().vocab_size
    prompts = family_prompts(vocab)
    rng = random.Random(3)
    tokens: dict[int, list[list[int]]] = {}
    for _ in range(3):
        order = list(range(len(prompts)))
        rng.shuffle(order)
        out = generate(llm, [prompts[i] for i in order], 48)
        for i, t in zip(order, out, strict=True):
            tokens.setdefault(i, []).append(t)
    stats = {}
    with_connector = connector.startswith(("sc", "faulty", "leaky"))
    if with_connector:
        stats = _connector_stats(llm)
    return {"tokens": tokens, "stats": stats, "engine": _engine_counters(llm),
            "cudagraph_mode": graph_mode(llm)}


def _engine_counters(llm: Any) -> dict[str, float]:
    """vLLM's own counters of the run (preemptions above all: they change what is computed
    by a prefill and what by a decode, and what a connector must load back)."""
    wanted = ("vllm:num_preemptions", "vllm:prefix_cache_hits", "vllm:external_prefix_cache_hits",
              "vllm:prompt_tokens")
    out: dict[str, float] = {}
    with contextlib.suppress(Exception):
        for metric in llm.get_metrics():
            if metric.name in wanted:
                out[metric.name] = out.get(metric.name, 0) + float(getattr(metric, "value", 0))
    return out


def _connector_stats(llm: Any) -> dict[str, Any]:
    try:
        return {"workers": llm.collective_rpc(_worker_metrics)}
    except Exception as exc:  # the executor may not allow it; the checks do not depend on it
        return {"unavailable": f"{type(exc).__name__}: {str(exc)[:200]}"}


def _worker_metrics(worker: Any) -> dict[str, Any]:
    from vllm.distributed.kv_transfer import get_kv_transfer_group

    return get_kv_transfer_group().metrics()


def _profile_start(worker: Any) -> None:
    """Profile the engine's thread (scheduler, worker and forward at TP=1) from now on. The
    profiler lives on the worker object: these functions reach the worker by value, each
    call with globals of its own."""
    import cProfile

    worker._engine_check_profile = cProfile.Profile()
    worker._engine_check_profile.enable()


def _profile_stop(worker: Any) -> str:
    """The profile since ``_profile_start``: the top functions by own time and by total."""
    import io
    import pstats

    profile = worker._engine_check_profile
    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(60)
    stats.sort_stats("cumulative").print_stats("streamcheck", 40)  # the audit's and connector's
    return out.getvalue()


COLD_TOKENS = 2  # tokens a cold request generates: see case_ttft


def case_ttft(model: str, connector: str, extra: dict[str, Any], llm_args: dict[str, Any],
              profile: bool = False, prompt_tokens: int = 1792, steps: bool = False,
              warm_rounds: int = 1) -> dict[str, Any]:
    """Warm TTFT: each prompt alone, one token, after a cold pass that filled the connector.

    The cold pass generates :data:`COLD_TOKENS` tokens per prompt, so its times are not
    TTFTs (``cold_ms``): vLLM's SimpleCPUOffloadConnector stores a block only in the step after
    the one that computed it ("If a request finishes in the same step as its last full block,
    that block may be missed", ``vllm/v1/simple_kv_offload/manager.py``), so one-token cold
    requests left it nothing to serve. ``llm_args``: the case's engine settings over the
    defaults (prefix caching off). ``profile``: cProfile the engine's thread over the warm pass
    and the batch (its own cost inflates every Python call; compare shares, not times).
    ``prompt_tokens``: each of the 8 prompts' length. ``steps``: the engine's steps in each
    warm request (``engine_steps.py``; its wrappers cost a few microseconds a step).
    ``warm_rounds``: how many times the warm pass asks for the 8 prompts, each a load again
    when the GPU cache is too small to keep a prompt until its next turn (more samples of a
    forward whose host time varies a lot between requests)."""
    llm = make_llm(model, 1, connector, extra, **{
        "max_model_len": max(2048, prompt_tokens + 256), "gpu_memory_utilization": 0.5,
        "disable_log_stats": False, **llm_args})
    vocab = llm.get_tokenizer().vocab_size
    prompts = long_prompts(vocab, prompt_tokens)
    filler = [[5 + i % 7] * 40 for i in range(4)]
    ttft: dict[str, list[float]] = {}
    tokens: dict[str, list[list[int]]] = {}
    profiled = ""
    windows: list[tuple[int, int]] = []
    for name in ("cold", "warm"):
        if name == "warm" and profile:
            llm.collective_rpc(_profile_start)
        if name == "warm" and steps:
            import cloudpickle  # vLLM's: it sends collective_rpc's functions

            # by value: the engine's process need not find this directory on its path
            cloudpickle.register_pickle_by_value(engine_steps)
            schedulers = llm.collective_rpc(engine_steps.start)[0]
        times = []
        for p in prompts * (warm_rounds if name == "warm" else 1):
            start = time.perf_counter_ns()
            generate(llm, [p], COLD_TOKENS if name == "cold" else 1)
            end = time.perf_counter_ns()
            times.append((end - start) / 1e6)
            if name == "warm":
                windows.append((start, end))
        ttft[name] = times
        if name == "warm" and steps:
            traced = engine_steps.summarize(llm.collective_rpc(engine_steps.stop)[0], windows)
            traced["schedulers_traced"] = schedulers  # 0: the worker's steps only
        generate(llm, filler, 2)  # a few steps: the connector reports its saves
        time.sleep(0.5)
        generate(llm, filler, 2)
    start = time.perf_counter()
    out = generate(llm, prompts, 64)
    seconds = time.perf_counter() - start
    tokens["warm_batch"] = out
    if profile:
        profiled = llm.collective_rpc(_profile_stop)[0]
    stats = _connector_stats(llm) if connector.startswith("sc") else {}
    return {"ttft_ms": {"warm": [round(t, 2) for t in ttft["warm"]]},
            "ttft_warm_median_ms": round(statistics.median(ttft["warm"]), 2),
            "cold_ms": [round(t, 2) for t in ttft["cold"]], "cold_tokens": COLD_TOKENS,
            "cold_median_ms": round(statistics.median(ttft["cold"]), 2),
            "batch_tokens_per_s": round(8 * 64 / seconds, 1), "tokens": tokens,
            "stats": stats, "engine": _engine_counters(llm), "cudagraph_mode": graph_mode(llm),
            **({"profile": profiled} if profile else {}), **({"steps": traced} if steps else {})}


def run_case(args: argparse.Namespace) -> None:
    spec = json.loads(args.spec)
    if spec.get("model") == "tiny":
        args.model = args.tiny_model
    result: dict[str, Any] = {"case": args.case}
    start = time.perf_counter()
    try:
        if spec["kind"] == "tp2":
            result.update(case_tp2(args.model, spec["connector"], spec["extra"],
                                   spec.get("llm", {}), tp=spec.get("tp", 2)))
        elif spec["kind"] == "ttft":
            result.update(case_ttft(args.model, spec["connector"], spec["extra"],
                                    spec.get("llm", {}), profile=bool(spec.get("profile")),
                                    prompt_tokens=spec.get("prompt_tokens", 1792),
                                    steps=bool(spec.get("steps")),
                                    warm_rounds=int(spec.get("warm_rounds", 1))))
        elif spec["kind"] == "leak":
            result.update(case_tp2(args.model, spec["connector"], spec["extra"], {}))
    except BaseException as exc:  # the leak cases must end here
        result["error"] = f"{type(exc).__name__}: {str(exc)[:1500]}"
    result["seconds"] = round(time.perf_counter() - start, 1)
    with contextlib.suppress(ImportError):  # which hooks the audit of this process used
        from streamcheck.wrappers import speedups

        result["audit_hooks"] = speedups.describe()
    print(MARK + json.dumps(result), flush=True)
    os._exit(0)


# ---- the driver -----------------------------------------------------------------------------

# The TTFT comparisons' rows: recomputing and vLLM's own CPU connectors, then ours.
PEERS: dict[str, dict[str, Any]] = {
    "recompute": {"kind": "ttft", "connector": "none", "extra": {}, "activation": "none"},
    "simple_cpu": {"kind": "ttft", "connector": "simple_cpu",
                   "extra": {"cpu_bytes_to_use": 8 << 30}, "activation": "none"},
    "offloading": {"kind": "ttft", "connector": "offloading",
                   "extra": {"cpu_bytes_to_use": 8 << 30}, "activation": "none"},
}


def sc_host(capacity: int, **extra: Any) -> dict[str, Any]:
    """A TTFT case of streamcheck's host slab, ``assert`` on through the installed wheel."""
    return {"kind": "ttft", "connector": "sc", "activation": "plugin",
            "extra": {"backend": "host", "capacity_blocks": capacity, **extra}}


# What every soak case shares (``run_soak``): the server's settings (the offline engine's
# batch budget: the server's default is half), the load, batch-invariant kernels.
SOAK: dict[str, Any] = {
    "kind": "soak", "ref": "ref_tp2", "seconds": 180, "concurrency": 6,
    "serve_args": ["--max-model-len", "1536", "--num-gpu-blocks-override", "512",
                   "--max-num-seqs", "24", "--gpu-memory-utilization", "0.3",
                   "--max-num-batched-tokens", "16384", "--enable-prefix-caching"],
    "env": {"VLLM_BATCH_INVARIANT": "1"},
}

CASES: dict[str, dict[str, Any]] = {
    # Token comparisons between runs only mean something with batch-invariant kernels: in the
    # default mode the same engine gives other greedy tokens when the batch changes (measured:
    # 27 of 72 outputs of one no-connector run differ between its own passes).
    "ref_tp2": {"kind": "tp2", "connector": "none", "extra": {}, "activation": "none",
                "env": {"VLLM_BATCH_INVARIANT": "1"}},
    "faulty_tp2": {"kind": "tp2", "connector": "faulty",
                   "extra": {"backend": "host", "capacity_blocks": 400},
                   "activation": "plugin", "ref": "ref_tp2",
                   "env": {"STREAMCHECK_FAULT_EVERY": "7", "STREAMCHECK_SLOW_SAVE_MS": "2",
                           "VLLM_BATCH_INVARIANT": "1"}},
    "clean_tp2_sync": {"kind": "tp2", "connector": "faulty",
                       "extra": {"backend": "host", "capacity_blocks": 400, "load": "sync"},
                       "activation": "plugin", "ref": "ref_tp2",
                       "env": {"STREAMCHECK_SLOW_SAVE_MS": "2", "VLLM_BATCH_INVARIANT": "1"}},
    # Controls for the outputs that differ after injected faults: vLLM's own prefix cache (its
    # partial hits recompute from a block boundary, as a failed load does), and the async
    # mode with vLLM's async scheduling off (a step may be scheduled before the last one's
    # output).
    "ref_tp2_pc": {"kind": "tp2", "connector": "none", "extra": {}, "activation": "none",
                   "ref": "ref_tp2", "llm": {"enable_prefix_caching": True},
                   "env": {"VLLM_BATCH_INVARIANT": "1"}},
    "faulty_tp2_nas": {"kind": "tp2", "connector": "faulty",
                       "extra": {"backend": "host", "capacity_blocks": 400},
                       "activation": "plugin", "ref": "ref_tp2",
                       "llm": {"async_scheduling": False},
                       "env": {"STREAMCHECK_FAULT_EVERY": "7", "STREAMCHECK_SLOW_SAVE_MS": "2",
                               "VLLM_BATCH_INVARIANT": "1"}},
    # Which path the async mode's differing outputs come from: no fault, no eviction (the
    # store holds everything), no preemption (the KV cache holds every request).
    "clean_tp2": {"kind": "tp2", "connector": "faulty",
                  "extra": {"backend": "host", "capacity_blocks": 400},
                  "activation": "plugin", "ref": "ref_tp2",
                  "env": {"STREAMCHECK_SLOW_SAVE_MS": "2", "VLLM_BATCH_INVARIANT": "1"}},
    "faulty_tp2_roomy": {"kind": "tp2", "connector": "faulty",
                         "extra": {"backend": "host", "capacity_blocks": 4096},
                         "activation": "plugin", "ref": "ref_tp2",
                         "env": {"STREAMCHECK_FAULT_EVERY": "7",
                                 "STREAMCHECK_SLOW_SAVE_MS": "2",
                                 "VLLM_BATCH_INVARIANT": "1"}},
    "faulty_tp2_nopreempt": {"kind": "tp2", "connector": "faulty",
                             "extra": {"backend": "host", "capacity_blocks": 400},
                             "activation": "plugin", "ref": "ref_tp2",
                             "llm": {"num_gpu_blocks_override": 2400},
                             "env": {"STREAMCHECK_FAULT_EVERY": "7",
                                     "STREAMCHECK_SLOW_SAVE_MS": "2",
                                     "VLLM_BATCH_INVARIANT": "1"}},
    # Preemption is where the async mode's outputs differ: the same engine without a connector
    # and without preemption, and vLLM's own connectors under the same pressure.
    "ref_tp2_roomy": {"kind": "tp2", "connector": "none", "extra": {}, "activation": "none",
                      "ref": "ref_tp2", "llm": {"num_gpu_blocks_override": 2400},
                      "env": {"VLLM_BATCH_INVARIANT": "1"}},
    "offloading_tp2": {"kind": "tp2", "connector": "offloading", "activation": "none",
                       "extra": {"cpu_bytes_to_use": 4 << 30}, "ref": "ref_tp2",
                       "env": {"VLLM_BATCH_INVARIANT": "1"}},
    "simple_cpu_tp2": {"kind": "tp2", "connector": "simple_cpu", "activation": "none",
                       "extra": {"cpu_bytes_to_use": 4 << 30}, "ref": "ref_tp2",
                       "env": {"VLLM_BATCH_INVARIANT": "1"}},
    # float32: a prefill and a decode of one token differ in the last bits, so where a request
    # is preempted (which its recompute makes a prefill) can flip a bf16 greedy token; in
    # float32 such flips are rare while wrong KV still changes tokens.
    "ref_tp2_f32": {"kind": "tp2", "connector": "none", "extra": {}, "activation": "none",
                    "llm": {"dtype": "float32"}, "env": {"VLLM_BATCH_INVARIANT": "1"}},
    "faulty_tp2_f32": {"kind": "tp2", "connector": "faulty",
                       "extra": {"backend": "host", "capacity_blocks": 400},
                       "activation": "plugin", "ref": "ref_tp2_f32",
                       "llm": {"dtype": "float32"},
                       "env": {"STREAMCHECK_FAULT_EVERY": "7", "STREAMCHECK_SLOW_SAVE_MS": "2",
                               "VLLM_BATCH_INVARIANT": "1"}},
    "inv_recompute": {"kind": "ttft", "connector": "none", "extra": {}, "activation": "none",
                      "env": {"VLLM_BATCH_INVARIANT": "1"}},
    "inv_sc_host": {"kind": "ttft", "connector": "sc", "activation": "plugin",
                    "extra": {"backend": "host", "capacity_blocks": 2048},
                    "env": {"VLLM_BATCH_INVARIANT": "1"}, "ref": "inv_recompute"},
    "inv_sc_host_sync": {"kind": "ttft", "connector": "sc", "activation": "plugin",
                         "extra": {"backend": "host", "capacity_blocks": 2048, "load": "sync"},
                         "env": {"VLLM_BATCH_INVARIANT": "1"}, "ref": "inv_recompute"},
    "leak_plugin": {"kind": "leak", "connector": "leaky", "extra": {"backend": "host"},
                    "activation": "plugin", "model": "tiny"},
    "leak_plugin_python": {"kind": "leak", "connector": "leaky", "extra": {"backend": "host"},
                           "activation": "plugin", "model": "tiny",
                           "env": {"STREAMCHECK_CORE": "python"}},
    "leak_hook": {"kind": "leak", "connector": "leaky", "extra": {"backend": "host"},
                  "activation": "hook", "model": "tiny"},
    "leak_serve": {"kind": "serve", "connector": "leaky", "extra": {"backend": "host"},
                   "activation": "plugin",
                   "serve_args": ["--max-model-len", "1024", "--gpu-memory-utilization", "0.3",
                                  "--no-enable-prefix-caching"]},
    # ``vllm serve`` with streamcheck's connector under a bounded concurrent load: 6 clients,
    # the 24 prompts of the TP=2 cases, vLLM's prefix cache on with a GPU cache of 512 blocks
    # (the prompts' full blocks are 804: evictions, hits served by the connector) that 6
    # requests cannot fill (no preemption: its recomputes change bf16 tokens on their own), and
    # a host store of 600 blocks (larger than the GPU cache, so it holds blocks the GPU lost;
    # smaller than the prompts: evictions there too). Every answer must equal ``ref_tp2``'s,
    # or be one the same server gives without a connector (``control``).
    "soak_serve": {**SOAK, "connector": "sc", "activation": "plugin",
                   "control": "soak_serve_none",
                   "extra": {"backend": "host", "capacity_blocks": 600},
                   "kv": {"kv_load_failure_policy": "recompute"}},
    # the same with the connector's audit off and no plugin: what the audit costs a server
    "soak_serve_off": {**SOAK, "connector": "sc", "activation": "none",
                       "control": "soak_serve_none",
                       "extra": {"backend": "host", "capacity_blocks": 600,
                                 "streamcheck": "off"},
                       "kv": {"kv_load_failure_policy": "recompute"}},
    # Controls: the same server and load without a connector, and with vLLM's own
    "soak_serve_none": {**SOAK, "connector": "none", "activation": "none", "extra": {}},
    # The same three servers at TP=1 (a one-GPU machine), against a TP=1 reference
    "ref_tp1": {"kind": "tp2", "tp": 1, "connector": "none", "extra": {}, "activation": "none",
                "env": {"VLLM_BATCH_INVARIANT": "1"}},

    "soak_serve_offloading": {**SOAK, "connector": "offloading", "activation": "none",
                              "extra": {"cpu_bytes_to_use": 4 << 30}},
    **{f"ttft_{name}": spec for name, spec in PEERS.items()},
    "ttft_sc_host": sc_host(2048, trace=20000),
    # With vLLM's prefix cache on and a GPU KV cache of 256 blocks (a prompt is 112): each
    # prompt's blocks are evicted from the GPU before its warm turn, so a warm hit is a load
    # from the connector. vLLM's SimpleCPUOffloadConnector turns itself off without prefix
    # caching (it then measures recomputing), so the ttft_* cases above cannot compare with it.
    # Each warm request's engine steps are traced (``engine_steps.py``), whichever connector;
    # the warm pass asks for every prompt twice (16 warm requests, each a load).
    **{f"ttft_pc_{name}": {**spec, "steps": True, "warm_rounds": 2,
                           "llm": {"enable_prefix_caching": True,
                                   "num_gpu_blocks_override": 256}}
       for name, spec in {
           **PEERS,
           "sc_host": sc_host(2048, trace=20000),
           # the same without waiting for loads in idle steps (``idle_wait_ms``)
           "sc_host_nowait": sc_host(2048, trace=20000, idle_wait_ms=0),
           # loads inside the step that computes the request (vLLM's policy: "fail")
           "sc_host_sync": sc_host(2048, load="sync"),
           # the audit's cost in the engine: the connector's ``streamcheck`` setting off
           "sc_host_off": {**sc_host(2048, streamcheck="off"), "activation": "none"},
           "sc_host_sync_off": {**sc_host(2048, load="sync", streamcheck="off"),
                                "activation": "none"},
           # the trace's share: ``assert`` on, no timeline
           "sc_host_quiet": sc_host(2048),
           # the other stores (the driver empties the directory, starts the Redis server)
           "sc_disk": {**sc_host(2048), "extra": {"backend": "disk", "capacity_blocks": 2048,
                                                  "path": "/tmp/sc-kv-disk-pc"}},
           "sc_redis": {**sc_host(2048), "extra": {"backend": "redis"}},
       }.items()},
    # Prompts of 8,192 tokens (512 blocks; a GPU cache of 1,024), for a model where loading
    # can beat recomputing (scripts/make_random_llama.py: grouped-query attention).
    **{f"ttft_long_{name}": {**spec, "prompt_tokens": 8192,
                             "llm": {"enable_prefix_caching": True,
                                     "num_gpu_blocks_override": 1024}}
       for name, spec in {**PEERS, "sc_host": sc_host(4096),
                          "sc_host_sync": sc_host(4096, load="sync")}.items()},
    # The same engine, its thread profiled over the warm pass and the batch (cProfile).
    "prof_sc_host": {**sc_host(2048), "profile": True},
    "prof_sc_host_off": {**sc_host(2048, streamcheck="off"), "profile": True,
                         "activation": "none"},
    "prof_simple_cpu": {**PEERS["simple_cpu"], "profile": True},
    "ttft_sc_host_sync": sc_host(2048, load="sync"),
    "ttft_sc_host_sync_off": {**sc_host(2048, load="sync", streamcheck="off"),
                              "activation": "none"},
    "ttft_sc_host_off": {**sc_host(2048, streamcheck="off"), "activation": "none"},
    "ttft_sc_disk": {"kind": "ttft", "connector": "sc",
                     "extra": {"backend": "disk", "path": "/tmp/sc-kv-disk"},
                     "activation": "plugin"},
}
# The ttft_pc cases with vLLM's default compilation and CUDA graphs instead of eager mode (a
# user's engine): the forward's host time, which varies a lot between eager engines, shrinks.
# Each result names the graph mode its engine's config resolved to: vLLM's default (full
# graphs for decode batches, piecewise ones for the rest) unless the connector asks for
# piecewise graphs only. Capture sizes up to 64 keep each engine's start short. Their tokens
# are not compared with recomputing's: without batch-invariant kernels two engines' batches
# differ in low bits and greedy tokens part (6 of 8 warm-batch prompts in G8, as between vLLM's
# own connectors in eager mode): that check is inv_graphs_* and faulty_tp1_graphs.
GRAPHS = {"enforce_eager": False,
          "compilation_config": {"cudagraph_capture_sizes": [1, 2, 4, 8, 16, 32, 64]}}


def under_graphs(spec: dict[str, Any], **more: Any) -> dict[str, Any]:
    """``spec`` (and ``more``) with :data:`GRAPHS` over its engine settings."""
    return {**spec, **more, "llm": {**spec.get("llm", {}), **GRAPHS}}


CASES.update({
    f"ttft_graphs_{name}": under_graphs(CASES[f"ttft_pc_{name}"])
    for name in ("recompute", "simple_cpu", "offloading", "sc_host", "sc_host_off",
                 "sc_host_sync", "sc_host_sync_off", "sc_host_quiet")})
# Under graphs, with batch-invariant kernels: loaded KV must give recomputing's tokens exactly
# (without them, two engines' batches differ in low bits and greedy tokens part: table TTFT8)
CASES.update({f"inv_graphs_{name}": under_graphs(
                  CASES[f"inv_{name}"],
                  **({"ref": "inv_graphs_recompute"} if "ref" in CASES[f"inv_{name}"] else {}))
              for name in ("recompute", "sc_host", "sc_host_sync")})
# The graphs setting with the engine's thread under cProfile (its shares, not its times), the
# step tracer off: its search of the engine's heap at start dominated the profile (G8, call 4)
CASES["prof_graphs_sc_host"] = {**CASES["ttft_graphs_sc_host"], "profile": True,
                                "steps": False}
# ... without the timeline (``assert``, as ttft_graphs_sc_host_quiet), and its twin with the
# audit off: what the audit's Python costs the engine's thread, function by function
CASES.update({f"prof_graphs_sc_host_{name}": {**CASES[f"ttft_graphs_sc_host_{name}"],
                                              "profile": True, "steps": False}
              for name in ("quiet", "off")})
# The soaks at TP=1 (a one-GPU machine): soak1_serve, soak1_serve_off, soak1_serve_none
CASES.update({f"soak1_{name[5:]}": {**CASES[name], "tp": 1, "ref": "ref_tp1",
                                    **({"control": "soak1_serve_none"}
                                       if "control" in CASES[name] else {})}
              for name in ("soak_serve", "soak_serve_off", "soak_serve_none")})
# The fault-injecting cases at TP=1, against the TP=1 reference of their dtype:
# faulty_tp1, faulty_tp1_nopreempt, faulty_tp1_f32
CASES.update({name.replace("_tp2", "_tp1"): {**CASES[name], "tp": 1,
                                             "ref": CASES[name]["ref"].replace("_tp2", "_tp1")}
              for name in ("faulty_tp2", "faulty_tp2_nopreempt", "faulty_tp2_f32")})
# ... and in float32: a connector moves prefill split points (a hit of N blocks leaves a
# partial prefill of the rest), which in bf16 alone gives outputs a server without it never
# gives (measured: soak1_serve); in float32 such flips are rare, wrong KV still shows.
CASES["ref_tp1_f32"] = {**CASES["ref_tp1"], "llm": {"dtype": "float32"}}
CASES.update({f"{name}_f32": {**CASES[name], "ref": "ref_tp1_f32",
                              "serve_args": [*CASES[name]["serve_args"], "--dtype", "float32"],
                              **({"control": "soak1_serve_none_f32"}
                                 if "control" in CASES[name] else {})}
              for name in ("soak1_serve", "soak1_serve_none")})
# The float32 soak with sync loads (the setting of the lowest warm TTFT, table G9), under the
# failure policy they need: the same references and control
CASES["soak1_serve_sync_f32"] = {
    **CASES["soak1_serve_f32"], "kv": {"kv_load_failure_policy": "fail"},
    "extra": {**CASES["soak1_serve_f32"]["extra"], "load": "sync"}}
# Faults, preemption and a small store (faulty_tp1) under graphs, against a reference run
# under graphs (both batch-invariant)
CASES["ref_tp1_graphs"] = under_graphs(CASES["ref_tp1"])
CASES["faulty_tp1_graphs"] = under_graphs(CASES["faulty_tp1"], ref="ref_tp1_graphs")


def case_env(spec: dict[str, Any], reports: Path, wheel_site: str,
             vllm_site: str) -> dict[str, str]:
    from streamcheck.activation import STARTUP_DIR

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCHECK")}
    env.update(SAFE_ENV)
    parts = [str(HERE), vllm_site]
    if spec["activation"] == "plugin":
        parts.insert(0, wheel_site)  # the installed wheel: entry points visible to vLLM
        env.update(STREAMCHECK="assert", STREAMCHECK_REPORT_DIR=str(reports))
    elif spec["activation"] == "hook":
        parts[:0] = [STARTUP_DIR, str(REPO)]  # source tree, no entry points
        env.update(STREAMCHECK="assert", STREAMCHECK_REPORT_DIR=str(reports),
                   VLLM_PLUGINS="")
    else:
        parts.insert(0, wheel_site)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.update(spec.get("env", {}))
    return env


SERVE_PORT = 8013
SERVED_NAME = "engine-check"


def serve_command(model: str, spec: dict[str, Any]) -> list[str]:
    """``vllm serve`` as a user runs it, with the case's connector and engine settings (TP=2
    unless the case says ``tp``; eager, as every TP=2 case here)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model, "--host",
           "127.0.0.1", "--port", str(SERVE_PORT), "--served-model-name", SERVED_NAME,
           "--enforce-eager", "--tensor-parallel-size", str(spec.get("tp", 2)),
           "--disable-custom-all-reduce", *spec["serve_args"]]
    if spec["connector"] == "none":
        return cmd
    connector, module = CONNECTORS[spec["connector"]]
    cfg = {"kv_connector": connector, "kv_connector_module_path": module,
           "kv_role": "kv_both", "kv_connector_extra_config": spec["extra"],
           **spec.get("kv", {})}
    return [*cmd, "--kv-transfer-config", json.dumps(cfg)]


@contextlib.contextmanager
def served(model: str, spec: dict[str, Any], env: dict[str, str], log: Path,
           timeout: float) -> Iterator[tuple[subprocess.Popen[bytes], bool]]:
    """The server started in a session of its own, whether it answered ``/health`` within
    ``timeout``; on leaving, SIGTERM to its whole process group (engine core and workers),
    then SIGKILL to whatever is left."""
    with open(log, "w") as out:
        proc = subprocess.Popen(serve_command(model, spec), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        healthy = False
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{SERVE_PORT}/health", timeout=1)
                healthy = True
                break
            except Exception:
                time.sleep(1)
        yield proc, healthy
    finally:
        with contextlib.suppress(Exception):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        with contextlib.suppress(Exception):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(10)


def run_leak_serve(model: str, spec: dict[str, Any], env: dict[str, str], log: Path,
                   timeout: float) -> dict[str, Any]:
    with served(model, spec, env, log, timeout) as (proc, healthy):
        pass
    return {"case": "leak_serve", "server_came_up": healthy, "rc": proc.returncode}


def tokenizer_vocab(model: str, env: dict[str, str]) -> int:
    """The tokenizer's vocabulary size as the engine cases read it (their prompts depend on
    it), from an interpreter with the case's paths."""
    code = ("import sys; from vllm.tokenizers import get_tokenizer; "
            "print(get_tokenizer(sys.argv[1]).vocab_size)")
    out = subprocess.run([sys.executable, "-c", code, model], env=env, capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"could not read the tokenizer: {out.stderr[-400:]}")
    return int(out.stdout.split()[-1])


def run_soak(model: str, spec: dict[str, Any], env: dict[str, str], log: Path,
             timeout: float, ref: dict[str, Any] | None) -> dict[str, Any]:
    """The TP=2 cases' 24 prompts under a bounded concurrent load for ``spec["seconds"]``,
    each answer compared with the no-connector run's first pass (``ref``); the server's memory
    sampled meanwhile."""
    if ref is None or "tokens" not in ref:
        return {"case": "soak", "error": f"no reference tokens (run {spec['ref']} or "
                                         "--ref-from)"}
    try:
        prompts = family_prompts(tokenizer_vocab(model, env))
    except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
        return {"case": "soak", "error": str(exc)}
    expected = [ref["tokens"][str(i)][0] for i in range(len(prompts))]
    url = f"http://127.0.0.1:{SERVE_PORT}"
    with served(model, spec, env, log, timeout) as (proc, healthy):
        if not healthy:
            return {"case": "soak", "server_came_up": False,
                    "error": "the server did not come up; log tail: "
                             + log.read_text()[-600:]}

        def sample() -> dict[str, Any]:
            gpu = serve_soak.gpu_used_mib()
            return {"rss_mib": serve_soak.group_rss_bytes(proc.pid) >> 20,
                    "gpu_mib": sum(gpu) if gpu else None}

        load = serve_soak.run_load(url, SERVED_NAME, prompts, expected, spec["seconds"],
                                   spec["concurrency"], max_tokens=48, seed=5, sample=sample,
                                   sample_every=spec.get("sample_every", 5.0))
        with contextlib.suppress(Exception):
            load["counters"] = serve_soak.counters(url)
        load["alive_at_end"] = proc.poll() is None
        load["server_pid"] = proc.pid
    load.update(case="soak", server_came_up=True,
                rss_growth=serve_soak.memory_growth(load["memory"], "rss_mib"),
                gpu_growth=serve_soak.memory_growth(load["memory"], "gpu_mib"))
    return load


def read_reports(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def audit_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for r in reports:
        ops = r.get("launches_by_op", {})
        rows.append({
            "pid": r["process"]["pid"], "argv0": " ".join(r["process"]["argv"])[:60],
            "final": r.get("final"), "launches": r.get("launches_audited", 0),
            "pynccl": sum(n for op, n in ops.items() if op.startswith("vllm.pynccl.")),
            "connector": sum(n for op, n in ops.items() if op.startswith("connector.")),
            "loads": sum(n for op, n in ops.items() if op.startswith("connector.load.")),
            "findings": sorted({(f["rule"], f["launch"]["op"]) for f in r.get("findings", [])}),
            "stream_reads": r.get("stream_reads"),
        })
    return {"processes": len(rows), "rows": rows}


def token_differences(tokens: dict[Any, list[list[int]]], ref: dict[Any, list[list[int]]],
                      splits: dict[str, Any] | None = None) -> list[str]:
    """Outputs the no-connector run never gave for their prompt in any of its passes (under
    preemption the reference's own passes differ: a preempted request is recomputed as a
    prefill, which is not bitwise its decode), nor, with ``splits`` (a control widened by a
    split sweep, :func:`explain_by_splits`), any prefill split of the prompt: counts by pass,
    and which (pass, prompt, first token that differs from its first pass) so a pattern shows."""
    known = engine_answers(ref, splits)
    pairs = [(p, int(k), first_difference(outs[p], ref[k][0])) for k, outs in tokens.items()
             for p in range(len(outs)) if outs[p] not in known.get(k, [])]
    if not pairs:
        return []
    passes = max(len(outs) for outs in tokens.values())
    by_pass = [sum(p == q for p, _, _ in pairs) for q in range(passes)]
    swept = (splits or {}).get("split_prompts")
    nor = f" nor any prefill split of prompts {swept} (engine_splits.py)" if swept else ""
    return [f"outputs the no-connector run never gave in its {len(ref[next(iter(ref))])} "
            f"passes{nor}, by pass: {by_pass} of {len(tokens)} each; (pass, prompt, first "
            f"token that differs from its first pass): {sorted(pairs)}"]


def engine_answers(ref: dict[str, list[list[int]]], control: dict[str, Any] | None
                   ) -> dict[str, list[list[int]]]:
    """Each prompt's answers the engine gives without a connector: every pass of the offline
    reference (``ref``: its ``tokens``), and a control's distinct answers (a no-connector run's,
    or a split sweep's through :func:`with_splits`)."""
    known = {k: list(outs) for k, outs in ref.items()}
    for i, tokens, _n in (control or {}).get("variants", ()):
        known.setdefault(str(i), []).append(tokens)
    return known


def as_variants(result: dict[str, Any]) -> dict[str, Any]:
    """An offline case's outputs (``tokens``: each prompt's passes) as a soak's distinct
    answers (``variants``: prompt, tokens, count), so a split sweep can explain them."""
    counts: dict[tuple[int, tuple[int, ...]], int] = {}
    for k, outs in result["tokens"].items():
        for out in outs:
            counts[(int(k), tuple(out))] = counts.get((int(k), tuple(out)), 0) + 1
    return {"variants": [[i, list(t), n] for (i, t), n in counts.items()],
            "answers": sum(counts.values())}


def loads_exercised(stats: dict[str, Any]) -> list[str]:
    """A connector case tests loads only if its loads ran: every load failing (a harness that
    no longer fits the runtime, say) would also give the reference's tokens, by recomputing."""
    problems = []
    for rank, worker in enumerate(stats.get("workers", [])):
        failed, calls = worker.get("failed_loads", 0), worker.get("load_calls")
        if calls == 0 and failed:
            problems.append(f"worker {rank}: {failed} loads failed and the fault injector saw "
                            "none: the loads never ran")
        elif worker.get("load_bytes", 0) == 0 and failed:
            problems.append(f"worker {rank}: every load failed ({failed}); nothing was loaded")
    return problems


MEMORY_SLACK_MIB = 256  # growth after the warm-up that a soak tolerates (allocator caches)


def wrong_answers(result: dict[str, Any], control: dict[str, Any] | None,
                  ref: dict[str, Any] | None = None) -> str | None:
    """The soak's answers that differ from the offline reference, described; with a
    ``control`` (the same server and load without a connector), only those the control never
    gave: the engine under a concurrent load answers some prompts otherwise on its own
    (measured with batch-invariant kernels, no preemption, no connector: 20 of 600), and a
    connector is wrong where it adds answers the engine does not give. None: nothing wrong."""
    answers = result.get("answers", 0)
    preempted = result.get("counters", {}).get("vllm:num_preemptions_total", 0)
    if control is None or "variants" not in control or "variants" not in result:
        if not result.get("wrong"):  # no distinct answers to compare: every one counts
            return None
        return (f"{len(result['wrong'])} of {answers} answers differ from the no-connector run "
                f"({preempted:.0f} preemptions); (prompt, first differing token): "
                f"{sorted({tuple(w) for w in result['wrong']})[:20]}")
    expected = (ref or {}).get("tokens", {})
    # an answer the offline reference gives in any of its passes is the engine's own too
    known = engine_answers(expected, control)
    new = answers_not_in(result, known)
    if not new:
        return None
    where = sorted({(i, first_difference(tokens, expected.get(str(i), [[]])[0]),
                     nearest_shared(tokens, known.get(str(i), [])))
                    for i, tokens, _ in new})
    swept = control.get("split_prompts")
    nor = (f" nor any prefill split of prompts {swept} (engine_splits.py)"
           if swept else "")
    return (f"{sum(n for *_, n in new)} of {answers} answers are ones the server without a "
            f"connector never gave in {control.get('answers', 0)}{nor} ({preempted:.0f} "
            f"preemptions); (prompt, first token that differs from the reference, tokens "
            f"shared with the nearest answer of the reference or the control): {where[:20]}")


def nearest_shared(tokens: list[int], others: list[list[int]]) -> int:
    """How many leading tokens ``tokens`` shares with the nearest of ``others`` (the
    engine's own answers to that prompt). KV that belongs to other tokens changes a greedy
    answer from its first tokens; two computations of the same KV that differ in low bits
    change it late, if at all."""
    return max((first_difference(tokens, other) for other in others), default=0)


def novel_variants(result: dict[str, Any], control: dict[str, Any]
                   ) -> list[tuple[int, list[int], int]]:
    """The soak's distinct answers (prompt, tokens, count) that the control never gave."""
    return answers_not_in(result, engine_answers({}, control))


def answers_not_in(result: dict[str, Any], known: dict[str, list[list[int]]]
                   ) -> list[tuple[int, list[int], int]]:
    """The run's distinct answers (prompt, tokens, count) not among ``known`` (each prompt's
    answers of the engine's own, :func:`engine_answers`)."""
    return [(i, tokens, n) for i, tokens, n in result.get("variants", [])
            if tokens not in known.get(str(i), [])]


def with_splits(control: dict[str, Any], sweep: dict[str, Any]) -> dict[str, Any]:
    """The control widened by a split sweep's answers (``engine_splits.py``'s ``tokens``):
    what the engine itself answers after some prefill split counts as the engine's own."""
    extra = [[int(i), tokens, 0] for i, outs in sweep["tokens"].items() for tokens in outs]
    return {**control, "variants": [*control["variants"], *extra],
            "split_prompts": sorted(int(i) for i in sweep["tokens"])}


def case_dtype(spec: dict[str, Any]) -> str | None:
    """The dtype a case asks of the engine (a server's ``--dtype``, an offline engine's
    ``llm`` setting), None for the model's own."""
    args = spec.get("serve_args", [])
    if "--dtype" in args:
        return args[args.index("--dtype") + 1]
    return spec.get("llm", {}).get("dtype")


SPLIT_SECONDS = {"start": 120.0, "prompt": 120.0}  # one H200: ~40 s to start, ~80 s a prompt


def explain_by_splits(model: str, spec: dict[str, Any], result: dict[str, Any],
                      control: dict[str, Any] | None, env: dict[str, str], out: Path,
                      per_prompt: float = SPLIT_SECONDS["prompt"]
                      ) -> tuple[dict[str, Any] | None, str | None]:
    """For a connector run's answers its control never gave (a soak's; an offline case's
    outputs and reference through :func:`as_variants`): run ``engine_splits.py`` on those
    prompts (the run's dtype and TP size, no connector, no audit) and return the control
    widened by every answer a prefill split gives, or the control as it was and a problem if
    the sweep did not run to the end. A connector's hit moves where a prefill splits, as
    vLLM's own prefix cache does; only an answer no split gives is the connector's. The sweep
    is told those answers (``--want``): a prompt's sweep stops once it has given them all."""
    if control is None or "variants" not in control or "variants" not in result:
        return control, None
    novel = novel_variants(result, control)
    prompts = sorted({i for i, _tokens, _n in novel})
    if not prompts:
        return control, None
    dtype = case_dtype(spec) or "auto"
    env = {k: v for k, v in env.items() if not k.startswith("STREAMCHECK")}
    path, log_path = out.with_suffix(".json"), out.with_suffix(".log")
    path.unlink(missing_ok=True)  # an earlier sweep's answers are not this one's
    want = out.with_suffix(".want.json")  # a prompt's sweep stops once these are all given
    want_of: dict[str, list[list[int]]] = {}
    for i, tokens, _n in novel:
        want_of.setdefault(str(i), []).append(tokens)
    cmd = [sys.executable, str(HERE / "engine_splits.py"), model, "--dtype", dtype,
           "--tensor-parallel-size", str(spec.get("tp", 2)),
           "--prompts", ",".join(map(str, prompts)), "--out", str(path), "--want", str(want),
           "--inner"]
    timeout = SPLIT_SECONDS["start"] + per_prompt * len(prompts)
    what = f"the split sweep of prompts {prompts}"
    try:
        want.write_text(json.dumps(want_of))
        with open(log_path, "w") as log:
            # a session of its own: vLLM's engine core is a process of its own, and a sweep
            # cut short must not leave it holding the GPU for the cases after it
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            returncode: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if returncode is None:  # the prompts it finished still explain their answers
            problem = f"{what} ran past {timeout:.0f} s"
            if not path.exists():
                return control, problem
            swept = json.loads(path.read_text())["result"]
            done = sorted(int(i) for i in swept["tokens"])
            return with_splits(control, swept), f"{problem} (finished: prompts {done})"
        if returncode != 0 or not path.exists():
            return control, f"{what} failed (exit {returncode}): {log_path.read_text()[-400:]}"
        return with_splits(control, json.loads(path.read_text())["result"]), None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return control, f"{what} could not run or be read: {exc!r}"


def soak_problems(result: dict[str, Any], rows: list[dict[str, Any]],
                  audited: bool = True, control: dict[str, Any] | None = None,
                  ref: dict[str, Any] | None = None, tp: int = 2,
                  connector: bool = False) -> list[str]:
    """A soak passes with every request answered right (see :func:`wrong_answers`), the
    server alive, its memory flat after the warm-up, and (``audited``: streamcheck's
    connector) the connector's loads among the launches audited and, at ``tp`` 2, both
    workers' pynccl launches too (TP=1 has no collectives). A server with a ``connector``,
    audited or not, must have served prompt tokens from it (vLLM's own counter). A server
    without one is the control: its answers that differ from the offline run are kept in its
    result (``wrong``, ``variants``) to judge the others by, not held against it."""
    if "error" in result:
        return [result["error"]]
    problems = []
    answers = result.get("answers", 0)
    if not answers:
        problems.append("no request was answered")
    if result.get("error_count"):
        problems.append(f"{result['error_count']} requests failed; first: {result['errors'][:2]}")
    wrong = wrong_answers(result, control, ref) if connector else None
    if wrong:
        problems.append(wrong)
    if not result.get("alive_at_end"):
        problems.append("the server exited before the load ended")
    for key, slack in (("rss_growth", None), ("gpu_growth", MEMORY_SLACK_MIB)):
        growth = result.get(key)
        if growth is None:
            if key == "rss_growth":
                problems.append("too few memory samples to tell")
            continue
        allowed = slack or max(MEMORY_SLACK_MIB, growth["after_warmup"] // 10)
        if growth["growth"] > allowed:
            problems.append(f"{key}: {growth['after_warmup']} -> {growth['end']} MiB after the "
                            f"warm-up (more than {allowed} MiB)")
    hits = result.get("counters", {}).get("vllm:external_prefix_cache_hits_total")
    if connector and not hits:
        problems.append("vLLM counted no prompt token served by the connector"
                        + (" (no counter read)" if hits is None else ""))
    if not audited:
        return problems
    if tp > 1 and sum(r["pynccl"] > 0 for r in rows) < tp:
        problems.append(f"fewer than {tp} processes audited pynccl launches ({tp} workers "
                        "expected)")
    if tp == 1 and not any(r["connector"] for r in rows):
        problems.append("no process audited a connector launch")
    if not any(r["loads"] for r in rows):
        problems.append("no connector load was audited: the connector served nothing")
    if any(r["findings"] for r in rows):
        problems.append("findings in a correct run")
    return problems


def verdict(case: str, result: dict[str, Any], audit: dict[str, Any] | None,
            ref: dict[str, Any] | None, wants_ref: bool = True,
            control: dict[str, Any] | None = None, connector: bool | None = None) -> list[str]:
    """What is wrong with a case's result; a reference case (``wants_ref`` False) is only
    checked for having run; ``control``: a soak's run without a connector; ``connector``:
    the case's server has one (default: as the case table says)."""
    if connector is None:
        connector = CASES.get(case, {}).get("connector", "none") != "none"
    problems: list[str] = []
    if case.startswith("ref_") and ("error" in result or "tokens" not in result):
        # a reference that did not run is no reference
        return [result.get("error", "the reference case gave no tokens")]
    rows = audit["rows"] if audit else []
    workers = [r for r in rows if r["pynccl"] > 0 or r["connector"] > 0]
    vllm_own = ("ref_tp2_", "offloading_tp2", "simple_cpu_tp2")  # tokens only, no audit
    if case.startswith(("faulty_tp", "clean_tp", *vllm_own)):
        if "error" in result:
            return [result["error"]]
        if not wants_ref:
            return problems
        if ref is None or "tokens" not in ref:
            problems.append("no reference tokens")
        else:
            problems += token_differences(result["tokens"], ref["tokens"], control)
        if case.startswith(vllm_own):
            return problems
        tp = CASES.get(case, {}).get("tp", 2)
        # front end and engine, and a worker process each at TP > 1 (at TP=1 the engine's
        # process is the worker); pynccl runs only between TP ranks
        if len(rows) < (2 + tp if tp > 1 else 2):
            problems.append(f"only {len(rows)} process reports (front end, engine"
                            + (f", {tp} workers)" if tp > 1 else " with its worker)"))
        if len(workers) < tp or any((tp > 1 and r["pynccl"] == 0) or r["connector"] == 0
                                    for r in workers):
            problems.append("a worker audited no " + ("pynccl or no " if tp > 1 else "")
                            + "connector launch")
        if any(r["findings"] for r in rows):
            problems.append("findings in a correct run")
        problems += loads_exercised(result.get("stats", {}))
    elif case.startswith(("soak_", "soak1_")):
        problems += soak_problems(result, rows, audited=audit is not None, control=control,
                                  ref=ref, tp=CASES.get(case, {}).get("tp", 2),
                                  connector=connector)
    elif case.startswith("leak_"):
        stopped = [r for r in rows if ("foreign-stream", "vllm.pynccl.all_reduce")
                   in {tuple(f) for f in r["findings"]}]
        if len(stopped) < 2:
            problems.append(f"the leak was stopped on {len(stopped)} rank(s), expected 2")
        if case == "leak_serve" and result.get("server_came_up"):
            problems.append("the server came up despite the leak")
    elif case.startswith(("ttft_", "inv_", "prof_")):
        if "error" in result:
            problems.append(result["error"])
        elif ref is not None and "tokens" in ref and (
                result["tokens"]["warm_batch"] != ref["tokens"]["warm_batch"]):
            diff = sum(a != b for a, b in zip(result["tokens"]["warm_batch"],
                                              ref["tokens"]["warm_batch"], strict=True))
            problems.append(f"{diff} of 8 prompts' tokens differ from recomputing")
    return problems


@contextlib.contextmanager
def case_store(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The case's spec, with what its connector's store needs made ready: a disk store's
    directory emptied (no blocks of an earlier case), a Redis store's server started for the
    case (its URL put in the spec) and stopped after it."""
    extra = spec.get("extra", {})
    if extra.get("backend") == "disk":
        shutil.rmtree(extra["path"], ignore_errors=True)
    if extra.get("backend") != "redis" or "url" in extra:
        yield spec
        return
    from streamcheck.connector.backends.redis_server import LocalRedisServer

    with LocalRedisServer() as server:
        yield {**spec, "extra": {**extra, "url": server.url}}


def run_in_interpreter(args: argparse.Namespace, case: str, spec: dict[str, Any],
                       env: dict[str, str], log: Path) -> dict[str, Any]:
    """An engine case in a fresh interpreter of its own session (``--run``); its process
    group killed after it, so no worker is left holding a GPU."""
    cmd = [sys.executable, str(HERE / "engine_check.py"), args.model, "--run", case,
           "--spec", json.dumps(spec), "--tiny-model", args.tiny_model]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(Exception):
        os.killpg(proc.pid, signal.SIGKILL)  # any worker left behind
    line = next((x for x in log.read_text().splitlines() if x.startswith(MARK)), None)
    return json.loads(line[len(MARK):]) if line else {
        "case": case, "error": "no result; log tail: " + log.read_text()[-600:]}


def reference(spec: dict[str, Any], results: dict[str, Any],
              ref_from: Path | None) -> dict[str, Any] | None:
    """The result of the case's reference: run earlier in this run (if it gave tokens), else
    from ``ref_from``."""
    if "ref" not in spec:
        return None
    ref = results.get(spec["ref"])
    if ref is not None and "tokens" not in ref:
        ref = None  # it failed in this run: an earlier run's may still serve
    if ref is None and ref_from is not None:
        with contextlib.suppress(OSError):
            ref = json.loads((ref_from / f"{spec['ref']}.json").read_text())["result"]
    return ref


def earlier_soak(soak_from: Path | None, case: str) -> dict[str, Any] | None:
    """A soak case's result and audit as an earlier run wrote them (``--soak-from``), or None
    where there is none: a soak of a few minutes need not run again to be judged against
    another reference or to have its answers explained by a split sweep."""
    if soak_from is None:
        return None
    path = soak_from / f"{case}.json"
    try:
        earlier = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc})") from exc
    if not isinstance(earlier, dict) or "result" not in earlier or "audit" not in earlier:
        raise ValueError(f"{path} is not a soak case's result file")
    return earlier


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("cases", nargs="*")
    p.add_argument("--out", default=os.environ.get("OUT", "engine-check"))
    p.add_argument("--wheel-site", default="/tmp/scsite")
    p.add_argument("--vllm-site", default="/tmp/vllm_site/site")
    p.add_argument("--timeout", type=float, default=240)
    p.add_argument("--tiny-model", default="/tmp/vllm_site/tiny-llama")
    p.add_argument("--ref-from", type=Path, help="a directory with the reference cases' JSON "
                   "files from an earlier run (used when a reference case is not run now)")
    p.add_argument("--soak-seconds", type=float,
                   help=f"how long each soak case loads its server (default {SOAK['seconds']})")
    p.add_argument("--explain-splits", action="store_true",
                   help="after a connector soak (or an offline connector case), run "
                        "engine_splits.py on the prompts whose answers its control (or "
                        "reference) never gave; answers a prefill split gives pass")
    p.add_argument("--split-seconds", type=float, default=SPLIT_SECONDS["prompt"],
                   help="seconds the sweep may take per prompt, after "
                        f"{SPLIT_SECONDS['start']:.0f} s to start (one H200: about 80 s)")
    p.add_argument("--soak-from", type=Path,
                   help="a directory with an earlier run's soak cases' JSON files: a soak "
                        "case found there is judged (and, with --explain-splits, explained) "
                        "from that run instead of being run again")
    p.add_argument("--run", dest="case")
    p.add_argument("--spec")
    args = p.parse_args()
    if args.soak_seconds is not None and args.soak_seconds <= 0:
        p.error("--soak-seconds must be positive")
    if args.split_seconds <= 0:
        p.error("--split-seconds must be positive")
    if args.soak_from is not None and not args.soak_from.is_dir():
        p.error(f"--soak-from {args.soak_from}: no such directory")
    if args.case:
        run_case(args)
        return 0
    unknown = [case for case in args.cases if case not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown} (cases are separate arguments); known: "
                f"{sorted(CASES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    verdicts: list[str] = []
    ok = True
    for case in args.cases:
        spec = CASES[case]
        if spec["kind"] == "soak" and args.soak_seconds is not None:
            spec = {**spec, "seconds": args.soak_seconds}
        reports = out / f"reports-{case}"
        reports.mkdir(exist_ok=True)
        env = case_env(spec, reports, args.wheel_site, args.vllm_site)
        log = out / f"{case}.log"
        start = time.time()
        try:
            earlier = earlier_soak(args.soak_from, case) if spec["kind"] == "soak" else None
        except ValueError as exc:
            p.error(f"--soak-from: {exc}")
        if earlier is not None:
            result, audit = earlier["result"], earlier["audit"]
        else:
            with case_store(spec) as spec:
                if spec["kind"] == "serve":
                    result = run_leak_serve(args.tiny_model, spec, env, log, args.timeout)
                elif spec["kind"] == "soak":
                    result = run_soak(args.model, spec, env, log, args.timeout,
                                      reference(spec, results, args.ref_from))
                else:
                    result = run_in_interpreter(args, case, spec, env, log)
            time.sleep(2)  # let killed workers release the GPUs
            audit = (audit_summary(read_reports(reports)) if spec["activation"] != "none"
                     else None)
        ref = reference(spec, results, args.ref_from)
        control = (reference({"ref": spec["control"]}, results, args.ref_from)
                   if "control" in spec else None)
        sweep_problem = None
        has_connector = spec.get("connector", "none") != "none"
        if (args.explain_splits and spec["kind"] == "tp2" and has_connector
                and "tokens" in result and ref is not None and "tokens" in ref):
            control, sweep_problem = explain_by_splits(
                args.model, spec, as_variants(result), as_variants(ref), env,
                out / f"{case}-splits", args.split_seconds)
        if args.explain_splits and spec["kind"] == "soak" and has_connector:
            # kept before the sweep, which can run long: a run cut short keeps its soak
            (out / f"{case}.json").write_text(json.dumps({
                "result": result, "audit": audit,
                "problems": ["the split sweep did not finish"]}))
            control, sweep_problem = explain_by_splits(
                args.model, spec, result, control, env, out / f"{case}-splits",
                args.split_seconds)
            if control is not None and "split_prompts" in control:
                result["split_prompts"] = control["split_prompts"]
        problems = verdict(case, result, audit, ref, wants_ref="ref" in spec, control=control,
                           connector=has_connector)
        problems += [sweep_problem] if sweep_problem else []
        results[case] = result
        summary = {k: v for k, v in result.items() if k not in ("tokens",)}
        summary.update(wall_s=round(time.time() - start, 1), problems=problems, audit=audit)
        (out / f"{case}.json").write_text(json.dumps({"result": result, "audit": audit,
                                                      "problems": problems}))
        print(json.dumps(summary), flush=True)
        verdicts.append(f"{case}: " + ("PASS" if not problems else
                                       "FAIL: " + "; ".join(problems)))
        ok &= not problems
    print("\n".join(verdicts))  # one line a case, after the long result lines
    print("engine checks:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
