"""The installed distribution's version: one source, pyproject.toml, read from the metadata."""

from __future__ import annotations

import functools
from importlib import metadata


@functools.cache
def package_version() -> str:
    try:
        return metadata.version("streamcheck")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"
