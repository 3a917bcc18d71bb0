"""A batch's warm worker, seen from the batch (grader.worker.Worker) with a stand-in worker process:
answers come back in order; a worker that dies or runs past its limit is killed, said so, and the
next job starts a fresh one. The real worker grades in tests/test_course.py's batch test."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from grader.batch import _Children
from grader.worker import Worker

STAND_IN = """
import json, os, sys, time
for line in sys.stdin:
    job = json.loads(line)
    if job["notebook"] == "die":
        os._exit(3)
    if job["notebook"] == "hang":
        time.sleep(60)
    print(json.dumps({"code": job["code"], "pid": os.getpid()}), flush=True)
"""


def test_a_worker_that_dies_or_hangs_is_replaced_and_the_job_named():
    children = _Children()
    worker = Worker([sys.executable, "-c", STAND_IN], dict(os.environ), children)
    assert worker.grade({"notebook": "ok", "code": 0}, limit=30) == 0
    first = worker.process
    assert worker.grade({"notebook": "ok", "code": 1}, limit=30) == 1 and worker.process is first  # kept warm
    assert worker.grade({"notebook": "die", "code": 0}, limit=30) is None  # died: the log says why
    assert worker.process is None and first.poll() is not None and not children.running
    assert worker.grade({"notebook": "ok", "code": 0}, limit=30) == 0  # a fresh worker
    second = worker.process
    assert second is not first
    began = time.monotonic()
    assert worker.grade({"notebook": "hang", "code": 0}, limit=1) == "timeout"
    assert time.monotonic() - began < 10 and second.poll() is not None  # killed, not waited for
    assert worker.grade({"notebook": "ok", "code": 1}, limit=30) == 1
    os.kill(worker.process.pid, 9)  # ended while idle: the next job is not blamed for it
    worker.process.wait()
    assert worker.grade({"notebook": "ok", "code": 0}, limit=30) == 0
    worker.close()
    assert worker.process is None and not children.running


def test_a_stopping_batch_starts_no_worker():
    children = _Children()
    children.stop_all()
    worker = Worker([sys.executable, "-c", STAND_IN], dict(os.environ), children)
    assert worker.grade({"notebook": "ok", "code": 0}, limit=30) == "stopped" and worker.process is None


def test_what_a_job_prints_goes_to_its_own_log(tmp_path):
    script = f"""
import os, sys
from pathlib import Path
from grader.worker import _logged_to
for name in "ab":
    with _logged_to(Path({str(tmp_path)!r}) / f"{{name}}.log"):
        print("graded", name)
        os.write(2, b"a warning from a library\\n")
    print("between jobs")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for name in "ab":
        assert (tmp_path / f"{name}.log").read_text() == f"graded {name}\na warning from a library\n"
    assert done.stdout == "between jobs\nbetween jobs\n"
