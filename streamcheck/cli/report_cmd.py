"""``streamcheck report PATH...``: render saved audit reports (merged) and saved runs.

Every file is read and validated on its own (:mod:`streamcheck.documents`): a directory may hold
runs and per-process audit reports side by side, and each is shown as what it is. The exit code
counts everything shown: 1 if any run mismatched or any audit report has a finding.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from streamcheck.core.report import AuditReport, merge_reports, write_report
from streamcheck.documents import REPORT_SCHEMA, RUN_SCHEMA, collect, read_document
from streamcheck.render.findings import print_report
from streamcheck.render.run_table import run_table
from streamcheck.repro.run_report import RunReport


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="report JSON files, directories of them, or `run --json` files")
    p.add_argument("--merge-to", metavar="PATH", help="also write the merged report here")


def command(args: argparse.Namespace, console: Console) -> int:
    documents = []
    for document in (read_document(path) for path in collect(args.paths)):
        if document.kind in (RUN_SCHEMA, REPORT_SCHEMA):
            documents.append(document)
        else:
            console.print(f"[yellow]skipped {document.path}: a {document.kind} document; "
                          f"`streamcheck report` renders audit reports and runs[/]")
    if not documents:
        raise ValueError(f"no audit reports or runs in {', '.join(args.paths)}")
    runs = [d for d in documents if d.kind == RUN_SCHEMA]
    reports = [AuditReport.from_dict(d.data) for d in documents if d.kind == REPORT_SCHEMA]
    if args.merge_to and not reports:
        raise ValueError("--merge-to: there are no audit reports to merge (only saved runs)")
    status = 0
    for run in runs:
        saved = RunReport.from_json(run.data, str(run.path))
        console.print(run_table(saved.rows(), f"saved run {run.path.name} — backend "
                                              f"{saved.backend}"))
        status |= 1 if saved.mismatched else 0
    if reports:
        merged = reports[0] if len(reports) == 1 else merge_reports(reports)
        print_report(console, merged)
        status |= 1 if merged.findings else 0
        if args.merge_to:
            try:
                write_report(merged, args.merge_to)
            except OSError as exc:
                raise ValueError(f"--merge-to {args.merge_to}: cannot write it "
                                 f"({exc.strerror or exc})") from None
    return status
