"""Package marker for the vllm 0.10.2 p2p held-out case (no code)."""
