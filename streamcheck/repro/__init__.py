"""The repro framework: specs, the legacy patterns repros model, rank launching and verdicts."""
