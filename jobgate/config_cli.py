"""`jobgate config check [FILE]` and `jobgate config import LITELLM_YAML [-o OUT]`: the operator's
commands for a config file before it is deployed (the work is `core.config_check` and
`core.litellm_import`; this module parses arguments and prints).

`check` lists every problem, one a line on stderr (`FILE: error: KEY: message`), and exits 1 when
there is an error (or, with `--strict`, a warning), else 0 with a one-line summary on stdout.
Without FILE it checks the config the gateway would load (`JOBGATE_CONFIG`, ./jobgate.yaml, else
the built-in dev config). `import` writes the converted config to stdout or `-o`, and on stderr
what it did not carry over and what the operator must still fill in or set; it exits 1 when the
file is not a LiteLLM config it can convert, 2 when it cannot read or write a file. Imports
happen when a command runs, so `jobgate` itself starts as fast as before.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.config_check import CheckReport

EXIT_PROBLEMS = 1
EXIT_USAGE = 2


def _check(args: argparse.Namespace) -> int:
    from core.config import dev_config_dict
    from core.config_check import check_config, check_config_file
    from core.settings import Settings

    # The command line's one edge with the environment: the keys the providers will read.
    environ = None if args.no_env else os.environ
    path = args.file if args.file is not None else Settings().config_path()
    if path is None:
        report = check_config(dev_config_dict(), source="built-in dev config", environ=environ)
    else:
        report = check_config_file(path, environ=environ)
    _print_report(report)
    return EXIT_PROBLEMS if report.errors or (args.strict and report.warnings) else 0


def _print_report(report: CheckReport) -> None:
    for problem in report.errors + report.warnings:
        print(f"{report.source}: {problem.severity}: {problem}", file=sys.stderr)
    counts = f"{len(report.errors)} errors, {len(report.warnings)} warnings"
    if report.config is None or report.errors:
        print(f"{report.source}: {counts}", file=sys.stderr)
        return
    config = report.config
    print(f"{report.source}: ok, {len(config.providers)} providers, {len(config.models)} models ({counts})")


def _import(args: argparse.Namespace) -> int:
    from core.litellm_import import import_litellm_text, render_config

    try:
        text = args.file.read_text()
    except OSError as exc:
        print(f"jobgate: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    result = import_litellm_text(text)
    for warning in result.warnings:
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    if result.config is None:
        for error in result.errors:
            print(f"{args.file}: error: {error}", file=sys.stderr)
        print(f"{args.file}: not converted", file=sys.stderr)
        return EXIT_PROBLEMS
    output = render_config(result, source=args.file.name)
    if args.output is None:
        sys.stdout.write(output)
    else:
        try:
            with open(args.output, "w" if args.force else "x") as out:
                out.write(output)
        except FileExistsError:
            print(f"jobgate: {args.output} exists (--force overwrites it)", file=sys.stderr)
            return EXIT_USAGE
        except OSError as exc:
            print(f"jobgate: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    _print_to_do(result.fill_in, [name for name in result.env_vars if not os.environ.get(name)])
    destination = args.output or "the config"
    config: dict[str, Any] = result.config
    print(
        f"{args.file}: converted, {len(config['providers'])} providers and {len(config['models'])} models;"
        f" then run `jobgate config check {destination}`",
        file=sys.stderr,
    )
    return 0


def _print_to_do(fill_in: list[str], unset: list[str]) -> None:
    for item in fill_in:
        print(f"fill in: {item}", file=sys.stderr)
    for name in unset:
        print(f"set in the environment: {name}", file=sys.stderr)


def add_config_commands(sub: Any) -> None:
    """Register `config check` and `config import` on the top-level subparsers."""
    config = sub.add_parser("config", help="check a config file, or convert a LiteLLM proxy config")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="list every problem of a config file; exit 1 on an error")
    check.add_argument("file", nargs="?", type=Path, help="default: the config the gateway would load")
    check.add_argument(
        "--no-env",
        action="store_true",
        help="skip this machine's checks (each api_key_env set, optional packages installed)",
    )
    check.add_argument("--strict", action="store_true", help="warnings fail the check too")
    check.set_defaults(func=_check)
    convert = config_sub.add_parser("import", help="convert a LiteLLM proxy config into a jobgate config")
    convert.add_argument("file", type=Path, metavar="LITELLM_YAML")
    convert.add_argument("-o", "--output", type=Path, help="write the config here instead of stdout")
    convert.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    convert.set_defaults(func=_import)
