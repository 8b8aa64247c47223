"""Where the mode comes from (CLI → ini → env), bad values, and zero cost when off."""

from __future__ import annotations

import pytest

from streamcheck.core.modes import ConfigError, Mode
from streamcheck.pytest_support.settings import resolve_mode, split_bare_flag

pytestmark = pytest.mark.no_streamcheck

NO_XDIST = ("-p", "no:xdist", "-p", "no:cacheprovider")


@pytest.mark.parametrize(("cli", "ini", "env", "expected"), [
    (None, None, None, Mode.OFF),
    ("record", None, None, Mode.RECORD),
    ("assert", "warn", "record", Mode.ASSERT),
    (None, "warn", "record", Mode.WARN),
    (None, None, "assert", Mode.ASSERT),
    (None, "", "warn", Mode.WARN),  # an empty ini value is "not set"
    ("off", "record", "record", Mode.OFF),
])
def test_first_source_set_wins(cli, ini, env, expected):
    assert resolve_mode(cli, ini, env)[0] is expected


def test_a_bad_value_names_its_source():
    with pytest.raises(ConfigError, match="'yes' from environment variable STREAMCHECK_PYTEST"):
        resolve_mode(None, "", "yes")


def test_bare_flag_before_a_path_means_the_default_mode(tmp_path):
    (tmp_path / "tests").mkdir()
    args = ["--streamcheck", "tests::test_x", "--streamcheck", "warn", "--streamcheck", "nope"]
    assert split_bare_flag(args, tmp_path)
    assert args == ["--streamcheck=record", "tests::test_x", "--streamcheck", "warn",
                    "--streamcheck", "nope"]
    assert not split_bare_flag(["--streamcheck", "-n", "2"], tmp_path)


def test_streamcheck_then_a_path_runs_that_path_audited(sc):
    sc.mkdir("sub").joinpath("test_it.py").write_text(
        "import streamcheck\n\n"
        "def test_it():\n    assert streamcheck.current_auditor().mode.value == 'record'\n")
    sc.runpytest("--streamcheck", "sub", *NO_XDIST).assert_outcomes(passed=1)


def test_without_streamcheck_nothing_is_installed_or_registered(sc):
    sc.makepyfile(test_it="""
        import streamcheck
        from streamcheck import installer

        def test_off(request):
            assert streamcheck.current_auditor() is None
            assert installer.installed_patches() == 0
            assert request.config.pluginmanager.get_plugin("streamcheck-audit") is None
    """)
    sc.runpytest(*NO_XDIST).assert_outcomes(passed=1)
    sc.runpytest("--streamcheck=off", *NO_XDIST).assert_outcomes(passed=1)


@pytest.mark.parametrize(("args", "ini", "env", "source"), [
    (["--streamcheck=bogus"], None, None, "--streamcheck"),
    ([], "bogus", None, "ini option 'streamcheck' (*tox.ini)"),
    ([], None, "bogus", "environment variable STREAMCHECK_PYTEST"),
])
def test_a_bad_mode_is_a_usage_error_naming_its_source(sc, monkeypatch, args, ini, env, source):
    if ini is not None:
        sc.makeini(f"[pytest]\nstreamcheck = {ini}\n")
    if env is not None:
        monkeypatch.setenv("STREAMCHECK_PYTEST", env)
    sc.makepyfile(test_it="def test_it(): pass")
    result = sc.runpytest(*args, *NO_XDIST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        f"ERROR: 'bogus' from {source} is not a streamcheck mode; "
        "valid modes: off, record, warn, assert"
    ])


def test_ini_and_env_turn_it_on_and_the_cli_wins(sc, monkeypatch):
    sc.makeini("[pytest]\nstreamcheck = warn\n")
    monkeypatch.setenv("STREAMCHECK_PYTEST", "assert")
    sc.makepyfile(test_it="""
        import streamcheck

        def test_mode(pytestconfig):
            auditor = streamcheck.current_auditor()
            assert auditor is not None and auditor.mode.value == pytestconfig.getini("streamcheck")
    """)
    sc.runpytest(*NO_XDIST).assert_outcomes(passed=1)
    result = sc.runpytest("--streamcheck=off", *NO_XDIST)
    result.assert_outcomes(passed=0, failed=1)  # not installed: the mode check fails
