"""Where courses grade: Gradescope's autograder zip (``gradescope``) and nbgrader courses (``nbgrader``)."""
