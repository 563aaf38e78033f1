"""Auto builds' recipe: calibration of the proxy error against measured KLD, the per-tensor convex
hulls, the greedy allocation (checked against brute force), budgets, and the CLI on synthetic records.

Tensor sizes below are hand-computed from ggml's block layouts: Q8_0 34 bytes per 32 weights, Q6_K
210 per 256, Q4_K 144 per 256, Q5_0 22 per 32.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workflow_scripts.auto_recipe import (
    Option,
    allocate,
    budget_from_bpw,
    budget_from_census,
    lower_hull,
    main,
    moved,
    options,
    scales,
)
from workflow_scripts.errors import UserError
from workflow_scripts.gguf_header import read_gguf_header

Q = "blk.0.attn_q.weight"  # 64 x 64: 4096 weights
D = "blk.0.ffn_down.weight"  # rows of 96 (no multiple of 256: K-quants fall back), 64 rows: 6144 weights
E = "token_embd.weight"  # 100 rows of 64: 6400 weights
ELEMENTS = {Q: 4096, D: 6144, E: 6400}


def tensor(ttype: str, n_bytes: int, wse: float, name: str) -> dict:
    return {"type": ttype, "n_bytes": n_bytes, "n_elements": ELEMENTS[name], "wse": wse, "ref_wse": 100.0,
            "se": wse / 2, "ref_se": 50.0,
            "weighted": name != E}


def records() -> list[dict]:
    return [
        {"menu_type": "Q8_0", "ftype": "Q8_0", "reference": "ref.gguf", "tensors": {
            Q: tensor("Q8_0", 4352, 1.0, Q), D: tensor("Q8_0", 6528, 2.0, D), E: tensor("Q8_0", 6800, 0.5, E)}},
        {"menu_type": "Q6_K", "ftype": "Q6_K", "reference": "ref.gguf", "tensors": {
            Q: tensor("Q6_K", 3360, 3.0, Q), D: tensor("Q8_0", 6528, 2.0, D), E: tensor("Q6_K", 5250, 1.5, E)}},
        {"menu_type": "Q4_K", "ftype": "Q4_K_S", "reference": "ref.gguf", "tensors": {
            Q: tensor("Q4_K", 2304, 11.0, Q), D: tensor("Q5_0", 4224, 6.0, D), E: tensor("Q4_K", 3600, 4.5, E)}},
    ]


def probes(embd_kld: float = 0.0115) -> dict:
    base = {Q: "Q8_0", D: "Q8_0", E: "Q8_0"}
    return {"base": {"tensors": base, "kld_mean": 0.010, "kld_mean_error": 0.001, "same_top_pct": 99.0},
            "groups": {"attn_q": {"tensors": {**base, Q: "Q4_K"}, "kld_mean": 0.030, "kld_mean_error": 0.001},
                       "ffn_down": {"tensors": {D: "Q5_0"}, "kld_mean": 0.050, "kld_mean_error": 0.002},
                       "token_embd": {"tensors": {E: "Q4_K"}, "kld_mean": embd_kld, "kld_mean_error": 0.001}},
            "seconds": 1.0}


# ---------------------------------------------------------------- calibration

def test_scales_divide_the_measured_rise_by_the_proxy_rise_and_floor_what_is_noise():
    # attn_q: rise 0.02 over proxy 11 - 1; ffn_down: 0.04 over 6 - 2 (its probe lists only its own tensor);
    # token_embd: rise 0.0015 is below 2 x sqrt(0.001^2 + 0.001^2) = 0.00283: a tenth of 0.002.
    assert scales(records(), probes()) == pytest.approx({"attn_q": 0.002, "ffn_down": 0.01, "token_embd": 0.0002})
    # just above and just below twice the combined error (not twice either error alone: 0.002)
    assert scales(records(), probes(0.0129))["token_embd"] == pytest.approx(0.0029 / 4)
    assert scales(records(), probes(0.0128))["token_embd"] == pytest.approx(0.0002)


def test_a_probe_that_changed_no_proxy_error_is_floored_and_all_floored_is_refused():
    flat = probes()
    flat["groups"]["attn_q"]["tensors"] = {Q: "Q8_0"}  # nothing lowered: proxy rise 0
    assert scales(records(), flat)["attn_q"] == pytest.approx(0.001)  # a tenth of ffn_down's 0.01
    quiet = probes()
    for probe in quiet["groups"].values():
        probe["kld_mean"] = 0.011
    with pytest.raises(UserError, match="could not discriminate"):
        scales(records(), quiet)


def test_a_probe_that_lowers_another_group_is_refused():
    bad = probes()
    bad["groups"]["attn_q"]["tensors"][D] = "Q5_0"
    with pytest.raises(UserError, match="group attn_q changes blk.0.ffn_down.weight"):
        scales(records(), bad)


def test_options_are_the_distinct_actual_types_with_scaled_cost_over_the_base_type():
    opts = options(records(), probes(), {"attn_q": 0.002, "ffn_down": 0.01, "token_embd": 0.0002})
    assert sorted(opts[Q]) == [Option("Q4_K", 2304, pytest.approx(0.02)), Option("Q6_K", 3360, pytest.approx(0.004)),
                               Option("Q8_0", 4352, 0.0)]
    # Q6_K's fallback Q8_0 and Q8_0 itself are one option
    assert sorted(opts[D]) == [Option("Q5_0", 4224, pytest.approx(0.04)), Option("Q8_0", 6528, 0.0)]
    near = records()
    near[1]["tensors"][D]["wse"] = 2.2  # the two records' Q8_0 of ffn_down averaged: 2.1
    assert min(options(near, probes(), {"ffn_down": 0.01, "attn_q": 1, "token_embd": 1})[D]) == \
        Option("Q5_0", 4224, pytest.approx(0.039))
    alphas = {"attn_q": 0.002, "ffn_down": 0.01, "token_embd": 0.0002}
    assert sorted(o.type for o in options(records(), probes(), alphas, {Q: frozenset({"Q6_K"})})[Q]) == ["Q4_K", "Q8_0"]
    assert sorted(o.type for o in options(records(), probes(), alphas, {D: frozenset({"Q6_K"})})[Q]) == \
        ["Q4_K", "Q6_K", "Q8_0"]  # excluded for another tensor only
    with pytest.raises(UserError, match=r"blk.0.ffn_down.weight: every type .*\(Q5_0, Q8_0\) reproduces"):
        options(records(), probes(), alphas, {D: frozenset({"Q5_0", "Q8_0"})})
    with pytest.raises(UserError, match="no probe of group token_embd"):
        options(records(), probes(), {"attn_q": 0.002, "ffn_down": 0.01})
    odd = records()
    odd[1]["tensors"][D]["n_bytes"] = 6530
    with pytest.raises(UserError, match="Q8_0 and Q6_K disagree on the bytes of blk.0.ffn_down.weight"):
        options(odd, probes(), {"attn_q": 0.002, "ffn_down": 0.01, "token_embd": 0.0002})


# ---------------------------------------------------------------- hull and allocation

def test_lower_hull_drops_dominated_and_non_convex_points_and_keeps_points_on_an_edge():
    a, b, c = Option("A", 100, 10.0), Option("B", 150, 9.9), Option("C", 200, 0.0)
    dominated = [Option("D", 250, 0.0), Option("E", 120, 12.0), Option("G", 100, 11.0)]
    assert lower_hull([c, *dominated, b, a]) == [a, c]
    on_edge = Option("F", 150, 5.0)
    assert lower_hull([a, b, c, on_edge]) == [a, on_edge, c]
    assert lower_hull([a]) == [a]


def hand_case() -> dict[str, list[Option]]:
    return {
        "x": [Option("x1", 100, 10.0), Option("x2", 150, 4.0), Option("x3", 200, 3.0)],  # slopes -0.12, -0.02
        "y": [Option("y1", 100, 6.0), Option("y2", 150, 3.0), Option("y3", 200, 0.0)],  # -0.06, -0.06
        "z": [Option("z1", 50, 2.0), Option("z2", 100, 1.0), Option("z3", 150, 0.9)],  # -0.02, -0.002
    }


def types_of(alloc) -> dict[str, str]:
    return {name: option.type for name, option in alloc.choice.items()}


def test_allocate_takes_the_steepest_upgrades_within_the_budget():
    # from 250 bytes: x -0.12, then y twice -0.06 reach 400 bytes at cost 4 + 0 + 2
    for budget in (400, 425, 449):
        alloc = allocate(hand_case(), budget_bytes=budget)
        assert types_of(alloc) == {"x": "x2", "y": "y3", "z": "z1"}
        assert (alloc.n_bytes, alloc.cost) == (400, pytest.approx(6.0))
    alloc = allocate(hand_case(), budget_bytes=450)  # x's second step ties z's first: x first by name
    assert types_of(alloc) == {"x": "x3", "y": "y3", "z": "z1"} and alloc.cost == pytest.approx(5.0)
    assert types_of(allocate(hand_case(), budget_bytes=10_000)) == {"x": "x3", "y": "y3", "z": "z3"}
    with pytest.raises(UserError, match="expected at least 250"):
        allocate(hand_case(), budget_bytes=249)


def test_allocate_to_a_cost_target_stops_as_soon_as_it_is_met():
    alloc = allocate(hand_case(), max_cost=6.0)
    assert types_of(alloc) == {"x": "x2", "y": "y3", "z": "z1"} and alloc.n_bytes == 400
    assert allocate(hand_case(), max_cost=5.5).n_bytes == 450
    assert allocate(hand_case(), max_cost=20.0).n_bytes == 250
    with pytest.raises(UserError, match="predicts 3.9"):
        allocate(hand_case(), max_cost=3.8)


def test_hull_choice_beats_raising_tensors_type_by_type():
    # x's middle type is barely better than its cheapest: raising by bits would spend 50 bytes on it
    # (or the 100 on y); the hull goes straight to x's best type.
    case = {"x": [Option("A", 100, 10.0), Option("B", 150, 9.9), Option("C", 200, 0.0)],
            "y": [Option("P", 100, 5.0), Option("Q", 200, 0.0)]}
    alloc = allocate(case, budget_bytes=300)
    assert types_of(alloc) == {"x": "C", "y": "P"} and alloc.cost == pytest.approx(5.0)
    # with only 50 bytes to spare the hull step does not fit; the fill takes the point off the hull
    alloc = allocate({"x": case["x"]}, budget_bytes=150)
    assert types_of(alloc) == {"x": "B"}


def test_the_bytes_left_go_to_the_better_of_two_greedy_fills():
    # w's step (-0.11 per byte) is the steepest and does not fit; 50 bytes are left after it
    w = [Option("w1", 100, 100.0), Option("w2", 1000, 0.0)]
    a = [Option("a1", 100, 10.0), Option("a2", 110, 9.0)]  # -0.1 per byte, drop 1
    b = [Option("b1", 100, 10.0), Option("b2", 150, 7.0)]  # -0.06 per byte, drop 3: the better use of 50
    alloc = allocate({"w": w, "a": a, "b": b}, budget_bytes=350)
    assert types_of(alloc) == {"w": "w1", "a": "a1", "b": "b2"} and alloc.cost == pytest.approx(117.0)
    # 20 bytes left: two steep small moves (drop 2) beat one larger (drop 1.5)
    c = [Option("c1", 100, 10.0), Option("c2", 120, 8.5)]
    alloc = allocate({"w": w, "a": a, "a'": a, "c": c}, budget_bytes=420)
    assert types_of(alloc) == {"w": "w1", "a": "a2", "a'": "a2", "c": "c1"} and alloc.n_bytes == 420


def brute_force(case: dict[str, list[Option]], budget: int) -> float:
    names = list(case)
    return min(sum(o.cost for o in combo) for combo in itertools.product(*(case[n] for n in names))
               if sum(o.n_bytes for o in combo) <= budget)


def lagrangian_dual(case: dict[str, list[Option]], budget: int) -> float:
    """max over lambda >= 0 of sum_t min_o (cost + lambda bytes) - lambda budget: a lower bound on the
    best cost, attained at a breakpoint (a price at which some tensor's best option changes)."""
    prices = {0.0}
    for opts in case.values():
        for a, b in itertools.combinations(opts, 2):
            if a.n_bytes != b.n_bytes:
                prices.add(max(0.0, -(b.cost - a.cost) / (b.n_bytes - a.n_bytes)))
    return max(sum(min(o.cost + lam * o.n_bytes for o in opts) for opts in case.values()) - lam * budget
               for lam in prices)


def test_greedy_is_within_the_lagrangian_bound_of_brute_force_and_exact_on_hull_vertices():
    rng = random.Random(18)
    for _ in range(30):
        case = {f"t{i}": [Option(f"t{i}o{j}", rng.randrange(10, 200), rng.uniform(0, 10)) for j in range(4)]
                for i in range(5)}
        low = sum(min(o.n_bytes for o in opts) for opts in case.values())
        high = sum(max(o.n_bytes for o in opts) for opts in case.values())
        widest_drop = max(max(o.cost for o in opts) - min(o.cost for o in opts) for opts in case.values())
        for budget in rng.sample(range(low, high + 1), 5):
            alloc = allocate(case, budget_bytes=budget)
            assert all(alloc.choice[n] in case[n] for n in case) and alloc.n_bytes <= budget
            assert alloc.n_bytes == sum(o.n_bytes for o in alloc.choice.values())
            best = brute_force(case, budget)
            assert best - 1e-9 <= alloc.cost <= lagrangian_dual(case, budget) + widest_drop + 1e-9
        # a budget on a vertex of the Lagrangian path: the price's own optimum, which greedy must find
        for lam in (rng.uniform(0, 0.3) for _ in range(5)):
            vertex = {n: min(opts, key=lambda o: o.cost + lam * o.n_bytes) for n, opts in case.items()}
            budget = sum(o.n_bytes for o in vertex.values())
            alloc = allocate(case, budget_bytes=budget)
            assert alloc.cost == pytest.approx(brute_force(case, budget), abs=1e-9)
            assert alloc.cost == pytest.approx(sum(o.cost for o in vertex.values()), abs=1e-9)


# ---------------------------------------------------------------- budgets and moves

def reference_gguf(path: Path, embd_rows: int = 100) -> Path:
    """An F16 reference with the three tensors of the records and two F32 norms (128 weights, 512 bytes)."""
    from gguf import GGUFWriter

    rng = np.random.default_rng(0)
    writer = GGUFWriter(path, "llama")
    writer.add_tensor(E, rng.standard_normal((embd_rows, 64)).astype(np.float16))
    writer.add_tensor(Q, rng.standard_normal((64, 64)).astype(np.float16))
    writer.add_tensor(D, rng.standard_normal((64, 96)).astype(np.float16))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


CENSUS = {"quant": "Q4_K_M", "tensor_types": {Q: "Q4_K", D: "Q5_0", E: "Q6_K", "blk.0.attn_norm.weight": "F32",
                                              "output_norm.weight": "F32"}}


def test_budgets_from_a_stock_census_and_from_bits_per_weight(tmp_path):
    assert budget_from_census(CENSUS, records()) == 2304 + 4224 + 5250
    with pytest.raises(UserError, match="census of Q4_K_M has no tensor token_embd.weight"):
        budget_from_census({"quant": "Q4_K_M", "tensor_types": {Q: "Q4_K", D: "Q5_0"}}, records())
    header = read_gguf_header(reference_gguf(tmp_path / "ref.gguf"))
    # 4.5 bits x 16,768 weights = 9,432 bytes, less the norms' 512
    assert budget_from_bpw(4.5, header, records()) == 8920


def test_moved_compares_bits_per_weight_with_the_stock_build():
    ours = {Q: "Q8_0", D: "Q5_0", E: "Q4_K"}
    assert moved(ours, CENSUS) == {Q: "up", D: "same", E: "down"}
    assert moved({Q: "IQ4_NL"}, CENSUS) == {Q: "same"}  # 4.5 bits, like Q4_K


# ---------------------------------------------------------------- CLI

def write_inputs(tmp_path: Path, recs: list[dict] | None = None, embd_rows: int = 100) -> list[str]:
    tmp_path.mkdir(exist_ok=True)
    files = []
    for record in recs or records():
        path = tmp_path / f"{record['menu_type']}.json"
        path.write_text(json.dumps(record))
        files.append(str(path))
    (tmp_path / "probes.json").write_text(json.dumps(probes()))
    (tmp_path / "census.json").write_text(json.dumps(CENSUS))
    reference_gguf(tmp_path / "ref.gguf", embd_rows)
    return ["--sensitivity", *files, "--probes", str(tmp_path / "probes.json"), "--reference", str(tmp_path / "ref.gguf"),
            "--build", "Q4_auto", "--out", str(tmp_path / "r.json"), "--tensor-types", str(tmp_path / "r.txt")]


def test_cli_writes_the_recipe_and_the_tensor_type_file(tmp_path, capsys):
    args = write_inputs(tmp_path)
    # budget 11,778 from 10,128: ffn_down's step (+2,304) does not fit; the fill takes attn_q's Q6_K
    # (+1,056, steepest), then 594 bytes are left: nothing else fits.
    main([*args, "--bytes-of-census", str(tmp_path / "census.json")])
    recipe = json.loads((tmp_path / "r.json").read_text())
    assert (tmp_path / "r.txt").read_text() == ("^blk\\.0\\.attn_q\\.weight$=q6_k\n^blk\\.0\\.ffn_down\\.weight$=q5_0\n"
                                                "^token_embd\\.weight$=q4_k\n")
    assert recipe["build"] == "Q4_auto" and recipe["objective"] == {"bytes_of": "Q4_K_M"}
    assert (recipe["budget_bytes"], recipe["n_bytes"]) == (11778, 11184)
    assert recipe["bits_per_weight"] == 5.5802  # (11,184 + 512) x 8 / 16,768
    assert recipe["predicted_kld_mean"] == pytest.approx(0.010 + 0.004 + 0.04 + 0.0008)
    assert recipe["tensors"][Q] == {"type": "Q6_K", "n_bytes": 3360, "cost": pytest.approx(0.004)}
    assert recipe["moved"] == {"up": [Q], "down": [E]}
    assert recipe["types"] == {"Q4_K": 1, "Q5_0": 1, "Q6_K": 1}
    assert recipe["alphas"]["token_embd"]["floored"] and not recipe["alphas"]["attn_q"]["floored"]
    assert "Q4_auto: 3 tensors, 11184 bytes (budget 11778)" in capsys.readouterr().out

    # attn_q's Q6_K reproducing the reference (se 5e-6 of ref_se 50: 1e-7 <= 1e-6) is no option for
    # it (its next step, to Q8_0, is +2,048): the 1,650 bytes left go to token_embd's Q4_K -> Q6_K
    # (3,600 -> 5,250, exactly 1,650), which stays an option for that tensor
    exact = records()
    exact[1]["tensors"][Q]["se"] = 5e-6
    args_exact = write_inputs(tmp_path / "exact", exact)
    main([*args_exact, "--bytes-of-census", str(tmp_path / "exact" / "census.json")])
    recipe = json.loads((tmp_path / "exact" / "r.json").read_text())
    assert {n: t["type"] for n, t in recipe["tensors"].items()} == {Q: "Q4_K", D: "Q5_0", E: "Q6_K"}
    assert (recipe["n_bytes"], recipe["excluded"]) == (11778, {"Q6_K": 1})
    near = records()
    near[1]["tensors"][Q]["se"] = 5e-4  # 1e-5 of ref_se: a close type, not a reproduction
    near[1]["tensors"][D]["wse"] = 1e-5  # a tiny weighted error (one dominant column) is no reproduction either
    args_near = write_inputs(tmp_path / "near", near)
    main([*args_near, "--bytes-of-census", str(tmp_path / "near" / "census.json")])
    assert json.loads((tmp_path / "near" / "r.json").read_text())["tensors"][Q]["type"] == "Q6_K"

    # 6.5 bits: 13,624 - 512 = 13,112 bytes: ffn_down's step fits, attn_q's (to 13,488) not, nor any fill
    main([*args, "--target-bpw", "6.5"])
    recipe = json.loads((tmp_path / "r.json").read_text())
    assert {n: t["type"] for n, t in recipe["tensors"].items()} == {Q: "Q4_K", D: "Q8_0", E: "Q4_K"}
    assert (recipe["budget_bytes"], recipe["n_bytes"], recipe["moved"]) == (13112, 12432, None)

    main([*args, "--max-mean-kld", "0.03"])  # a rise of 0.02 at most: ffn_down's then attn_q's first step
    recipe = json.loads((tmp_path / "r.json").read_text())
    assert {n: t["type"] for n, t in recipe["tensors"].items()} == {Q: "Q6_K", D: "Q8_0", E: "Q4_K"}
    assert recipe["predicted_kld_mean"] == pytest.approx(0.0148) and recipe["budget_bytes"] is None
    with pytest.raises(UserError, match=r"max_mean_kld 0.009: .* predicts 0.0100"):
        main([*args, "--max-mean-kld", "0.009"])


def test_cli_refuses_records_of_another_reference(tmp_path):
    odd = records()
    del odd[2]["tensors"][E]
    args = write_inputs(tmp_path, odd)
    with pytest.raises(UserError, match=r"Q4_K.json: its tensors differ from those of .*Q8_0.json \(token_embd.weight\)"):
        main([*args, "--target-bpw", "5"])
    args = write_inputs(tmp_path / "wide", embd_rows=101)  # a reference whose embeddings have another size
    done = subprocess.run([sys.executable, "-m", "workflow_scripts.auto_recipe", *args, "--target-bpw", "5"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "token_embd.weight has 6400 elements, the reference" in done.stderr and "6464" in done.stderr
    assert not (tmp_path / "wide" / "r.json").exists() and not (tmp_path / "wide" / "r.txt").exists()
    other = records()
    other[1]["reference"] = "other-F16.gguf"
    args = write_inputs(tmp_path / "other", other)
    with pytest.raises(UserError, match="Q6_K.json: measured on reference other-F16.gguf, not ref.gguf"):
        main([*args, "--target-bpw", "5"])
    bad = probes()
    bad["groups"]["attn_q"]["tensors"]["blk.9.attn_q.weight"] = "Q4_K"
    args = write_inputs(tmp_path / "probes")
    (tmp_path / "probes" / "probes.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="groups.attn_q names tensor blk.9.attn_q.weight"):
        main([*args, "--target-bpw", "5"])


def test_a_measured_remedy_raises_from_the_build_before_within_its_allowance(tmp_path, capsys):
    """Start Q4_K / Q5_0 / Q6_K (11,778 bytes). +10 %: 12,955 bytes; ffn_down's step to Q8_0 (+2,304,
    the steepest) does not fit, attn_q's to Q6_K (+1,056) does; token_embd's to Q8_0 (+1,550) not.
    +20 %: 14,133: ffn_down's step fits, and then nothing else."""
    args = write_inputs(tmp_path)
    before = tmp_path / "before.census.json"
    before.write_text(json.dumps({"tensor_types": {Q: "Q4_K", D: "Q5_0", E: "Q6_K", "output_norm.weight": "F32"}}))
    raised = [*args, "--raise-from", str(before), "--build-before", "Q4_K_M", "--allowance-pct"]
    main([*raised, "10"])
    recipe = json.loads((tmp_path / "r.json").read_text())
    assert {n: t["type"] for n, t in recipe["tensors"].items()} == {Q: "Q6_K", D: "Q5_0", E: "Q6_K"}
    assert recipe["objective"] == {"raise_from": "Q4_K_M"} and recipe["allowance_pct"] == 10
    assert (recipe["start_bytes"], recipe["budget_bytes"], recipe["n_bytes"]) == (11778, 12955, 12834)
    assert recipe["start_predicted_kld_mean"] == pytest.approx(0.010 + 0.02 + 0.04 + 0.0002)
    assert recipe["predicted_kld_mean"] == pytest.approx(0.010 + 0.004 + 0.04 + 0.0002)
    assert recipe["moved"] == {"up": [Q], "down": []} and recipe["unmeasured"] == []
    main([*raised, "20"])
    recipe = json.loads((tmp_path / "r.json").read_text())
    assert {n: t["type"] for n, t in recipe["tensors"].items()} == {Q: "Q4_K", D: "Q8_0", E: "Q6_K"}
    assert recipe["n_bytes"] == 14082 and recipe["moved"]["up"] == [D]

    # never lowered, even where the budget would buy more elsewhere: a tensor already at Q8_0 stays
    before.write_text(json.dumps({"tensor_types": {Q: "Q4_K", D: "Q8_0", E: "Q6_K"}}))
    main([*raised, "10"])
    assert json.loads((tmp_path / "r.json").read_text())["tensors"][D]["type"] == "Q8_0"
    # a starting type no record measured (Q5_K: 5.5 bits, 4,400 bytes) is kept as it is
    before.write_text(json.dumps({"tensor_types": {Q: "Q4_K", D: "Q5_0", E: "Q5_K"}}))
    main([*raised, "10"])
    recipe = json.loads((tmp_path / "r.json").read_text())
    assert recipe["tensors"][E] == {"type": "Q5_K", "n_bytes": 4400, "cost": 0.0} and recipe["unmeasured"] == [E]
    assert recipe["start_bytes"] == 2304 + 4224 + 4400

    # a starting type that reproduces the reference stays the tensor's start (it is no target elsewhere)
    exact = records()
    exact[1]["tensors"][E]["se"] = 1e-6
    args_exact = write_inputs(tmp_path / "exact", exact)
    (tmp_path / "exact" / "before.json").write_text(json.dumps({"tensor_types": {Q: "Q4_K", D: "Q5_0", E: "Q6_K"}}))
    main([*args_exact, "--raise-from", str(tmp_path / "exact" / "before.json"), "--build-before", "Q4_K_M",
          "--allowance-pct", "10"])
    assert json.loads((tmp_path / "exact" / "r.json").read_text())["tensors"][E]["type"] == "Q6_K"

    before.write_text(json.dumps({"tensor_types": {Q: "Q4_K", D: "Q5_0"}}))
    with pytest.raises(UserError, match="tensor token_embd.weight: the build before it has no such tensor"):
        main([*raised, "10"])
    with pytest.raises(SystemExit):
        main([*args, "--raise-from", str(before), "--allowance-pct", "10"])  # --build-before missing
    capsys.readouterr()
