"""Every document the command line writes, read back by a real parser or validator:
run JSON and list JSON against their published schemas, JUnit with ``junitparser``, and
``-`` (stdout) outputs that carry the document and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import junitparser
import pytest

from streamcheck.documents import LIST_SCHEMA, RUN_SCHEMA, DocumentError, validate

NAN = Path(__file__).parents[2] / "streamcheck" / "repros" / "repro_global_stream_leak_nan.py"


def streamcheck(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamcheck", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def mismatching(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repro directory with one repro whose ``fixed`` variant expects a NaN it never shows."""
    directory = tmp_path_factory.mktemp("repros")
    text = NAN.read_text().replace('name="repro_global_stream_leak_nan"',
                                   'name="repro_wrong_expectation"')
    text = text.replace('"fixed": Expectation(clean=True)',
                        '"fixed": Expectation(symptom=("nan",))')
    assert "repro_wrong_expectation" in text and 'symptom=("nan",)' in text
    (directory / "repro_wrong_expectation.py").write_text(text)
    return directory


@pytest.fixture(scope="module")
def run_outputs(mismatching: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out")
    done = streamcheck("run", "repro_global_stream_leak_nan", "repro_wrong_expectation",
                       "--backend", "sim", "--variant", "fixed", "--repro-dir", str(mismatching),
                       "--json", "-", "--junit", str(out / "run.xml"), cwd=out)
    return done, out


def test_run_json_on_stdout_is_the_document_alone(run_outputs) -> None:
    done, _ = run_outputs
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)  # would fail on any table or progress line
    assert validate(document, "run --json -") == RUN_SCHEMA
    assert document["summary"] == {"matched": 1, "mismatched": 1, "skipped": 0, "cancelled": 0}
    assert "1 matched, 1 mismatched" in done.stderr and "MISMATCH" in done.stderr


def test_run_junit_reads_back_with_a_junit_parser(run_outputs) -> None:
    _, out = run_outputs
    xml = junitparser.JUnitXml.fromfile(str(out / "run.xml"))
    suites = list(xml) if isinstance(xml, junitparser.JUnitXml) else [xml]
    assert len(suites) == 1
    suite = suites[0]
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (2, 1, 0, 0)
    assert suite.time > 0 and suite.timestamp and suite.hostname
    cases = {case.classname: case for case in suite}
    assert set(cases) == {"repro_global_stream_leak_nan.sim", "repro_wrong_expectation.sim"}
    assert cases["repro_global_stream_leak_nan.sim"].is_passed
    failure = cases["repro_wrong_expectation.sim"].result[0]
    assert isinstance(failure, junitparser.Failure)
    assert "expected" in failure.text and "nan" in failure.message


def test_run_results_print_as_they_finish_with_a_count(run_outputs) -> None:
    done, _ = run_outputs
    lines = [line for line in done.stderr.splitlines() if "(1/2)" in line or "(2/2)" in line]
    assert len(lines) == 2, done.stderr


def test_quiet_run_prints_only_mismatches_and_the_summary(mismatching: Path,
                                                         tmp_path: Path) -> None:
    done = streamcheck("run", "repro_global_stream_leak_nan", "repro_wrong_expectation",
                       "--backend", "sim", "--variant", "fixed", "--repro-dir", str(mismatching),
                       "-q", cwd=tmp_path)
    assert done.returncode == 1
    assert "repro_wrong_expectation" in done.stdout
    assert "repro_global_stream_leak_nan" not in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("1 matched, 1 mismatched")


def test_list_json_matches_its_schema_on_stdout_and_in_a_file(tmp_path: Path) -> None:
    done = streamcheck("list", "--json", "-", cwd=tmp_path)
    document = json.loads(done.stdout)
    assert validate(document, "list --json -") == LIST_SCHEMA
    names = [r["name"] for r in document["repros"]]
    assert "repro_global_stream_leak_nan" in names and names == sorted(names)
    assert streamcheck("list", "--json", "l.json", cwd=tmp_path).returncode == 0
    assert json.loads((tmp_path / "l.json").read_text()) == document
    assert streamcheck("list", "--names", cwd=tmp_path).stdout.split() == names


def test_the_validators_refuse_what_the_schemas_forbid() -> None:
    """The checks above can fail: a run without its summary, a list entry without a name."""
    with pytest.raises(DocumentError, match="summary"):
        validate({"schema": RUN_SCHEMA, "backend": "sim", "seconds": 1, "results": []}, "x")
    with pytest.raises(DocumentError, match="name"):
        validate({"schema": LIST_SCHEMA, "repros": [{"path": "p"}]}, "x")


def test_report_skips_documents_it_does_not_render(tmp_path: Path) -> None:
    (tmp_path / "scan.json").write_text(json.dumps({"schema": "streamcheck.list/1",
                                                    "repros": []}))
    done = streamcheck("report", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "a streamcheck.list/1 document" in done.stdout
    assert "no audit reports or runs" in done.stderr
