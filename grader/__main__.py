"""``python -m grader NOTEBOOK`` grades; ``python -m grader release SOURCE -o DIR`` makes releases."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lab_utils.errors import LabError
from lab_utils.models import model_from_env


def _grade_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m grader",
        description="Execute a SD LoRA Lab notebook headlessly and grade it. "
        "(Also: `python -m grader release SOURCE.ipynb -o DIR`.)",
    )
    parser.add_argument("notebook", type=Path, help="the notebook to grade")
    parser.add_argument(
        "--model",
        default=None,
        help="'tiny' (built-in, default), a local diffusers folder such as SD 1.5, or a hub id; "
        "defaults to $SD_LORA_LAB_MODEL, then 'tiny'",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="total seconds for the notebook (default 1800)"
    )
    parser.add_argument("--cell-timeout", type=float, default=None, help="seconds per cell (default 600)")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


def _release_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m grader release",
        description="Write the student notebook (solutions → TODO stubs) and the solution notebook "
        "from one source.",
    )
    parser.add_argument(
        "source", type=Path, help="the source notebook with ### BEGIN SOLUTION / ### END SOLUTION"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for the two notebooks")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    release = bool(argv) and argv[0] == "release"
    args = (_release_parser() if release else _grade_parser()).parse_args(argv[1:] if release else argv)
    try:
        if release:
            from grader.release import release_notebook

            for path in release_notebook(args.source, args.output):
                print(f"wrote {path}")
            return 0
        return _grade(args)
    except LabError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


def _grade(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from grader.config import GradingConfig
    from grader.grade import grade_notebook
    from grader.report import print_report, write_json

    config = GradingConfig()
    if args.timeout is not None:
        config = replace(config, total_timeout=args.timeout)
    if args.cell_timeout is not None:
        config = replace(config, cell_timeout=args.cell_timeout)
    report = grade_notebook(args.notebook, args.model or model_from_env(), config)
    print_report(report)
    if args.json is not None:
        write_json(report, args.json)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
