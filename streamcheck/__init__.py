"""streamcheck: find CUDA stream/thread hazards in LLM inference engines before they launch.

    import streamcheck
    streamcheck.install("assert")      # or STREAMCHECK=assert in the environment
    ...
    streamcheck.uninstall()

Nothing is patched at import. See README.md for the command line and the pytest plugin.
"""

from streamcheck.audit import current_auditor, install, uninstall
from streamcheck.core.errors import StreamHazardError
from streamcheck.core.modes import ConfigError, Mode
from streamcheck.core.roles import CONNECTOR, ENGINE, declare_thread_role
from streamcheck.wrappers.user_launch import handoff, launch


def _version() -> str:
    """The installed distribution's version (one source: pyproject.toml)."""
    from importlib import metadata

    try:
        return metadata.version("streamcheck")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


__version__ = _version()

__all__ = [
    "CONNECTOR",
    "ENGINE",
    "ConfigError",
    "Mode",
    "StreamHazardError",
    "current_auditor",
    "declare_thread_role",
    "handoff",
    "install",
    "launch",
    "uninstall",
]
