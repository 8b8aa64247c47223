"""The generated completion script, run by a real bash: what TAB offers at each position."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamcheck.cli.completion_cmd import completion_script
from streamcheck.cli.main import build_parser

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def complete(words: list[str], tmp_path: Path) -> list[str]:
    """COMPREPLY after typing ``words`` (the last one is being completed)."""
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "streamcheck").write_text(f"#!/bin/sh\nexec {sys.executable} -m streamcheck \"$@\"\n")
    (shim / "streamcheck").chmod(0o755)
    script = tmp_path / "completion.bash"
    script.write_text(completion_script(build_parser(), "bash"))
    quoted = " ".join(f"'{w}'" for w in words)
    driver = (f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
              "_streamcheck; printf '%s\\n' \"${COMPREPLY[@]}\"")
    env = dict(os.environ, PATH=f"{shim}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["bash", "-c", driver], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_sub_commands(tmp_path: Path) -> None:
    assert complete(["streamcheck", "r"], tmp_path) == ["run", "report"]


def test_option_names_and_choices(tmp_path: Path) -> None:
    assert "--output-format" in complete(["streamcheck", "scan", "--out"], tmp_path)
    assert complete(["streamcheck", "scan", "--output-format", "s"], tmp_path) == ["sarif"]
    assert complete(["streamcheck", "env", "a"], tmp_path) == ["assert"]


def test_repro_names_for_run(tmp_path: Path) -> None:
    offered = complete(["streamcheck", "run", "repro_global"], tmp_path)
    assert offered == ["repro_global_stream_leak_error400", "repro_global_stream_leak_nan"]


def test_files_after_a_path_option(tmp_path: Path) -> None:
    (tmp_path / "out.json").write_text("{}")
    assert complete(["streamcheck", "run", "--json", "ou"], tmp_path) == ["out.json"]


def test_zsh_script_goes_through_bashcompinit() -> None:
    script = completion_script(build_parser(), "zsh")
    assert "bashcompinit" in script and script.endswith("complete -o filenames -F _streamcheck "
                                                        "streamcheck")
