"""Audit modes and how a mode is read from the places a user can set it."""

from __future__ import annotations

import enum


class Mode(enum.Enum):
    """What the audit does. ``OFF`` installs nothing, so it costs nothing."""

    OFF = "off"
    RECORD = "record"  # keep findings for the report, say nothing
    WARN = "warn"  # keep findings and emit a warning when each is first seen
    ASSERT = "assert"  # raise StreamHazardError before the launch happens

    @property
    def active(self) -> bool:
        return self is not Mode.OFF


class ConfigError(ValueError):
    """A setting has a value streamcheck cannot use; the message names where it came from."""


def parse_mode(value: str | Mode, source: str) -> Mode:
    """Read a mode; a bad value names its source and the valid modes."""
    if isinstance(value, Mode):
        return value
    text = str(value).strip().lower()
    aliases = {"": "off", "0": "off", "false": "off", "1": "record", "true": "record"}
    text = aliases.get(text, text)
    for mode in Mode:
        if mode.value == text:
            return mode
    valid = ", ".join(m.value for m in Mode)
    raise ConfigError(f"{source}={value!r} is not a streamcheck mode; valid modes: {valid}")
