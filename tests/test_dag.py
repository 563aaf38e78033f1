"""The job graph, through Snakemake's API (dry runs): what runs, how often, and what re-runs."""

from pathlib import Path

import pytest
import yaml
from snakemake_interface_common.exceptions import WorkflowError

from tests.dag import planned_jobs, planned_resources
from tests.stub_sources import EMPTY_GGUF, write_hf_dir

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path, quants_a, quants_b):
    (tmp_path / "a.gguf").write_bytes(EMPTY_GGUF)
    hf = write_hf_dir(tmp_path / "hf-b")
    return {
        "calibration": {"text": str(ROOT / "config" / "data" / "calibration.txt")},
        "models": [
            {"name": "a", "source": {"type": "gguf", "path": str(tmp_path / "a.gguf")}, "quants": quants_a},
            {"name": "b", "source": {"type": "local", "path": str(hf)}, "quants": quants_b},
        ],
    }


def _plan(tmp_path, config):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return planned_jobs(tmp_path, path)


def test_two_models_three_quants_share_one_convert_and_one_imatrix_per_model(tmp_path):
    jobs = _plan(tmp_path, _config(tmp_path, ["Q8_0", "Q4_K_M", "Q6_K"], ["Q8_0", "Q5_K_M", "IQ4_XS"]))
    assert jobs["toolchain"] == 1
    assert jobs["convert"] == 2 and jobs["imatrix"] == 2 and jobs["tokenizer_parity"] == 2
    assert jobs["source_local"] == 2 and jobs["calibration_text"] == 2
    assert jobs["quantize"] == 6 and jobs["sha256sums"] == 2
    assert jobs["reference_logits"] == 2 and jobs["validate_quant"] == 6
    assert jobs["validation_report"] == 2 and jobs["quality_table"] == 1
    assert jobs["sanity_reference"] == 2 and jobs["sanity_quant"] == 6 and jobs["verdict"] == 6
    assert jobs["tensor_error"] == 6 and jobs["speed"] == 2 * 3  # the references on the 3 default tiers


def test_adding_a_quant_adds_exactly_one_quantize_job(tmp_path):
    before = _plan(tmp_path, _config(tmp_path, ["Q8_0", "Q4_K_M", "Q6_K"], ["Q8_0"]))
    after = _plan(tmp_path, _config(tmp_path, ["Q8_0", "Q4_K_M", "Q6_K", "Q3_K_M"], ["Q8_0"]))
    diff = after - before
    assert diff == {"quantize": 1, "validate_quant": 1, "sanity_quant": 1, "tensor_error": 1, "verdict": 1}


def test_imatrix_off_drops_the_imatrix_job(tmp_path):
    config = _config(tmp_path, ["Q8_0"], ["Q8_0"])
    config["models"][1]["imatrix"] = False
    jobs = _plan(tmp_path, config)
    assert jobs["imatrix"] == 1 and jobs["quantize"] == 2


@pytest.mark.parametrize("change,message", [
    ({"quants": ["Q4_K_Z"]}, "quants[0]: 'Q4_K_Z' is not allowed"),
    ({"imatrix": False, "quants": ["IQ2_XS"]}, "quant IQ2_XS needs an importance matrix"),
    ({"extra_key": 1}, "unknown key(s) 'extra_key'"),
])
def test_bad_config_fails_before_any_job_with_the_field_named(tmp_path, change, message):
    config = {**_config(tmp_path, ["Q8_0"], ["Q8_0"]), **change}
    if "quants" in change:
        for model in config["models"]:
            model.pop("quants")
    with pytest.raises(WorkflowError) as err:
        _plan(tmp_path, config)
    assert str(err.value).startswith(f"invalid configuration: {tmp_path / 'config.yaml'} + ")
    assert message in str(err.value)
    assert not (tmp_path / "results").exists()


def test_speed_jobs_ask_slurm_for_their_tier(tmp_path):
    """Memory, partition, node constraint and GPUs through the SLURM plugin's own resources (it
    refuses --gres or --constraint inside slurm_extra), and a node to itself."""
    from types import SimpleNamespace
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    config = _config(tmp_path, ["Q8_0"], ["Q8_0"])
    config["tiers"] = [
        {"name": "cpu-a", "threads": 4, "ram_gb": 8, "latency_budget_s": 10,
         "resources": {"constraint": "avx512", "partition": "fast"}},
        {"name": "cpu-b", "threads": 4, "ram_gb": 16, "latency_budget_s": 10},
        {"name": "gpu-a", "threads": 4, "ram_gb": 32, "vram_gb": 24, "gpu_layers": 99, "latency_budget_s": 10},
    ]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    jobs = planned_resources(tmp_path, path, "speed", tuple(f"results/a/speed/{t}/F16.json"
                                                               for t in ("cpu-a", "cpu-b", "gpu-a")))
    by_tier = {job["tier"]: job for job in jobs}
    assert by_tier["cpu-a"]["constraint"] == "avx512" and by_tier["cpu-a"]["slurm_partition"] == "fast"
    assert "constraint" not in by_tier["cpu-b"] and by_tier["cpu-b"]["mem_mb"] == 16000
    assert [by_tier[t]["gpu"] for t in ("cpu-a", "cpu-b", "gpu-a")] == [0, 0, 1]
    for job in jobs:
        assert job["slurm_extra"] == "--exclusive"
        validate_slurm_extra(SimpleNamespace(resources=SimpleNamespace(slurm_extra=job["slurm_extra"])))
