"""Stage 4 — outputs, each made from a ``GradeReport`` (grader/types.py) and none reaching into
another: the console table (``console``), Gradescope's results.json (``gradescope``), the learner's
feedback (``feedback``) and the class gradebook (``gradebook``)."""
