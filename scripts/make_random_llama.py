"""A randomly initialised Llama of a chosen shape, with grouped-query attention, for engine runs.

Whether loading a prefix's KV beats recomputing it depends on the model's shape: recomputing
costs about 2 x parameters x tokens of arithmetic, loading moves layers x 2 x kv_heads x
head_dim x 2 bytes per token. A small model with as many KV heads as query heads (the shared
recipe's models) is the worst case for loading; this makes the common case of grouped-query
attention. The tokenizer, vocabulary and generation settings are copied from an existing model
directory (``--like``), so prompts made for it fit; the weights are drawn on the GPU when there
is one (seconds for billions of parameters, where the CPU takes minutes). It needs
``transformers``, which vLLM depends on (run it where vLLM is installed).

    python scripts/make_random_llama.py OUT --like /tmp/mid-llama \
        [--hidden 4096] [--layers 16] [--heads 32] [--kv-heads 8] [--intermediate 14336]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--like", type=Path, required=True,
                   help="a model directory whose tokenizer and vocabulary are reused")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--max-positions", type=int, default=16384)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.hidden % a.heads or a.heads % a.kv_heads:
        p.error("--hidden must be a multiple of --heads, and --heads of --kv-heads")

    from transformers import LlamaConfig, LlamaForCausalLM

    like = json.loads((a.like / "config.json").read_text())
    cfg = LlamaConfig(
        vocab_size=like["vocab_size"], hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.layers, num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads, head_dim=a.hidden // a.heads,
        max_position_embeddings=a.max_positions, rms_norm_eps=1e-5,
        bos_token_id=like.get("bos_token_id"), eos_token_id=like.get("eos_token_id"),
        pad_token_id=like.get("pad_token_id"), tie_word_embeddings=False)
    torch.manual_seed(a.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    a.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    for name in os.listdir(a.like):  # tokenizer files and generation settings
        if name != "config.json" and not name.endswith(WEIGHT_SUFFIXES) and (
                a.like / name).is_file() and not (a.out / name).exists():
            shutil.copy(a.like / name, a.out / name)
    params = sum(t.numel() for t in model.parameters())
    kv_bytes_per_token = a.layers * 2 * a.kv_heads * (a.hidden // a.heads) * 2
    print(json.dumps({"out": str(a.out), "params": params, "layers": a.layers,
                      "hidden": a.hidden, "heads": a.heads, "kv_heads": a.kv_heads,
                      "kv_bytes_per_token": kv_bytes_per_token}))


if __name__ == "__main__":
    main()
