"""streamcheck: find CUDA stream/thread hazards in LLM inference engines before they launch.

    import streamcheck
    streamcheck.install("assert")      # or STREAMCHECK=assert in the environment
    ...
    streamcheck.uninstall()

Nothing is patched at import. See README.md for the command line and the pytest plugin.
"""

from streamcheck.core.errors import StreamHazardError
from streamcheck.core.modes import ConfigError, Mode
from streamcheck.core.roles import CONNECTOR, ENGINE
from streamcheck.installer import current_auditor, install, uninstall
from streamcheck.version import package_version
from streamcheck.wrappers.state import declare_thread_role
from streamcheck.wrappers.user_launch import blocks, handoff, handoffs, launch

__version__ = package_version()

__all__ = [
    "CONNECTOR",
    "ENGINE",
    "ConfigError",
    "Mode",
    "StreamHazardError",
    "blocks",
    "current_auditor",
    "declare_thread_role",
    "handoff",
    "handoffs",
    "install",
    "launch",
    "uninstall",
]
