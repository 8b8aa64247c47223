"""Package marker (ADAPTED npu copy-backend case; no code)."""
