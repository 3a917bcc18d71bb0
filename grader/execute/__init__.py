"""Stage 1 — execute: the learner's notebook in a fresh kernel (``run``: nbclient, timeouts, the
grader's artefact cell after each step), started inside a sandbox (``sandbox``: the launcher that
applies limits and isolation before any learner code exists) as the grader's kernel (``kernel``).
Nothing is imported here, so ``python -m grader.execute.sandbox`` starts light."""
