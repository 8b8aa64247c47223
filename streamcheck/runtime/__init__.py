"""Runtimes: the real CUDA one (torch.cuda + NCCL) and a deterministic CPU simulator.

Both expose a ``torch.cuda``-shaped namespace (``api``) so the same repro and the same audit
wrappers run on either; :mod:`streamcheck.runtime.select` picks one in a single place.
"""
