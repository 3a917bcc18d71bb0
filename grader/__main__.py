"""``python -m grader`` — grade a notebook, release one, grade a batch, merge a gradebook.

python -m grader NOTEBOOK [--model M] [--checks FILE] [--results DIR] [--json FILE] ...
python -m grader release SOURCE.ipynb -o DIR
python -m grader batch SUBMISSIONS/ -o RESULTS/ [--workers N] [--gpus 0,1] [--slurm ...]
python -m grader gradebook RESULTS/
python -m grader report RESULTS/ [-o FILE]
python -m grader gradescope -o autograder.zip [--checks FILE] [--model M] [--timeout S]
python -m grader verify ARTEFACTS/ [--visible-only]    (the self-check's clean process)
python -m grader regrade RESULTS/ [--checks FILE]      (recompute the checks: no notebook runs)
python -m grader worker [--model M] [--checks FILE] ... (a batch's warm worker: jobs on stdin)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grader.config import SANDBOX_MODES
from lab_utils.errors import LabError
from lab_utils.files import readable_folder, shown
from lab_utils.models import model_from_env, resolve_model

COMMANDS = ("release", "batch", "gradebook", "report", "gradescope", "verify", "regrade", "worker")


def _common(parser: argparse.ArgumentParser, grading: bool = True) -> None:
    if grading:
        parser.add_argument(
            "--model",
            default=None,
            help="'tiny' (built-in), a local diffusers folder such as SD 1.5, or a hub id "
            "(default: $SD_LORA_LAB_MODEL, then 'tiny')",
        )
        parser.add_argument(
            "--checks", type=Path, default=None, help="checks file (TOML); default: the seed lab's"
        )
        parser.add_argument(
            "--timeout", type=float, default=None, help="total seconds per notebook (default 1800)"
        )
        parser.add_argument("--cell-timeout", type=float, default=None, help="seconds per cell (default 600)")
        parser.add_argument(
            "--sandbox",
            choices=SANDBOX_MODES,
            default=None,
            help="how the learner's kernel is isolated (default auto: bubblewrap when installed, else "
            "namespaces the grader builds itself; none runs it with your privileges, and says so)",
        )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    grade = argparse.ArgumentParser(
        prog="python -m grader",
        description="Execute a SD LoRA Lab notebook headlessly and grade it. Other commands: "
        "release, batch, gradebook, verify (`python -m grader COMMAND -h`).",
    )
    grade.add_argument("notebook", type=Path, help="the notebook to grade")
    _common(grade)
    grade.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the full report as JSON"
    )
    grade.add_argument(
        "--results",
        type=Path,
        default=None,
        metavar="DIR",
        help="write results.json (Gradescope), report.json, feedback.md and images here",
    )
    grade.add_argument(
        "--submission", default=None, help="the submission's name in reports (default: file stem)"
    )
    grade.add_argument("--student", default=None, help="the student's id, for course gradebooks")
    grade.add_argument(
        "--timings", action="store_true", help="also print where the seconds went, stage by stage"
    )

    release = argparse.ArgumentParser(
        prog="python -m grader release",
        description="Write the student notebook (solutions → TODO stubs, hidden tests removed) and the "
        "solution notebook from one source.",
    )
    release.add_argument(
        "source", type=Path, help="source notebook with ### BEGIN SOLUTION / ### END SOLUTION"
    )
    release.add_argument("-o", "--output", type=Path, required=True, help="folder for the notebooks")
    _common(release, grading=False)

    batch = argparse.ArgumentParser(
        prog="python -m grader batch",
        description="Grade every notebook in a folder, concurrently and resumably.",
    )
    batch.add_argument("submissions", type=Path, help="folder of submitted .ipynb files")
    batch.add_argument(
        "-o", "--output", type=Path, required=True, help="results folder (one sub-folder each)"
    )
    batch.add_argument("--workers", type=int, default=1, help="submissions graded at once (default 1)")
    batch.add_argument("--gpus", default=None, help="GPU ids to spread workers over, e.g. 0,1")
    from grader.platforms.options import add_arguments

    add_arguments(batch)  # --slurm, --kubernetes and the sizes of their tasks
    batch.add_argument(
        "--nbgrader-assignment",
        default=None,
        metavar="NAME",
        help="SUBMISSIONS is an nbgrader course's submitted/ folder: grade <student>/NAME/*.ipynb, "
        "keyed by student id",
    )
    batch.add_argument(
        "--nbgrader-db",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the check scores into this nbgrader gradebook.db (with --nbgrader-assignment)",
    )
    _common(batch)

    gradebook = argparse.ArgumentParser(
        prog="python -m grader gradebook",
        description="Merge every RESULTS/*/report.json into gradebook.csv and summary.json.",
    )
    gradebook.add_argument("results", type=Path)
    _common(gradebook, grading=False)

    report = argparse.ArgumentParser(
        prog="python -m grader report",
        description="Write the class report: one self-contained HTML file (histogram, pass rates, causes, "
        "a sortable table with every submission's images).",
    )
    report.add_argument("results", type=Path)
    report.add_argument("-o", "--output", type=Path, default=None, help="default: RESULTS/report.html")
    _common(report, grading=False)

    gradescope = argparse.ArgumentParser(
        prog="python -m grader gradescope",
        description="Write Gradescope's autograder zip (setup.sh, run_autograder, the grader with its "
        "built-in model): upload it as the assignment's autograder.",
    )
    gradescope.add_argument("-o", "--output", type=Path, required=True, help="the zip to write")
    gradescope.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (the built-in model, default) or a local diffusers folder, copied into the zip",
    )
    gradescope.add_argument(
        "--checks", type=Path, default=None, help="checks file (TOML); default: the seed lab's"
    )
    gradescope.add_argument(
        "--timeout",
        type=float,
        default=600,
        help="the autograder timeout set in Gradescope, in seconds (default 600, Gradescope's; at most 2400)",
    )
    gradescope.add_argument(
        "--memory-gb",
        type=float,
        default=0.75,
        help="the memory of the Gradescope machine chosen in its settings (default 0.75, Gradescope's)",
    )
    _common(gradescope, grading=False)

    verify = argparse.ArgumentParser(
        prog="python -m grader verify",
        description="Run the checks on a saved artefact folder (no execution).",
    )
    verify.add_argument("artefacts", type=Path)
    verify.add_argument(
        "--visible-only", action="store_true", help="skip hidden checks (the learner's self-check)"
    )
    verify.add_argument("--json", type=Path, default=None, metavar="FILE")
    _common(verify)

    regrade = argparse.ArgumentParser(
        prog="python -m grader regrade",
        description="Recompute every check from the artefacts a grading kept, with a changed checks "
        "file (thresholds, points, visibility, optional checks): no notebook runs. Rewrites results, "
        "feedback and, for a batch, the gradebook and class report.",
    )
    regrade.add_argument("results", type=Path, help="a batch's results folder, or one grading's --results")
    regrade.add_argument(
        "--checks", type=Path, default=None, help="checks file (TOML); default: the seed lab's"
    )
    regrade.add_argument("--model", default=None, help="the base model (default: the one each grading used)")
    regrade.add_argument(
        "--regenerate",
        action="store_true",
        help="make every image again, even those a grading regenerated with the same environment, "
        "model, record and adapter",
    )
    regrade.add_argument("--debug", action="store_true", help="show tracebacks for errors")

    worker = argparse.ArgumentParser(
        prog="python -m grader worker",
        description="A batch's warm worker (started by python -m grader batch): grades the submissions "
        "given as JSON lines on stdin, one after another, with its base model loaded once.",
    )
    _common(worker)
    return {
        "grade": grade,
        "release": release,
        "batch": batch,
        "gradebook": gradebook,
        "report": report,
        "gradescope": gradescope,
        "verify": verify,
        "regrade": regrade,
        "worker": worker,
    }


def _config(args: argparse.Namespace):
    from grader.config import GradingConfig, load_config

    config = load_config(args.checks) if args.checks else GradingConfig()
    return config.with_command_line(args.timeout, args.cell_timeout, args.sandbox)


def _model(args: argparse.Namespace):
    """The model, resolved once at the boundary: what travels on is the ModelSpec."""
    return resolve_model(args.model or model_from_env())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as \xff escapes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    command = argv[0] if argv and argv[0] in COMMANDS else "grade"
    args = _parsers()[command].parse_args(argv[1:] if command != "grade" else argv)
    try:
        return {
            "grade": _grade,
            "release": _release,
            "batch": _batch,
            "gradebook": _gradebook,
            "report": _report,
            "gradescope": _gradescope,
            "verify": _verify,
            "regrade": _regrade,
            "worker": _worker,
        }[command](args)
    except LabError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM during a batch
        print("interrupted", file=sys.stderr)
        return 130


def _grade(args: argparse.Namespace) -> int:
    from grader.files import write_json
    from grader.grade import grade_notebook
    from grader.outputs.console import print_report

    config = _config(args)
    try:
        report = grade_notebook(
            args.notebook,
            _model(args),
            config,
            output=args.results,
            submission=args.submission,
            student=args.student,
        )
    except LabError as error:  # a corrupt notebook, a bad model: the learner still gets a results.json
        if args.results is not None:
            from grader.outputs.gradescope import error_results

            write_json(args.results / "results.json", error_results(str(error), max_score=config.max_score))
        raise
    print_report(report)
    if args.timings:
        from grader.outputs.console import print_timings

        print_timings(report)
    if args.json is not None:
        write_json(args.json, report.to_dict())
    return 0 if report.passed else 1


def _worker(args: argparse.Namespace) -> int:
    from grader.worker import serve

    return serve(_model(args), _config(args))


def _release(args: argparse.Namespace) -> int:
    from grader.release import release_notebook

    for path in release_notebook(args.source, args.output):
        print(f"wrote {path}")
    return 0


def _batch(args: argparse.Namespace) -> int:
    from grader.batch import find_submissions, run_batch
    from grader.outputs.console import print_summary

    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    if args.nbgrader_db is not None and args.nbgrader_assignment is None:
        raise LabError("--nbgrader-db needs --nbgrader-assignment NAME (the assignment to write scores for)")
    from grader.platforms.options import from_args

    options = from_args(args)
    if args.nbgrader_assignment is not None:
        from grader.platforms.nbgrader import exchange_submissions

        listed = exchange_submissions(args.submissions, args.nbgrader_assignment)
    else:
        listed = find_submissions(args.submissions)  # the folder is walked once, whatever the back-end
    if args.kubernetes:
        from grader.platforms.kubernetes import write_manifest

        if not args.image:
            raise LabError("--kubernetes needs --image: a container image with this lab installed")
        path = write_manifest(
            listed,
            args.output,
            _model(args),
            _config(args),
            args.checks,
            options,
            args.image,
            args.pvc,
            args.mount,
        )
        if path is None:
            print("every submission is graded: nothing to run")
        else:
            print(f"wrote {path}: kubectl apply -f {path}; then python -m grader gradebook {args.output}")
        return 0
    if args.slurm:
        from grader.platforms.slurm import run_slurm

        summary = run_slurm(
            listed, args.output, _model(args), _config(args), args.checks, options, wait=not args.no_wait
        )
        if summary is None:
            return 0
    else:
        summary = run_batch(listed, args.output, _model(args), _config(args), args.checks, args.workers, gpus)
    print_summary(summary, args.output)
    print(f"class report: {args.output / 'report.html'}")
    if args.nbgrader_db is not None:
        from grader.platforms.nbgrader import write_scores

        written = write_scores(args.output, args.nbgrader_db, args.nbgrader_assignment)
        print(f"wrote {written} grades into {args.nbgrader_db} (assignment {args.nbgrader_assignment})")
    return 0


def _gradebook(args: argparse.Namespace) -> int:
    from grader.outputs.console import print_summary
    from grader.outputs.gradebook import write_gradebook
    from grader.outputs.report import write_report
    from grader.platforms.slurm import reconcile

    _results_folder(args.results)
    reconcile(args.results)  # a --no-wait Slurm array's stopped tasks get their reports first
    print_summary(write_gradebook(args.results), args.results)
    print(f"class report: {write_report(args.results)}")
    return 0


def _results_folder(results: Path) -> None:
    """A results folder to summarise: readable, with at least one submission's report (or a Slurm
    array's records, which reconcile turns into reports)."""
    readable_folder(results, "results folder")
    if not any(results.glob("*/report.json")) and not any(results.glob("slurm/*")):
        raise LabError(
            f"results folder '{shown(results)}' holds no graded submissions (no */report.json): grade "
            "them first with python -m grader batch SUBMISSIONS -o RESULTS"
        )


def _report(args: argparse.Namespace) -> int:
    from grader.outputs.report import write_report

    _results_folder(args.results)
    print(f"wrote {write_report(args.results, args.output)}")
    return 0


def _gradescope(args: argparse.Namespace) -> int:
    from grader.platforms.gradescope import build_autograder

    path = build_autograder(args.output, args.model, args.checks, args.timeout, args.memory_gb)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB): upload it in Gradescope as the autograder")
    return 0


def _regrade(args: argparse.Namespace) -> int:
    from grader.regrade import regrade

    done = regrade(args.results, args.checks, args.model, regenerate=args.regenerate)
    print(f"regraded {len(done.regraded)} submission(s) in {done.seconds:.1f} s without running a notebook")
    if done.reused:
        print(
            f"{done.reused} image(s) the gradings regenerated were used again: everything that made them "
            "is unchanged (--regenerate makes them again)"
        )
    if done.regraded and (args.results / "gradebook.csv").is_file():
        print(f"gradebook: {args.results / 'gradebook.csv'}; class report: {args.results / 'report.html'}")
    for submission, why in done.rerun.items():
        print(f"needs its notebook run again: {submission} — {why}")
    if done.rerun:
        print("run them again with python -m grader batch SUBMISSIONS -o RESULTS (graded ones are skipped)")
    return 1 if done.rerun else 0


def _verify(args: argparse.Namespace) -> int:
    from grader.artefacts import read_artefacts
    from grader.checks import verify
    from grader.files import write_json
    from grader.outputs.console import print_checks

    config = _config(args)
    readable_folder(args.artefacts, "artefact folder")
    if not (args.artefacts / "manifest.json").is_file():
        raise LabError(
            f"artefact folder '{shown(args.artefacts)}' has no manifest.json: give a folder the "
            "grader's artefact cell saved"
        )
    only = (
        (lambda name: config.checks[name].visibility == "visible")
        if args.visible_only
        else (lambda name: True)
    )
    checks = list(verify(read_artefacts(args.artefacts), _model(args), config, None, only))
    title = (
        "self-check — visible checks only (the grader also runs hidden checks)" if args.visible_only else None
    )
    print_checks(checks, title or str(args.artefacts))
    if args.json is not None:
        from dataclasses import asdict

        write_json(args.json, {"visible_only": args.visible_only, "checks": [asdict(c) for c in checks]})
    return 0 if checks and all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
