"""Stage 1 — execute: the learner's notebook in a fresh kernel (``run``: nbclient, timeouts, the
grader's artefact cell after each step), started through the sandbox's ``launcher`` (limits and
isolation applied before any learner code exists; ``sandbox`` is the grader's side of it) as the
grader's ``kernel``. Nothing is imported here, so ``python -m grader.execute.launcher`` starts light."""
