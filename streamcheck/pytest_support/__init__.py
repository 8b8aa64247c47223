"""The work behind ``pytest --streamcheck``; :mod:`streamcheck.pytest_plugin` only registers it.

Layout, one concern a module:

* :mod:`.settings` — the mode (CLI → ini → env) and the per-test marker, validated;
* :mod:`.records` — one test's findings, in-process and from its child processes;
* :mod:`.children` — the per-test environment that audits child processes, and their reports;
* :mod:`.audit_handle` — keeps the process's auditor installed and routes its findings;
* :mod:`.state` — the session state, kept in ``config.stash``;
* :mod:`.verdict` — turns a test's findings into a failed report;
* :mod:`.results` — the per-process report and the merge of xdist workers' reports;
* :mod:`.summary` — the terminal summary (rich or plain), rendered from the merged report;
* :mod:`.hooks` — the hook functions, registered only when auditing is on;
* :mod:`.fixture` — the ``streamcheck_findings`` fixture's view.
"""
