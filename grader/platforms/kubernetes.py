"""Batch grading on Kubernetes: an Indexed Job manifest for ``kubectl apply``.

``python -m grader batch SUBS -o RESULTS --kubernetes --image IMAGE [--pvc CLAIM] [--mount PATH]
[--max-parallel K] [--cpus-per-task N] [--mem G] [--gpus-per-task N] [--time MIN]``

writes ``RESULTS/kubernetes/job.json`` (which index grades which submission — the same job file as
Slurm's) and ``RESULTS/kubernetes/manifest.json``: a ``batch/v1`` Job with ``completionMode:
Indexed``, one completion per submission, ``parallelism`` K, CPU/memory (and ``nvidia.com/gpu``)
requests, ``activeDeadlineSeconds`` from the time limit, and the shared volume (a
PersistentVolumeClaim) mounted at the same path the submissions and results have here, so the paths
in the job file hold in every pod. Each pod runs ``python -m grader.platforms.array task
RESULTS/kubernetes $JOB_COMPLETION_INDEX``. JSON is YAML: ``kubectl apply -f manifest.json``; then
``python -m grader gradebook RESULTS`` merges (a failed pod's submission has no report: rerun batch
to grade what is missing).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from grader.batch import Submission, already_graded
from grader.config import GradingConfig
from grader.files import write_json
from grader.platforms import array
from grader.platforms.options import TaskOptions
from lab_utils.errors import LabError
from lab_utils.models import ModelSpec


def write_manifest(
    submissions: list[Submission],
    results: Path,
    model: ModelSpec,
    config: GradingConfig,
    checks: Path | None,
    options: TaskOptions,
    image: str,
    claim: str = "sd-lora-lab-course",
    mount: Path | None = None,
) -> Path | None:
    """Write the job file and the Indexed Job manifest; returns the manifest (None: nothing to grade)."""
    todo = [s for s in submissions if not already_graded(s, results, config, model)]
    if not todo:
        return None
    paths = [results.resolve(), *(s.path.resolve() for s in todo)]
    if checks:
        paths.append(checks.resolve())
    if model.kind in ("folder", "single_file"):
        paths.append(Path(model.source))
    mount = (mount or Path(os.path.commonpath([str(p) for p in paths]))).resolve()
    outside = [p for p in paths if not p.is_relative_to(mount)]
    if outside or mount == Path("/"):
        raise LabError(
            f"--mount '{mount}': the submissions, RESULTS, the checks file and the model must all be "
            "under one shared folder the pods mount (give it with --mount)"
        )
    folder = results.resolve() / "kubernetes"
    array.write_job_file(
        folder, array.job_file(todo, model, config, checks, cpus_per_task=options.cpus_per_task)
    )
    resources: dict[str, dict[str, str | int]] = {
        "requests": {"cpu": str(options.cpus_per_task), "memory": f"{math.ceil(options.mem_gb * 1024)}Mi"},
        "limits": {"memory": f"{math.ceil(options.mem_gb * 1024)}Mi"},
    }
    if options.gpus_per_task:
        resources["limits"]["nvidia.com/gpu"] = options.gpus_per_task
    command = f'exec python -m grader.platforms.array task "{folder}" "$JOB_COMPLETION_INDEX"'
    env = [{"name": "OMP_NUM_THREADS", "value": str(options.cpus_per_task)}]
    if model.kind != "hub":  # nothing downloads unless a hub model was named
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    waves = math.ceil(len(todo) / (options.max_parallel or len(todo)))
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "sd-lora-lab-grade", "labels": {"app": "sd-lora-lab"}},
        "spec": {
            "completionMode": "Indexed",
            "completions": len(todo),
            "parallelism": options.max_parallel or len(todo),
            "backoffLimit": len(todo),  # one retry per index on average; a crashed grader is retried
            "activeDeadlineSeconds": options.time_limit(config) * 60 * waves,  # every wave of pods
            "template": {
                "metadata": {"labels": {"app": "sd-lora-lab"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "grader",
                            "image": image,
                            "command": ["sh", "-c", command],
                            "env": env,
                            "resources": resources,
                            "volumeMounts": [{"name": "course", "mountPath": str(mount)}],
                        }
                    ],
                    "volumes": [{"name": "course", "persistentVolumeClaim": {"claimName": claim}}],
                },
            },
        },
    }
    path = folder / "manifest.json"
    write_json(path, manifest)
    return path
