"""``scripts/bench_block_accesses.py`` on a small budget: it replays the connector's pattern
(a load's checked block writes, the forward's declared reads) without a finding, and its two
arms differ in what the audit keeps, as its docstring says."""

from __future__ import annotations

import pytest

from streamcheck import installer
from tests.scripts.script_modules import load_script

bench = load_script("bench_block_accesses")


def test_with_the_hosts_waits_a_plane_keeps_only_the_latest_accesses():
    waited = bench.run(steps=12, planes=4, blocks=8, pool=64, waits=True)
    assert waited["findings"] == 0 and waited["accesses_kept_a_plane"] <= 2
    assert waited["load_check_us"] > 0 and waited["read_declaration_us"] > 0
    assert installer.current_auditor() is None  # the audit it installed is gone


def test_without_them_every_access_is_kept_up_to_the_bound():
    kept = bench.run(steps=12, planes=4, blocks=8, pool=200, waits=False)  # no block twice
    assert kept["findings"] == 0 and kept["accesses_kept_a_plane"] == 2 * 12


def test_bad_sizes_are_refused(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["bench_block_accesses.py", "--pool", "8", "--blocks", "8"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "--pool > --blocks" in capsys.readouterr().err
