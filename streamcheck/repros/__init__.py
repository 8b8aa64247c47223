"""Regression repros for CUDA stream/thread hazards (run with ``streamcheck run 'repro_*'``)."""
