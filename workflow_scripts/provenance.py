"""Where a file came from, in a form others can check: in-toto statements, host and tool versions.

A downloader of a package cannot see our machine; the statement names the exact inputs by digest
(reference GGUF, importance matrix, tool binary) and the exact command, so a mismatch can be proven.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "gguf-forge/llama-quantize@v1"
TOOL_PACKAGES = ("gguf", "snakemake", "llama_cpp_python", "numpy", "torch", "transformers")


def statement(name: str, digest: str, command: list[str], dependencies: list[dict[str, Any]],
              builder: dict[str, Any]) -> dict[str, Any]:
    """An in-toto v1 statement with a SLSA v1 provenance predicate for one GGUF."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"command": command},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {"builder": builder},
        },
    }


def dependency(name: str, digest: str, **annotations: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "digest": {"sha256": digest}}
    if annotations:
        entry["annotations"] = annotations
    return entry


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    """The machine the figures come from: figures are honest about where they were measured."""
    return {"system": platform.system(), "machine": platform.machine(), "cpu": cpu_model(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def tool_versions() -> dict[str, str | None]:
    """Versions of the Python packages that take part in a build (None when absent)."""
    versions: dict[str, str | None] = {}
    for name in TOOL_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
