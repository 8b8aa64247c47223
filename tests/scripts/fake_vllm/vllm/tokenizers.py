from types import SimpleNamespace

from vllm import VOCAB


def get_tokenizer(model: str) -> SimpleNamespace:
    return SimpleNamespace(vocab_size=VOCAB)
