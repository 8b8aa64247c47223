"""The ``streamcheck`` command: one subcommand per job, exit codes CI can trust."""

from __future__ import annotations

import argparse
import importlib
import sys

from rich.console import Console

SUBCOMMANDS = {
    "run": ("streamcheck.cli.run_cmd", "run repros (buggy / fixed / guarded) and check them"),
    "list": ("streamcheck.cli.list_cmd", "list the repros and what each shows"),
    "report": ("streamcheck.cli.report_cmd", "render saved reports or runs"),
    "env": ("streamcheck.cli.env_cmd", "print exports that audit child processes"),
    "scan": ("streamcheck.cli.scan_cmd", "find the current-stream leak pattern in source"),
    "doctor": ("streamcheck.cli.doctor_cmd",
               "report the environment and probe the installed vLLM for the hazards"),
    "completion": ("streamcheck.cli.completion_cmd", "print a bash or zsh completion script"),
}

EXIT_USAGE = 2

DESCRIPTION = "Find CUDA stream/thread hazards in LLM inference engines before they launch."
EPILOG = """\
examples:
  streamcheck run 'repro_*'                      the regression repros (CUDA if present, else sim)
  streamcheck scan src/                          the current-stream leak pattern in source
  eval "$(streamcheck env assert --report-dir /tmp/sc)"; python serve.py
  streamcheck report /tmp/sc                     what those processes audited and found
  streamcheck doctor                             this environment, and the installed vLLM
  eval "$(streamcheck completion bash)"          TAB completion (bash; zsh likewise)

exit codes:
  0  everything matched, nothing found
  1  a repro mismatched, or a finding
  2  bad usage or unusable input (one line on stderr says what)
  128+N  stopped by signal N (run)
"""


def build_parser() -> argparse.ArgumentParser:
    from streamcheck import __version__

    parser = argparse.ArgumentParser(prog="streamcheck", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"streamcheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(handler=module.command, root_parser=parser)
    return parser


def writes_stdout(args: argparse.Namespace) -> bool:
    """Whether this command prints a machine-readable document on stdout."""
    if any(getattr(args, name, None) == "-" for name in ("json", "junit", "sarif")):
        return True
    return getattr(args, "output_format", None) in ("json", "sarif")


def main(argv: list[str] | None = None) -> int:
    from streamcheck.runtime.select import BackendUnavailable

    args = build_parser().parse_args(argv)
    # A document written to stdout ("-") keeps stdout clean: everything else goes to stderr.
    stream = sys.stderr if writes_stdout(args) else sys.stdout
    # A pipe or CI log gets wide rows instead of names folded into 80 columns.
    console = Console(file=stream, highlight=False, width=None if stream.isatty() else 180)
    try:
        return int(args.handler(args, console))
    except (BackendUnavailable, ValueError) as exc:  # ReproError, ConfigError, DocumentError...
        # One plain line, never wrapped: scripts and CI logs grep it.
        print(f"streamcheck {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
