"""What each prefill split point makes the real engine answer, without any connector.

    VLLM_BATCH_INVARIANT=1 python scripts/engine_splits.py MODEL --prompts 5,12,22 \\
        [--dtype float32] [--first 32] [--stages 3] --out splits.json

A KV connector's hit of N blocks leaves the engine a partial prefill of the rest, exactly as
vLLM's own prefix cache does after a local hit of N blocks; even with batch-invariant kernels
the greedy tokens can depend on where a prompt's prefill was split (a no-connector server gives
some prompts a second answer). So an answer a connector's server gave and a no-connector server
did not is either wrong KV, or a split point the no-connector server did not happen to meet.

This settles which, for the soak's prompts (``engine_check.py``'s ``family_prompts``), with no
connector at all: for each prompt and each block boundary k, the prefix cache is emptied, the
first k blocks are prefilled alone (one token generated), then the whole prompt is answered
(a local hit of exactly k blocks); ``--first`` adds two-stage splits (the family's shared
prefix first, as a sibling request leaves it, then k blocks), ``--stages 3`` three-stage ones
(that prefix, then m blocks, then k), and ``--inner`` the plans that split that prefix itself
(m blocks, then the prefix: see :func:`split_plans`). The engine is built as the soak's
server is (eager, prefix caching, the same lengths and block counts; ``--dtype``,
``--tensor-parallel-size``).

The output is a case JSON ``engine_variants.py`` takes as a ``--control``: each prompt's
answers, one per split, under ``tokens``, and which splits gave each distinct answer under
``splits``. An answer of a connector run that some split gives here is the engine's own.
The file is written after every prompt (``complete`` false until the last): a sweep stopped
part way keeps the prompts it finished. ``--want`` (the answers to explain, a prompt's token
lists) stops a prompt's sweep once every answer wanted of it has been given
(``stopped_early``: plans run of plans there were).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from engine_check import SAFE_ENV, family_prompts, generate  # noqa: E402 (needs the path)

BLOCK = 16  # vLLM's default block size, the soak server's


def split_plans(length: int, first: list[int], stages: int = 2, inner: bool = False,
                inner_only: bool = False) -> list[tuple[int, ...]]:
    """The prefixes prefilled before the whole prompt, in order: none, each single block
    boundary k (the last token is always computed, so k stops short of the prompt's end),
    each ``first`` boundary followed by every later k, and with ``stages`` above 2 each
    ``first`` boundary followed by every rising run of ``stages - 1`` later boundaries (fewer
    pieces first, so a sweep told what to look for stops at the cheapest plan that gives it).

    Three stages is what a soak's loads can make of a prompt: its blocks after the family's
    prefix computed once after that prefix, saved, evicted; computed again by a request that
    had some of them (m) in the GPU's prefix cache, saved again; then loaded (k) by a later
    request that computes the rest: the plan (first, m, k).

    ``inner`` adds, after all of those, the plans that split a ``first`` prefix itself: (m, f)
    for every m below f, and with ``stages`` above 2 each of those followed by the later runs
    as above. A sibling that loaded m blocks of the family's prefix computed the rest of it on
    top of them; a request that then takes the whole prefix from it (a load, or vLLM's cache)
    and computes its own blocks holds the plan (m, f). ``inner_only``: those plans alone (a
    sweep that already ran the others need not run them again)."""
    full = (length - 1) // BLOCK
    inner_plans: list[tuple[int, ...]] = []
    if inner or inner_only:
        split_heads = [(m, f) for f in first if 0 < f < full for m in range(1, f)]
        inner_plans = split_heads + later_runs(split_heads, full, stages - 2)
        if inner_only:
            return inner_plans
    plans: list[tuple[int, ...]] = [(), *((k,) for k in range(1, full + 1))]
    return plans + later_runs([(f,) for f in first if 0 < f < full], full, stages - 1) + \
        inner_plans


def later_runs(heads: list[tuple[int, ...]], full: int, most: int) -> list[tuple[int, ...]]:
    """Each head followed by every rising run of 1 to ``most`` later block boundaries (up to
    ``full``), shorter runs first."""
    return [(*head, *rest) for later in range(1, most + 1) for head in heads
            for rest in itertools.combinations(range(head[-1] + 1, full + 1), later)]


def answer_after(llm: Any, prompt: list[int], plan: tuple[int, ...], max_tokens: int
                 ) -> list[int]:
    """The whole prompt's greedy answer after prefilling the prefixes of ``plan`` alone, on
    an emptied prefix cache."""
    if llm.reset_prefix_cache() is False:
        raise RuntimeError("vLLM did not empty its prefix cache (requests still running?)")
    for blocks in plan:
        generate(llm, [prompt[: blocks * BLOCK]], 1)
    return generate(llm, [prompt], max_tokens)[0]


def sweep(llm: Any, prompts: dict[int, list[int]], first: list[int], max_tokens: int,
          keep: Callable[[dict[str, Any]], None] | None = None,
          want: dict[int, list[list[int]]] | None = None, stages: int = 2,
          inner: bool = False, inner_only: bool = False) -> dict[str, Any]:
    """Every prompt's answer after each split plan; ``keep`` is given the answers so far after
    each prompt (a sweep stopped part way keeps the prompts it finished). With ``want`` (a
    prompt's answers to look for), a prompt's sweep stops at the plan that gave the last of
    its wanted answers: the question is whether the engine gives them, not how often."""
    tokens: dict[str, list[list[int]]] = {}
    splits: dict[str, list[dict[str, Any]]] = {}
    stopped: dict[str, list[int]] = {}
    for index, prompt in prompts.items():
        answers: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        outs = []
        plans = split_plans(len(prompt), first, stages, inner, inner_only)
        missing = {tuple(t) for t in (want or {}).get(index, [])}
        for plan in plans:
            out = answer_after(llm, prompt, plan, max_tokens)
            outs.append(out)
            answers.setdefault(tuple(out), []).append(plan)
            if missing:
                missing.discard(tuple(out))
                if not missing:
                    break
        tokens[str(index)] = outs
        splits[str(index)] = [{"tokens": list(out), "plans": [list(p) for p in made]}
                              for out, made in answers.items()]
        early = ""
        if len(outs) < len(plans):
            stopped[str(index)] = [len(outs), len(plans)]
            early = f" (stopped after {len(outs)} of {len(plans)}: every wanted answer given)"
        print(f"prompt {index} ({len(prompt)} tokens, {len(outs)} splits{early}): "
              f"{len(answers)} distinct answers; split plans per answer: "
              f"{[len(p) for p in answers.values()]}", flush=True)
        if keep is not None:
            keep({"tokens": tokens, "splits": splits, "stopped_early": stopped})
    return {"tokens": tokens, "splits": splits, "stopped_early": stopped}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--prompts", required=True,
                   help="comma-separated indices into the soak's 24 prompts")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="as the soak's server (its numbers are those of its TP size)")
    p.add_argument("--first", default="32",
                   help="comma-separated first split points for two-stage splits ('' for none)")
    p.add_argument("--stages", type=int, default=2,
                   help="most prefixes prefilled before the whole prompt, the first from "
                        "--first (1: single splits only, --first unused; 3: a prompt's KV in "
                        "four pieces, as a soak's loads can make it; many more plans)")
    p.add_argument("--inner", action="store_true",
                   help="also split the --first prefixes themselves: (m, first) for every m "
                        "below, after every other plan (as a sibling that loaded part of the "
                        "family's prefix leaves it)")
    p.add_argument("--inner-only", action="store_true",
                   help="only the plans --inner adds (for prompts whose other plans a "
                        "sweep already ran)")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--want", type=Path,
                   help="a JSON object of prompt index -> answers (token lists) to look for: "
                        "a prompt's sweep stops once the engine gave every one of them")
    args = p.parse_args()
    try:
        wanted = [int(x) for x in args.prompts.split(",")]
        first = [int(x) for x in args.first.split(",") if x.strip()]
    except ValueError:
        p.error("--prompts and --first take comma-separated integers")
    if args.tensor_parallel_size < 1 or args.max_tokens < 1 or args.stages < 1:
        p.error("--tensor-parallel-size, --max-tokens and --stages must be at least 1")
    want = None
    if args.want is not None:
        try:
            want = {int(i): [[int(t) for t in out] for out in outs]
                    for i, outs in json.loads(args.want.read_text()).items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            p.error(f"--want {args.want}: {exc}")
    for key, value in SAFE_ENV.items():  # as engine_check.py's cases run (offline, no
        os.environ.setdefault(key, value)  # FlashInfer sampler in the shared engine build)
    if os.environ.get("VLLM_BATCH_INVARIANT") != "1":
        print("note: VLLM_BATCH_INVARIANT is not 1; the soak's servers run with it",
              file=sys.stderr)
    from vllm import LLM

    llm = LLM(model=args.model, enforce_eager=True, enable_prefix_caching=True,
              dtype=args.dtype, max_model_len=1536, num_gpu_blocks_override=512,
              max_num_seqs=24, max_num_batched_tokens=16384, gpu_memory_utilization=0.3,
              tensor_parallel_size=args.tensor_parallel_size, disable_custom_all_reduce=True)
    prompts = family_prompts(llm.get_tokenizer().vocab_size)
    bad = [i for i in wanted if not 0 <= i < len(prompts)]
    if bad:
        p.error(f"prompt indices {bad} are outside 0..{len(prompts) - 1}")
    start = time.time()

    def write(result: dict[str, Any], complete: bool) -> None:
        result.update(case="splits", dtype=args.dtype, first=first, stages=args.stages,
                      inner=args.inner or args.inner_only, inner_only=args.inner_only,
                      complete=complete,
                      seconds=round(time.time() - start, 1))
        args.out.write_text(json.dumps({"result": result}))

    result = sweep(llm, {i: prompts[i] for i in wanted}, first, args.max_tokens,
                   keep=lambda so_far: write(so_far, complete=False), want=want,
                   stages=args.stages, inner=args.inner, inner_only=args.inner_only)
    write(result, complete=True)
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
