"""Package marker for a vllm ubatch held-out case (no code)."""
