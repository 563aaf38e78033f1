"""What a job asks the scheduler for: memory from the model's size, a tier's hardware.

On a workstation Snakemake only counts these against ``--resources``; on a cluster they are the
job's request (SLURM: --mem, --gpus, --constraint, the partition), so they must be known before
anything is made: the reference's size is estimated from the source, one stat per model.
"""

from __future__ import annotations

import os
from typing import Any

DEQUANTIZED_GROWTH = 4
"""A quantized GGUF source (4-5 bits per weight) grows about this much as an F16 reference."""


def reference_mb(source_type: str, files: list[str]) -> float:
    """The model's reference size in MB, estimated from its source files: a GGUF source
    dequantized to F16 grows about 4x, an HF checkpoint keeps its size; a Hub source's files are
    not known before it is fetched (none: 0)."""
    size = sum(os.path.getsize(path) for path in files) / 1e6
    return DEQUANTIZED_GROWTH * size if source_type == "gguf" else size


def job_mem_mb(factor: float, floor: int, model_mb: float) -> int:
    """Memory for a job as ``factor`` times the model's reference size, at least ``floor`` MB."""
    return max(floor, int(factor * model_mb))


def tier_request(tier: dict[str, Any], key: str) -> Any:
    """One resource a speed job asks for its tier's hardware: ``mem_mb`` (the tier's RAM), ``gpu``
    (the SLURM plugin's --gpus: the tier's ``resources.gpus``, else 1 for a GPU tier, 0 for a CPU
    tier), or a key of the tier's ``resources`` (partition, constraint; None when unset)."""
    if key == "mem_mb":
        return int(tier["ram_gb"] * 1000)
    if key == "gpu":
        return tier["resources"].get("gpus", 1 if tier["gpu_layers"] else 0)
    return tier["resources"].get(key)
