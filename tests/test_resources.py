"""What jobs ask the scheduler for: memory from the source's size, a tier's hardware."""

from workflow_scripts.resources import job_mem_mb, reference_mb, tier_request


def test_the_reference_size_is_estimated_from_the_source_files(tmp_path):
    gguf = tmp_path / "m.Q4_1.gguf"
    gguf.write_bytes(b"\0" * 250_000)
    shards = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for shard, size in zip(shards, (300_000, 200_000)):
        shard.write_bytes(b"\0" * size)
    assert reference_mb("gguf", [str(gguf)]) == 1.0  # a quantized source grows 4x as F16
    assert reference_mb("local", list(map(str, shards))) == 0.5
    assert reference_mb("hf", []) == 0.0


def test_job_memory_scales_with_the_model_above_a_floor():
    assert job_mem_mb(1.5, 2000, 4000.0) == 6000
    assert job_mem_mb(1.5, 2000, 100.0) == 2000


def test_a_tier_asks_for_its_memory_gpus_and_placement():
    cpu = {"ram_gb": 8, "gpu_layers": 0, "resources": {"partition": "fast", "constraint": "avx512"}}
    gpu = {"ram_gb": 32.5, "gpu_layers": 99, "resources": {}}
    two = {"ram_gb": 64, "gpu_layers": 99, "resources": {"gpus": 2}}
    assert [tier_request(t, "mem_mb") for t in (cpu, gpu, two)] == [8000, 32500, 64000]
    assert [tier_request(t, "gpu") for t in (cpu, gpu, two)] == [0, 1, 2]
    assert tier_request(cpu, "partition") == "fast" and tier_request(cpu, "constraint") == "avx512"
    assert tier_request(gpu, "partition") is None and tier_request(gpu, "constraint") is None
