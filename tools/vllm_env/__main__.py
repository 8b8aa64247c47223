"""``python -m tools.vllm_env``: the command line (run from the repository root).

Subcommands and options are those of the former ``scripts/vllm_env.py``; each one imports the
modules it needs when it runs, so ``find-stubs`` on the GPU machine loads no download or
discovery code.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

import tools.vllm_env as package
from tools.vllm_env.layout import Layout, default_root, env_vars, prepare_command
from tools.vllm_env.pins import CI_VERSIONS, checked_version


def _version(text: str) -> str:
    try:
        return checked_version(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_prepare(args: argparse.Namespace) -> None:
    from tools.vllm_env.prepare import prepare

    for version in args.versions:
        if args.force:
            Layout(args.root, version).ready.unlink(missing_ok=True)
        stats = prepare(version, args.root, args.discover)
        if stats.reused:
            print(f"vLLM {version}: already prepared from the committed pins (--force rebuilds)")
            continue
        print(
            f"vLLM {version}: prepared in {stats.seconds:.0f} s, downloaded "
            f"{stats.downloaded / 2**20:.0f} MiB -> {Layout(args.root, version).base}"
        )


def cmd_env(args: argparse.Namespace) -> None:
    from tools.vllm_env.prepare import is_ready

    if not is_ready(Layout(args.root, args.version)):
        raise SystemExit(f"vLLM {args.version} is not prepared: {prepare_command(args.version)}")
    gpu = {"auto": None, "yes": True, "no": False}[args.gpu]
    for key, val in env_vars(args.version, args.root, gpu).items():
        print(f"export {key}={shlex.quote(val)}")


def cmd_probe(args: argparse.Namespace) -> None:
    from tools.vllm_env.probe import run_probe

    print(json.dumps(run_probe(Layout(args.root, args.version), args.minimal), indent=1))


def cmd_pack(args: argparse.Namespace) -> None:
    from tools.vllm_env.pack import pack_gpu

    pack_gpu(args.version, args.root, args.out, args.scope, args.python)


def cmd_find_stubs(args: argparse.Namespace) -> None:
    from tools.vllm_env.probe import find_stubs, probe_subprocess

    cfg = json.loads(Path(args.config).read_text())
    stubs, report = find_stubs(cfg, probe_subprocess)
    print(
        json.dumps(
            {"needed": stubs, "optional_absent": report["tried_compiled"], "report": report},
            indent=1,
        )
    )


def cmd_probe_inprocess(args: argparse.Namespace) -> None:
    from tools.vllm_env import probe_child

    probe_child.main([args.config])


def build_parser() -> argparse.ArgumentParser:
    doc = package.__doc__ or ""
    ap = argparse.ArgumentParser(prog="python -m tools.vllm_env", description=doc.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def with_root(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--root", type=Path, default=default_root())
        return p

    p = with_root(sub.add_parser("prepare", help="download, extract, install pinned deps"))
    p.add_argument("versions", nargs="+", type=_version, metavar="VERSION")
    p.add_argument(
        "--discover",
        action="store_true",
        help="ignore the committed pins; find the deps by trying and rewrite them",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    p.set_defaults(fn=cmd_prepare)
    p = with_root(sub.add_parser("prepare-all", help=f"prepare {', '.join(CI_VERSIONS)}"))
    p.set_defaults(fn=cmd_prepare, versions=list(CI_VERSIONS), discover=False, force=False)
    p = with_root(sub.add_parser("env", help="print shell exports for a prepared version"))
    p.add_argument("version", type=_version)
    p.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto")
    p.set_defaults(fn=cmd_env)
    p = with_root(sub.add_parser("probe", help="import the targets in the env; print JSON"))
    p.add_argument("version", type=_version)
    p.add_argument("--minimal", action="store_true", help="hide site-packages except torch")
    p.set_defaults(fn=cmd_probe)
    p = with_root(sub.add_parser("pack-gpu", help="zip + wheels for the offline GPU machine"))
    p.add_argument("version", type=_version)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (X.Y)")
    p.add_argument(
        "--scope",
        nargs="*",
        default=[],
        help="carry deps of these probe targets only (current_stream pynccl "
        "kv_connector scheduler); default all",
    )
    p.set_defaults(fn=cmd_pack)
    p = sub.add_parser(
        "find-stubs",
        help="in the current env (e.g. after activate.sh on the "
        "GPU machine): which compiled vLLM modules the targets need",
    )
    p.add_argument("config", help="probe.json written by pack-gpu")
    p.set_defaults(fn=cmd_find_stubs)
    p = sub.add_parser("_probe", help=argparse.SUPPRESS)
    p.add_argument("config")
    p.set_defaults(fn=cmd_probe_inprocess)
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if hasattr(args, "root"):
        args.root = args.root.resolve()
    args.fn(args)


if __name__ == "__main__":
    main()
