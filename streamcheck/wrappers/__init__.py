"""Instrumented wrappers: the patches that feed the audit core.

Every patch goes through :class:`streamcheck.wrappers.registry.PatchRegistry`, so install and
uninstall are idempotent, thread-safe and restore exactly what was there. Nothing is patched
at import time.
"""
