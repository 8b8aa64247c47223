"""A stand-in for vLLM with just what ``engine_check.py``'s soak calls: ``vllm serve`` (an
HTTP server answering ``/health``, ``/metrics`` and ``/v1/completions``) and the tokenizer's
vocabulary size. Its answers are a function of the prompt (:func:`answer`)."""

VOCAB = 5000


def answer(prompt: list[int], max_tokens: int) -> list[int]:
    return [(sum(prompt) + i) % VOCAB for i in range(max_tokens)]
