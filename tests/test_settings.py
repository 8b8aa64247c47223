"""Settings: defaults < pyproject < environment < arguments; bad values name their source."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamcheck.activation import STARTUP_DIR, child_env
from streamcheck.core.modes import ConfigError, Mode
from streamcheck.settings import AuditSettings, find_pyproject
from streamcheck.wrappers.sites import SiteError, parse_site

PYPROJECT = """
[project]
name = "demo"

[tool.streamcheck]
mode = "warn"
report_dir = "from-pyproject"
targets = ["mypkg.comm:MyComm.all_reduce,all_gather stream=mypkg.comm:current_stream"]
select = ["foreign-stream", "device-mismatch"]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    return tmp_path


def test_pyproject_is_found_from_a_subdirectory_and_read(project: Path) -> None:
    assert find_pyproject(project / "sub" / "deeper") == project / "pyproject.toml"
    s = AuditSettings.load({}, cwd=project / "sub")
    assert s.mode is Mode.WARN and s.report_dir == "from-pyproject"
    assert s.select == frozenset({"foreign-stream", "device-mismatch"})
    [site] = s.targets
    assert (site.module, site.owner, site.methods, site.stream) == (
        "mypkg.comm", "MyComm", ("all_reduce", "all_gather"), "mypkg.comm:current_stream")
    assert s.source_of("mode") == f"{project / 'pyproject.toml'} [tool.streamcheck] mode"


def test_environment_beats_pyproject_and_arguments_beat_both(project: Path) -> None:
    env = {"STREAMCHECK": "record", "STREAMCHECK_REPORT_DIR": "from-env"}
    s = AuditSettings.load(env, cwd=project)
    assert (s.mode, s.report_dir) == (Mode.RECORD, "from-env")
    assert s.source_of("mode") == "environment variable STREAMCHECK"
    assert s.select == frozenset({"foreign-stream", "device-mismatch"})  # pyproject's stays
    s = AuditSettings.load(env, cwd=project, mode="assert")
    assert s.mode is Mode.ASSERT and s.source_of("mode") == "argument mode"


@pytest.mark.parametrize(("env", "names"), [
    ({"STREAMCHECK": "asert"}, ["environment variable STREAMCHECK", "'asert'", "assert"]),
    ({"STREAMCHECK_SELECT": "foreign-stream,nope"}, ["STREAMCHECK_SELECT", "nope"]),
    ({"STREAMCHECK_STRICT": "maybe"}, ["STREAMCHECK_STRICT", "maybe"]),
    ({"STREAMCHECK_TARGETS": "mypkg.comm"}, ["STREAMCHECK_TARGETS", "'mypkg.comm'"]),
    ({"STREAMCHECK_TARGETS": "m:C.f stream=1+1"}, ["STREAMCHECK_TARGETS", "stream='1+1'"]),
    ({"STREAMCHECK_TARGETS": "m:C.f colour=red"}, ["STREAMCHECK_TARGETS", "colour=red"]),
])
def test_a_bad_value_names_its_source(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        AuditSettings.load(env, pyproject=False)
    for name in names:
        assert name in str(err.value)


def test_a_bad_pyproject_value_names_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.streamcheck]\nmode = 3\ncolour = 1\n")
    with pytest.raises(ConfigError, match=r"pyproject.toml \[tool.streamcheck\] (mode|colour)"):
        AuditSettings.load({}, cwd=tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.streamcheck\n")
    with pytest.raises(ConfigError, match="cannot read"):
        AuditSettings.load({}, cwd=tmp_path)


def test_to_env_round_trips_and_children_get_everything(project: Path) -> None:
    s = AuditSettings.load({"STREAMCHECK_STRICT": "1"}, cwd=project)
    again = AuditSettings.load(s.to_env(), pyproject=False)
    assert (again.mode, again.report_dir, again.targets, again.select, again.strict) == (
        s.mode, s.report_dir, s.targets, s.select, s.strict)
    env = child_env("assert", "/tmp/r", base={}, settings=s)
    assert env["STREAMCHECK"] == "assert" and env["STREAMCHECK_REPORT_DIR"] == "/tmp/r"
    assert env["STREAMCHECK_TARGETS"].startswith("mypkg.comm:MyComm.all_reduce,all_gather")
    assert env["STREAMCHECK_SELECT"] == "device-mismatch,foreign-stream"
    assert env["STREAMCHECK_STRICT"] == "1"
    assert env["PYTHONPATH"].split(":")[0] == STARTUP_DIR


@pytest.mark.parametrize(("line", "kind", "owner", "methods"), [
    ("pkg.mod:Comm.all_reduce", "communicator", "Comm", ("all_reduce",)),
    ("pkg.mod:Comm.send,recv device=self.rank", "communicator", "Comm", ("send", "recv")),
    ("pkg.mod:all_reduce,broadcast", "functions", "", ("all_reduce", "broadcast")),
])
def test_target_lines(line: str, kind: str, owner: str, methods: tuple[str, ...]) -> None:
    site = parse_site(line, "test")
    assert (site.kind, site.owner, site.methods) == (kind, owner, methods)


def test_function_targets_take_no_stream_option() -> None:
    with pytest.raises(SiteError, match="methods only"):
        parse_site("pkg.mod:all_reduce stream=pkg.mod:cur", "test")
