"""The grader's kernel: ipykernel, after capping GPU memory when the grader asked for it and
installing the library-boundary recording of pipeline calls (lab_utils.recording) — before any
learner code runs, so every image a pipeline returns carries how it was made."""

from __future__ import annotations

import os

from grader.execute.sandbox import GPU_FRACTION_ENV


def main() -> None:
    from lab_utils import recording

    recording.install()
    fraction = os.environ.pop(GPU_FRACTION_ENV, None)
    if fraction:
        import torch

        if torch.cuda.is_available():
            for device in range(torch.cuda.device_count()):
                torch.cuda.set_per_process_memory_fraction(float(fraction), device)
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
