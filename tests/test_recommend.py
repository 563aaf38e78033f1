"""Speed gates and per-tier recommendations from benchmark records; llama-bench parsing; memory."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from workflow_scripts.llama_tools import parse_bench_json, parse_bench_json_per_model
from workflow_scripts.memory_fit import fits, model_shape, predict
from workflow_scripts.recommend import DEFAULT_TIE_FLOOR_PCT, main, speed_report

FIXTURES = Path(__file__).parent / "fixtures" / "bench"
GIB = 1 << 30


def test_parse_llama_bench_json():
    bench = parse_bench_json((FIXTURES / "smollm2-135m-Q8_0-cpu.json").read_text())
    assert bench["pp"]["tokens"] == 64 and bench["tg"]["tokens"] == 16
    assert bench["pp"]["tokens_per_s"] == pytest.approx(107.251184) and bench["tg"]["stddev"] > 0
    assert bench["threads"] == 2 and bench["gpu_layers"] == 0 and bench["build_commit"] == "0c1e57098"
    with pytest.raises(ValueError, match="lacks a tg test"):
        parse_bench_json('[{"n_prompt": 64, "n_gen": 0, "avg_ts": 1, "stddev_ts": 0, "samples_ts": [1]}]')
    with pytest.raises(ValueError, match="not JSON"):
        parse_bench_json("main: error: failed to load model")


def test_a_run_over_two_files_gives_each_its_own_record():
    runs = json.loads((FIXTURES / "smollm2-135m-Q8_0-cpu.json").read_text())
    reference = [{**run, "model_filename": "ref.gguf", "avg_ts": run["avg_ts"] / 2} for run in runs]
    records = parse_bench_json_per_model(json.dumps(reference + runs))
    assert list(records) == ["ref.gguf", "results/smollm2-135m/quant/smollm2-135m-Q8_0.gguf"]
    assert records["ref.gguf"]["pp"]["tokens_per_s"] == pytest.approx(107.251184 / 2)
    assert records["results/smollm2-135m/quant/smollm2-135m-Q8_0.gguf"]["pp"]["tokens_per_s"] == pytest.approx(107.251184)
    with pytest.raises(ValueError, match="holds no test"):
        parse_bench_json_per_model("[]")


SHAPE = {"layers": 30, "kv_heads": 3, "key_length": 64, "value_length": 64, "vocab": 49152, "tensor_bytes": 100_000_000}


def test_model_shape_reads_smollm2_135m_as_its_model_card_describes_it(smollm2_gguf):
    """SmolLM2-135M: 30 layers, 9 query and 3 key/value heads of 64, a 49,152-token vocabulary."""
    shape = model_shape(smollm2_gguf)
    assert {k: shape[k] for k in ("layers", "kv_heads", "key_length", "value_length", "vocab")} == {
        "layers": 30, "kv_heads": 3, "key_length": 64, "value_length": 64, "vocab": 49152}
    # Q4_1 stores 32 weights in 20 bytes (0.625 B/weight); of the 134.5 M parameters, norms in F32
    # and a few tensors in wider types make it a little more.
    assert 0.625 * 134.5e6 < shape["tensor_bytes"] < 0.75 * 134.5e6


def test_memory_prediction_counts_kv_cache_and_offload():
    cpu = predict(SHAPE, ctx=4096)
    assert cpu["kv_cache_bytes"] == 4096 * 30 * 3 * 128 * 2 and cpu["vram_bytes"] == 0
    assert cpu["ram_bytes"] > SHAPE["tensor_bytes"] + cpu["kv_cache_bytes"]
    assert predict(SHAPE, ctx=8192)["ram_bytes"] - cpu["ram_bytes"] == cpu["kv_cache_bytes"]
    gpu = predict(SHAPE, ctx=4096, gpu_layers=999)
    assert gpu["vram_bytes"] > SHAPE["tensor_bytes"] and gpu["ram_bytes"] < SHAPE["tensor_bytes"]
    assert gpu["vram_bytes"] == (SHAPE["tensor_bytes"] + gpu["kv_cache_bytes"] + gpu["compute_bytes"]
                                 + gpu["cuda_context_bytes"]) and gpu["cuda_context_bytes"] > 0.5e9
    half = predict(SHAPE, ctx=4096, gpu_layers=15)
    assert gpu["vram_bytes"] - half["vram_bytes"] == SHAPE["tensor_bytes"] // 2
    assert fits(cpu, {"ram_gb": 8, "vram_gb": 0})[0]
    ok, why = fits(cpu, {"ram_gb": 0.5, "vram_gb": 0})
    assert not ok and why.startswith("needs 0.") and "usable of 0.5 GB" in why
    assert not fits(gpu, {"ram_gb": 8, "vram_gb": 0.1})[0]


def _bench(tier: str, size: int, tg: float, latency: float, measured: bool = True, ram: int = GIB // 2) -> dict:
    record = {"file_bytes": size, "memory": {"ram_bytes": ram, "vram_bytes": 0}, "measured": measured,
              "host": {"cpu": "x", "cpus": 2, "gpus": []}}
    if not measured:
        return {**record, "reason": "GPU tier, and this host has no NVIDIA GPU"}
    return {**record, "threads": 2, "notes": [],
            "llama_bench": {"pp": {"tokens_per_s": 10 * tg, "stddev": 1.0}, "tg": {"tokens_per_s": tg, "stddev": tg / 100}},
            "task": {"load_s": 0.1, "ttft_s": 0.05, "latency_s": latency, "peak_rss_bytes": ram // 2}}


TIERS = [
    {"name": "small", "ram_gb": 1, "vram_gb": 0, "latency_budget_s": 2, "priority": "balanced", "max_kld": 0.05},
    {"name": "big", "ram_gb": 32, "vram_gb": 0, "latency_budget_s": 5, "priority": "quality", "max_kld": 0.05},
    {"name": "fast", "ram_gb": 32, "vram_gb": 0, "latency_budget_s": 5, "priority": "speed", "max_kld": 0.05},
    {"name": "gpu", "ram_gb": 32, "vram_gb": 24, "latency_budget_s": 1, "priority": "speed", "max_kld": 0.05},
]
GATE = {"min_size_reduction_pct": 25, "min_tg_speedup": 1.0}


def _validation(**klds) -> dict:
    return {"quants": {name: {"kld_mean": kld, "gate": GATE} for name, kld in klds.items()},
            "ships": {**{name: name for name in klds}, "IQ1_S": None}}


def _benches(rows: dict[str, tuple[int, float, float]], big_on_small: bool = False) -> dict:
    benches = {}
    for tier in TIERS:
        for name, (size, tg, latency) in rows.items():
            ram = 2 * GIB if (big_on_small and name == "Q8_0") else GIB // 2
            benches[(name, tier["name"])] = _bench(tier["name"], size, tg, latency, tier["name"] != "gpu", ram)
    return benches


ROWS = {"F16": (1000, 10.0, 9.0), "Q8_0": (530, 18.0, 1.5), "Q4_K_M": (300, 30.0, 1.0), "Q3_K_M": (250, 34.0, 0.9)}


def test_each_priority_picks_by_its_own_rule_and_explains_exclusions():
    report = speed_report("m", _validation(Q8_0=0.004, Q4_K_M=0.04, Q3_K_M=0.11), _benches(ROWS, big_on_small=True), "F16", TIERS)
    recs = report["recommendations"]
    assert recs["big"]["choice"] == "Q8_0" and recs["big"]["runner_up"] == "Q4_K_M"
    assert recs["big"]["why"].startswith("lowest mean KLD among 3 shipped file(s)")
    assert recs["fast"]["choice"] == "Q3_K_M"
    # balanced: the fastest within KLD ≤ 0.05; Q8_0 does not fit 1 GB (0.8 GB usable).
    assert recs["small"]["choice"] == "Q4_K_M" and recs["small"]["excluded"]["Q8_0"].startswith("does not fit: needs 2.")
    # Not measured: no latency check, speed priority falls back to the smallest file.
    assert not recs["gpu"]["measured"] and recs["gpu"]["choice"] == "Q3_K_M" and "tier not measured" in recs["gpu"]["why"]
    assert report["builds"]["Q4_K_M"]["tiers"]["big"]["tg_speedup"] == 3.0
    assert report["builds"]["Q8_0"]["size_reduction_pct"] == 47.0
    assert report["withheld"] == {"IQ1_S": ["quality gate: see validation_report.json"]}


def test_latency_budget_excludes_slow_files_on_measured_tiers():
    rows = {**ROWS, "Q8_0": (530, 18.0, 2.5)}
    recs = speed_report("m", _validation(Q8_0=0.004, Q4_K_M=0.04), _benches(rows), "F16", TIERS)["recommendations"]
    assert recs["small"]["excluded"] == {"Q8_0": "reference task took 2.50 s > budget 2 s"}
    assert recs["big"]["choice"] == "Q8_0"  # 5 s budget


def test_size_and_speed_gates_withhold_a_build():
    rows = {**ROWS, "Q6_K": (900, 9.0, 2.0)}  # barely smaller than F16 and slower
    report = speed_report("m", _validation(Q8_0=0.004, Q6_K=0.009), _benches(rows), "F16", TIERS)
    assert report["ships"]["Q6_K"] is None and report["ships"]["Q8_0"] == "Q8_0"
    reasons = report["withheld"]["Q6_K"]
    assert reasons[0] == "size reduction 10.0 % < 25 %"
    assert reasons[1].startswith("generation speed-up 0.90x (at most 0.92x within one stddev) < 1.0x on small")
    assert all(rec["choice"] != "Q6_K" for rec in report["recommendations"].values())


def test_noise_does_not_fail_the_speed_gate():
    rows = {**ROWS, "Q8_0": (530, 9.8, 1.5)}
    benches = _benches(rows)
    for tier in ("small", "big", "fast"):
        benches[("Q8_0", tier)]["llama_bench"]["tg"]["stddev"] = 0.5  # 9.8 ± 0.5 vs 10 ± 0.1: within noise
    report = speed_report("m", _validation(Q8_0=0.004), benches, "F16", TIERS)
    assert report["builds"]["Q8_0"]["verdict"] == "passed" and report["builds"]["Q8_0"]["tiers"]["big"]["tg_speedup"] == 0.98


def test_the_speed_up_is_taken_against_the_reference_measured_in_the_same_run():
    """The reference's own job ran minutes apart (here on a busier host: 6 tokens/s); the quant's job
    measured the reference just before it at 10: the speed-up is 9/10, and the gate fails it."""
    rows = {**ROWS, "F16": (1000, 6.0, 9.0), "Q8_0": (530, 9.0, 1.5)}
    benches = _benches(rows)
    for tier in ("small", "big", "fast"):
        benches[("Q8_0", tier)]["reference_llama_bench"] = {"file": "m-F16.gguf", "pp": {"tokens_per_s": 100.0, "stddev": 1.0},
                                                            "tg": {"tokens_per_s": 10.0, "stddev": 0.1}}
    report = speed_report("m", _validation(Q8_0=0.004, Q4_K_M=0.04), benches, "F16", TIERS)
    small = report["builds"]["Q8_0"]["tiers"]["small"]
    assert (small["tg_speedup"], small["reference_tg_tps"], small["speedup_against"]) == (0.9, 10.0, "reference_in_same_run")
    assert small["pp_speedup"] == 0.9 and report["ships"]["Q8_0"] is None
    assert report["builds"]["Q4_K_M"]["tiers"]["small"]["speedup_against"] == "reference_job"  # none in its record
    assert report["builds"]["Q4_K_M"]["tiers"]["small"]["tg_speedup"] == 5.0  # 30 / 6


# Speeds within the measurement noise are a tie, broken by the lower mean KLD, then the smaller file.
NEAR = {"F16": (1000, 10.0, 9.0), "Q6_K": (410, 70.0, 1.0), "Q5_K_M": (350, 100.0, 1.0), "Q4_K_M": (300, 102.0, 1.0)}
NEAR_KLD = {"Q6_K": 0.01, "Q5_K_M": 0.02, "Q4_K_M": 0.04}  # all within the balanced band (0.05)


def _speeds(speeds: dict[str, tuple[float, float]], floor_pct: float | None = None) -> dict:
    """speed_report's recommendations with these (tg tokens/s, stddev) on every measured tier."""
    benches = _benches(NEAR)
    for (name, _), bench in benches.items():
        if name in speeds and bench["measured"]:
            bench["llama_bench"]["tg"].update(tokens_per_s=speeds[name][0], stddev=speeds[name][1])
    extra = {} if floor_pct is None else {"tie_floor_pct": floor_pct}
    return speed_report("m", _validation(**NEAR_KLD), benches, "F16", TIERS, **extra)["recommendations"]


def test_speeds_within_noise_tie_and_the_lower_kld_wins_whichever_is_nominally_faster():
    for q5, q4 in ((100.0, 102.0), (102.0, 100.0)):
        recs = _speeds({"Q6_K": (70.0, 2.0), "Q5_K_M": (q5, 3.0), "Q4_K_M": (q4, 3.0)})
        for tier in ("small", "fast"):  # balanced and speed priority
            assert recs[tier]["choice"] == "Q5_K_M" and recs[tier]["runner_up"] == "Q4_K_M", (q5, q4, tier)
        tie = recs["small"]["speed_tie"]
        assert tie["builds"] == {"Q5_K_M": {"tg_tps": q5, "tg_stddev": 3.0, "kld_mean": 0.02, "file_bytes": 350},
                                 "Q4_K_M": {"tg_tps": q4, "tg_stddev": 3.0, "kld_mean": 0.04, "file_bytes": 300}}
        assert tie["nominally_fastest"] == ("Q4_K_M" if q4 > q5 else "Q5_K_M")
        assert tie["decided_by"] == "lower mean KLD" and tie["tie_break"] == "lower mean KLD, then smaller file"
        assert recs["big"]["speed_tie"] is None and recs["gpu"]["speed_tie"] is None  # quality; not measured
    assert recs["small"]["why"] == (
        "fastest generation with mean KLD ≤ 0.05 among 3 shipped file(s) that fit small and meet its 2 s budget; "
        "tied on generation speed within noise (Q5_K_M 102.0 ± 3.0, Q4_K_M 100.0 ± 3.0 tokens/s), "
        "so the lower mean KLD decided")


def test_a_real_speed_difference_still_wins():
    # 100 ± 1 against 130 ± 1: 30 tokens/s apart, more than 2 × sqrt(1 + 1) and 3 % of 130.
    recs = _speeds({"Q6_K": (70.0, 2.0), "Q5_K_M": (100.0, 1.0), "Q4_K_M": (130.0, 1.0)})
    for tier in ("small", "fast"):
        assert recs[tier]["choice"] == "Q4_K_M" and recs[tier]["runner_up"] == "Q5_K_M"
        assert recs[tier]["speed_tie"] is None and "tied" not in recs[tier]["why"]
    # Q6_K (70 ± 2) has the lowest KLD but is really slower than both: never first on speed.
    assert _speeds({"Q6_K": (70.0, 2.0), "Q5_K_M": (100.0, 3.0), "Q4_K_M": (102.0, 3.0)})["fast"]["choice"] != "Q6_K"


def test_equal_kld_ties_go_to_the_smaller_file():
    global NEAR_KLD
    saved, NEAR_KLD = NEAR_KLD, {**NEAR_KLD, "Q5_K_M": 0.04}
    try:
        recs = _speeds({"Q6_K": (70.0, 2.0), "Q5_K_M": (102.0, 3.0), "Q4_K_M": (100.0, 3.0)})
    finally:
        NEAR_KLD = saved
    assert recs["small"]["choice"] == "Q4_K_M" and recs["small"]["speed_tie"]["decided_by"] == "smaller file (equal mean KLD)"


def test_without_a_stddev_the_relative_floor_decides():
    # stddev 0 (one repetition): 3 % of the faster by default, 102 vs 100 ties, 104 vs 100 does not.
    assert _speeds({"Q5_K_M": (100.0, 0.0), "Q4_K_M": (102.0, 0.0)})["small"]["choice"] == "Q5_K_M"
    assert _speeds({"Q5_K_M": (100.0, 0.0), "Q4_K_M": (104.0, 0.0)})["small"]["choice"] == "Q4_K_M"
    assert _speeds({"Q5_K_M": (100.0, None), "Q4_K_M": (102.0, None)})["small"]["choice"] == "Q5_K_M"
    assert _speeds({"Q5_K_M": (100.0, 0.0), "Q4_K_M": (102.0, 0.0)}, floor_pct=0)["small"]["choice"] == "Q4_K_M"
    assert _speeds({"Q5_K_M": (100.0, 0.0), "Q4_K_M": (104.0, 0.0)}, floor_pct=5)["small"]["choice"] == "Q5_K_M"


def test_re_measuring_within_the_noise_never_changes_the_choice():
    rng = random.Random(20240611)
    choices, runners_up, nominal = set(), set(), set()
    for _ in range(20):
        # Each re-measurement moves every mean by up to its stddev; the stddevs are the same each time.
        speeds = {"Q6_K": (70.0 + rng.uniform(-2, 2), 2.0), "Q5_K_M": (100.0 + rng.uniform(-3, 3), 3.0),
                  "Q4_K_M": (102.0 + rng.uniform(-3, 3), 3.0)}
        nominal.add(max(speeds, key=lambda name: speeds[name][0]))
        recs = _speeds(speeds)
        choices |= {recs["small"]["choice"], recs["fast"]["choice"]}
        runners_up |= {recs["small"]["runner_up"], recs["fast"]["runner_up"]}
    assert nominal == {"Q5_K_M", "Q4_K_M"}  # the raw order did flip between re-measurements
    assert choices == {"Q5_K_M"} and runners_up == {"Q4_K_M"}


def test_re_measuring_a_real_difference_keeps_the_faster():
    rng = random.Random(7)
    choices = set()
    for _ in range(20):
        recs = _speeds({"Q6_K": (70.0 + rng.uniform(-2, 2), 2.0), "Q5_K_M": (100.0 + rng.uniform(-1, 1), 1.0),
                        "Q4_K_M": (130.0 + rng.uniform(-1, 1), 1.0)})
        choices |= {recs["small"]["choice"], recs["fast"]["choice"]}
    assert choices == {"Q4_K_M"}


def test_tie_floor_is_the_schema_default_and_reaches_the_cli(tmp_path):
    import yaml

    schema = yaml.safe_load((Path(__file__).parent.parent / "config" / "schema" / "config.schema.yaml").read_text())
    assert schema["properties"]["benchmark"]["properties"]["tie_floor_pct"]["default"] == 3 == DEFAULT_TIE_FLOOR_PCT
    benches = _benches(NEAR)
    paths = []
    for (name, tier), bench in benches.items():
        if name in ("Q5_K_M", "Q4_K_M") and bench["measured"]:
            bench["llama_bench"]["tg"].update(tokens_per_s=100.0 if name == "Q5_K_M" else 104.0, stddev=0.0)
        path = tmp_path / tier / f"{name}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(bench))
        paths.append(str(path))
    (tmp_path / "validation.json").write_text(json.dumps(_validation(**NEAR_KLD)))
    for floor, expected in ((None, "Q4_K_M"), ("5", "Q5_K_M")):
        argv = ["--model", "m", "--validation", str(tmp_path / "validation.json"), "--speeds", *paths,
                "--reference", "F16", "--tiers-json", json.dumps(TIERS), "--out", str(tmp_path / "out.json")]
        main(argv + (["--tie-floor-pct", floor] if floor else []))
        assert json.loads((tmp_path / "out.json").read_text())["recommendations"]["small"]["choice"] == expected
