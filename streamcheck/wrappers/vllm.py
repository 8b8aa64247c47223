"""Audit vLLM now, by hand: import its launch sites and instrument them at once.

The audit reaches vLLM by itself: ``install()`` watches the modules of the built-in sites
(:mod:`streamcheck.wrappers.sites`) and patches them when vLLM imports them, before or after
the audit started. These helpers are for a caller that wants vLLM imported and audited *now*
and wants to know what was patched, or why it could not be (vLLM missing, another version).
"""

from __future__ import annotations

from streamcheck.vllm_compat import VllmUnavailable, import_vllm_module
from streamcheck.wrappers.instrument import apply_site
from streamcheck.wrappers.sites import BUILTIN_SITES, LaunchSite

PYNCCL_SITE = "vllm.pynccl"
CONNECTOR_SITE = "vllm.kv_connector"


def _site(name: str) -> LaunchSite:
    return next(s for s in BUILTIN_SITES if s.name == name)


def _instrument(name: str) -> list[str]:
    site = _site(name)
    return apply_site(site, import_vllm_module(site.module))


def instrument_pynccl() -> list[str]:
    """Import vLLM's pynccl and audit ``PyNcclCommunicator``; returns the methods patched."""
    return _instrument(PYNCCL_SITE)


def instrument_connectors() -> list[str]:
    """Audit every ``KVConnectorBase_V1`` subclass, those defined later included."""
    return _instrument(CONNECTOR_SITE)


def instrument_vllm() -> dict[str, list[str]]:
    """Everything that can be audited in the installed vLLM; parts that cannot are reported."""
    done: dict[str, list[str]] = {}
    for part, fn in (("pynccl", instrument_pynccl), ("connectors", instrument_connectors)):
        try:
            done[part] = fn()
        except VllmUnavailable as exc:
            done[part] = [f"unavailable: {exc}"]
    return done
