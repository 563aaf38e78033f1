"""Sensitivity for auto builds: the imatrix-weighted error of each tensor at each menu type, checked
against plain numpy on hand-made files and on the demo model with the real llama-quantize, and the
KLD probes with the real llama-quantize and llama-perplexity."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.workflow_run import CALIBRATION, ROOT
from workflow_scripts.checksums import write_sidecar
from workflow_scripts.errors import UserError
from workflow_scripts.sensitivity import (complete_records, menu_ftype, probe_plan, tensor_options, tensor_type_lines,
                                         weighted_errors)

MENU = ("Q8_0", "Q4_K", "Q3_K")


def _gguf(path: Path, tensors: dict[str, tuple[np.ndarray, object]]) -> Path:
    """A GGUF holding ``tensors`` (name → (values, type)): values quantized by gguf-py to the type."""
    from gguf import GGUFWriter
    from gguf.quants import quantize

    writer = GGUFWriter(str(path), "llama")
    for name, (values, qtype) in tensors.items():
        if qtype.name == "F32":
            writer.add_tensor(name, values.astype(np.float32))
        else:
            writer.add_tensor(name, quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_weighted_error_equals_numpy_on_hand_made_files(tmp_path):
    """A reference of F32 tensors, its Q8_0 quant (gguf-py's quantize), and an imatrix written here:
    attn_q (one matrix, count 10), a 3-expert tensor whose expert 1 got no tokens (weighted 1, as
    llama-quantize weighs it) and whose row blocks of 65,536 rows span expert boundaries, and
    token_embd without an entry. The records equal sum v_j (q_ij - r_ij)^2 computed here."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    f32, q8 = GGMLQuantizationType.F32, GGMLQuantizationType.Q8_0
    rng = np.random.default_rng(18)
    ref = {"blk.0.attn_q.weight": rng.normal(size=(4, 256)),
           "blk.0.ffn_down_exps.weight": rng.normal(size=(3, 30_000, 64)),  # expert, row, column
           "token_embd.weight": rng.normal(size=(5, 64))}
    ref = {name: values.astype(np.float32) for name, values in ref.items()}
    norm = np.linspace(0.5, 1.5, 64, dtype=np.float32)
    _gguf(tmp_path / "ref.gguf", {**{n: (v, f32) for n, v in ref.items()}, "blk.0.attn_norm.weight": (norm, f32)})
    _gguf(tmp_path / "q.gguf", {**{n: (v, q8) for n, v in ref.items()}, "blk.0.attn_norm.weight": (norm, f32)})
    sums = {"blk.0.attn_q.weight": rng.uniform(0, 50, size=(1, 256)).astype(np.float32),  # as stored
            "blk.0.ffn_down_exps.weight": rng.uniform(0, 50, size=(3, 64)).astype(np.float32)}
    counts = {"blk.0.attn_q.weight": [10], "blk.0.ffn_down_exps.weight": [5, 0, 2]}
    imatrix = {}
    for name in sums:
        imatrix[f"{name}.in_sum2"] = (sums[name], f32)
        imatrix[f"{name}.counts"] = (np.array(counts[name], dtype=np.float32).reshape(-1, 1), f32)
    _gguf(tmp_path / "imatrix.gguf", imatrix)

    got = weighted_errors(tmp_path / "q.gguf", tmp_path / "ref.gguf", tmp_path / "imatrix.gguf")
    assert set(got) == set(ref)  # the F32 norm was not quantized
    for name, values in ref.items():
        deq = dequantize(quantize_bytes(values), q8).reshape(values.shape).astype(np.float64)
        err2, ref2 = (deq - values) ** 2, values.astype(np.float64) ** 2
        if name == "token_embd.weight":
            v = np.ones(64)
        elif name == "blk.0.attn_q.weight":
            v = sums[name][0].astype(np.float64) / 10
        else:  # per expert: its own sums over its own count; expert 1 weighs 1
            v = np.stack([sums[name][0] / 5.0, np.ones(64), sums[name][2] / 2.0]).astype(np.float64)[:, None, :]
        record = got[name]
        assert record["wse"] == pytest.approx(float((v * err2).sum()), rel=1e-9), name
        assert record["ref_wse"] == pytest.approx(float((v * ref2).sum()), rel=1e-9), name
        assert record["se"] == pytest.approx(float(err2.sum()), rel=1e-9), name
        assert record["type"] == "Q8_0" and record["n_elements"] == values.size
        assert record["n_bytes"] == values.size // 32 * 34 and record["shape"] == list(values.shape[::-1])
    assert [got[n]["weighted"] for n in ref] == [True, False, False]  # expert 1 had no tokens; no entry


def quantize_bytes(values: np.ndarray) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    return quantize(values, GGMLQuantizationType.Q8_0)


def test_imatrix_entries_of_the_wrong_size_are_refused(tmp_path):
    from gguf import GGMLQuantizationType

    f32, q8 = GGMLQuantizationType.F32, GGMLQuantizationType.Q8_0
    values = np.ones((2, 64), dtype=np.float32)
    _gguf(tmp_path / "ref.gguf", {"blk.0.attn_q.weight": (values, f32)})
    _gguf(tmp_path / "q.gguf", {"blk.0.attn_q.weight": (values, q8)})
    _gguf(tmp_path / "imatrix.gguf", {"blk.0.attn_q.weight.in_sum2": (np.ones((1, 32)), f32),
                                      "blk.0.attn_q.weight.counts": (np.ones((1, 1)), f32)})
    with pytest.raises(UserError, match=r"imatrix.gguf: entry blk.0.attn_q.weight has 32 sums and 1 counts; "
                                        r"expected 1 × 64 sums"):
        weighted_errors(tmp_path / "q.gguf", tmp_path / "ref.gguf", tmp_path / "imatrix.gguf")


def test_menu_types_map_to_the_first_file_type_named_after_them():
    assert [menu_ftype(t) for t in ("Q4_K", "Q3_K", "Q5_K", "Q8_0", "IQ4_XS", "Q6_K")] == [
        "Q4_K_S", "Q3_K_S", "Q5_K_S", "Q8_0", "IQ4_XS", "Q6_K"]
    with pytest.raises(UserError, match="menu type 'Q4_K_M': no llama-quantize file type gives it"):
        menu_ftype("Q4_K_M")


def test_tensor_type_lines_name_each_tensor_only():
    text = tensor_type_lines({"blk.1.attn_q.weight": "Q4_K", "blk.10.attn_q.weight": "Q8_0"})
    assert text == "^blk\\.1\\.attn_q\\.weight$=q4_k\n^blk\\.10\\.attn_q\\.weight$=q8_0\n"
    first = text.splitlines()[0].split("=")[0]
    assert [bool(re.search(first, n)) for n in ("blk.1.attn_q.weight", "blk.10.attn_q.weight", "blk.1xattn_q.weight")] \
        == [True, False, False]
    with pytest.raises(UserError, match=r"tensor blk.0.Attn_q.weight: cannot be named .* lower-cases the pattern"):
        tensor_type_lines({"blk.0.Attn_q.weight": "Q4_K"})


def test_probe_plan_lowers_one_group_at_a_time():
    """(bytes, weighted error) per type; of equal bytes the smaller error is taken (IQ4_NL and Q4_0)."""
    options = {"blk.0.attn_q.weight": {"Q8_0": (100, 1.0), "Q5_0": (60, 5.0), "Q4_0": (50, 9.0), "IQ4_NL": (50, 7.0)},
               "blk.1.attn_q.weight": {"Q8_0": (100, 1.0), "Q5_0": (60, 5.0), "IQ4_NL": (50, 9.0), "Q4_0": (50, 7.0)},
               "blk.0.ffn_down.weight": {"Q3_K": (110, 30.0), "Q8_0": (300, 2.0), "Q4_K": (150, 6.0)},
               "pos_embd.weight": {"F16": (8, 0.0)}}  # one option only: nothing to probe
    plan = probe_plan(options)
    base = {"blk.0.attn_q.weight": "Q8_0", "blk.1.attn_q.weight": "Q8_0", "blk.0.ffn_down.weight": "Q8_0",
            "pos_embd.weight": "F16"}
    assert plan == {"base": base,
                    "attn_q": {**base, "blk.0.attn_q.weight": "IQ4_NL", "blk.1.attn_q.weight": "Q4_0"},
                    "ffn_down": {**base, "blk.0.ffn_down.weight": "Q3_K"}}


def test_records_of_different_tensors_are_refused():
    one = {"tensors": {"a.weight": {"type": "Q8_0", "n_bytes": 10, "wse": 0.5}}}
    other = {"tensors": {"b.weight": {"type": "Q4_0", "n_bytes": 5, "wse": 2.0}}}
    assert tensor_options({Path("Q8_0.json"): one}) == {"a.weight": {"Q8_0": (10, 0.5)}}
    with pytest.raises(UserError, match=r"Q4_0.json: its tensors differ from those of Q8_0.json \(a.weight, b.weight\)"):
        tensor_options({Path("Q8_0.json"): one, Path("Q4_0.json"): other})


def test_borrowed_entries_come_from_the_fallback_types_record():
    """A record's borrowed tensors take the entry of the record of their fallback type; one that
    record lacks (not quantized at that type) stays out; without that record: a clear error."""
    q5 = {"menu_type": "Q5_0", "tensors": {"a.weight": {"type": "Q5_0", "n_bytes": 22, "wse": 0.3}}}
    q4 = {"menu_type": "Q4_K", "tensors": {"b.weight": {"type": "Q4_K", "n_bytes": 18, "wse": 0.7}},
          "borrowed": {"a.weight": "Q5_0", "pos.weight": "Q5_0"}}
    done = complete_records({"Q5_0.json": q5, "Q4_K.json": q4})
    assert done["Q4_K.json"]["tensors"] == {"b.weight": {"type": "Q4_K", "n_bytes": 18, "wse": 0.7},
                                            "a.weight": {"type": "Q5_0", "n_bytes": 22, "wse": 0.3}}
    assert done["Q5_0.json"] is q5 and "a.weight" not in q4["tensors"]  # the records read are left as they were
    with pytest.raises(UserError, match=r"Q4_K.json: tensor a.weight is borrowed from the record of Q5_0, which is "
                                        r"not among the sensitivity records \(Q4_K\)"):
        complete_records({"Q4_K.json": q4})


@pytest.fixture(scope="module")
def demo(tmp_path_factory, smollm2_gguf, toolchain_bin, toolchain_stamp):
    """The demo model's F16 reference, a 2-chunk imatrix and calibration logits (2 × 128 tokens),
    and a measure record per menu type made through the CLI as the rule runs it."""
    from workflow_scripts.convert import gguf_to_reference
    from workflow_scripts.validate import measure_reference

    directory = tmp_path_factory.mktemp("sensitivity")
    reference, imatrix = directory / "F16.gguf", directory / "imatrix.gguf"
    gguf_to_reference([smollm2_gguf], reference)
    write_sidecar(reference)
    subprocess.run([str(toolchain_bin / "llama-imatrix"), "-m", str(reference), "-f", str(CALIBRATION), "-o", str(imatrix),
                    "--output-format", "gguf", "--chunks", "2", "-c", "128", "-t", "2", "--no-ppl"],
                   check=True, capture_output=True)
    logits = directory / "calibration.logits"
    measure_reference(toolchain_stamp, reference, CALIBRATION, 128, 2, 2, logits, directory / "logits.log", [])
    records = {}
    for menu_type in MENU:
        out = directory / "sensitivity" / f"{menu_type}.json"
        subprocess.run([sys.executable, "-m", "workflow_scripts.sensitivity", "measure", "--stamp", str(toolchain_stamp),
                        "--reference", str(reference), "--imatrix", str(imatrix), "--type", menu_type, "--threads", "2",
                        "--verify", str(reference), "--log", str(directory / f"{menu_type}.log"), "--out", str(out)],
                       check=True, cwd=ROOT)
        records[menu_type] = out
    return {"dir": directory, "reference": reference, "imatrix": imatrix, "logits": logits, "records": records,
            "stamp": toolchain_stamp}


@pytest.fixture(scope="module")
def q4_quant(demo):
    """gguf-py's reader of a quant made as the Q4_K record's was (its own llama-quantize run)."""
    from gguf import GGUFReader

    quant = demo["dir"] / "q4.gguf"
    subprocess.run([json.loads(demo["stamp"].read_text())["bin_dir"] + "/llama-quantize", "--pure", "--imatrix",
                    str(demo["imatrix"]), str(demo["reference"]), str(quant), "Q4_K_S", "2"],
                   check=True, capture_output=True)
    return GGUFReader(quant)


def _tensors(path: Path) -> dict:
    return json.loads(path.read_text())["tensors"]


@pytest.mark.toolchain
@pytest.mark.real_model
def test_records_rank_types_and_give_actual_types_and_bytes(demo, q4_quant):
    """On real tensors: every tensor's unweighted error falls as bits rise; so does the weighted error
    of the imatrix-aware Q4_K/Q3_K; 576-wide rows fall back (Q4_K → Q5_0, Q3_K → Q4_0) and the
    records say so, with each tensor's bytes as the GGUF stores them; nothing is left beside them."""
    records = {t: _tensors(demo["records"][t]) for t in MENU}
    names = set(records["Q8_0"])
    assert len(names) == 211 and all(set(r) == names for r in records.values())  # 272 less the 61 F32 norms
    for name in names:
        q8, q4, q3 = (records[t][name] for t in MENU)
        assert q8["se"] < q4["se"] < q3["se"], name
        assert q4["wse"] < q3["wse"], name
        wide = q8["shape"][0]
        assert (q4["type"], q3["type"]) == (("Q4_K", "Q3_K") if wide % 256 == 0 else ("Q5_0", "Q4_0")), name
        assert q8["type"] == "Q8_0"
    # Q8_0 ignores the imatrix: on ffn_down, whose input has a few huge-activation columns, an
    # imatrix-aware Q4_K can beat it on the weighted error. Over the model it does not.
    assert sum(records["Q8_0"][n]["wse"] for n in names) < sum(records["Q4_K"][n]["wse"] for n in names)
    assert sum(records["Q8_0"][n]["wse"] < records["Q4_K"][n]["wse"] for n in names) >= 0.95 * len(names)
    assert sum(r["type"] == "Q5_0" for r in records["Q4_K"].values()) == 181  # all but the 30 ffn_down (1536 wide)

    # exact bytes, checked against gguf-py's own reading of a quant made the same way
    stored = {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in q4_quant.tensors}
    assert {n: (r["type"], r["n_bytes"]) for n, r in records["Q4_K"].items()} == {n: stored[n] for n in names}
    left = sorted(p.name for p in (demo["dir"] / "sensitivity").iterdir())
    assert left == ["Q3_K.json", "Q4_K.json", "Q8_0.json"]  # no temporary quant, no sidecar
    record = json.loads(demo["records"]["Q4_K"].read_text())
    assert (record["menu_type"], record["ftype"], record["reference"]) == ("Q4_K", "Q4_K_S", "F16.gguf")


@pytest.mark.toolchain
@pytest.mark.real_model
def test_tensors_that_fall_back_to_a_menu_type_are_borrowed_not_quantized_again(demo, tmp_path):
    """With Q5_0 on the menu, the Q4_K record quantizes only the 30 ffn_down tensors (1536 wide) and
    borrows the 181 576-wide ones, which Q4_K gives Q5_0, from Q5_0's record: once completed it
    holds the entries of the Q4_K record measured without the menu (same types, bytes and errors),
    and llama-quantize kept the borrowed tensors in F16 (its log names the overrides)."""
    menu = [*MENU, "Q5_0"]
    records = {}
    for menu_type in ("Q5_0", "Q4_K"):
        out = tmp_path / f"{menu_type}.json"
        subprocess.run([sys.executable, "-m", "workflow_scripts.sensitivity", "measure", "--stamp", str(demo["stamp"]),
                        "--reference", str(demo["reference"]), "--imatrix", str(demo["imatrix"]), "--type", menu_type,
                        "--menu", *menu, "--threads", "2", "--log", str(tmp_path / f"{menu_type}.log"), "--out", str(out)],
                       check=True, cwd=ROOT)
        records[menu_type] = json.loads(out.read_text())
    q4 = records["Q4_K"]
    assert len(q4["tensors"]) == 30 and all(t["type"] == "Q4_K" for t in q4["tensors"].values())
    assert len(q4["borrowed"]) == 181 and set(q4["borrowed"].values()) == {"Q5_0"} and records["Q5_0"]["borrowed"] == {}
    assert (tmp_path / "Q4_K.log").read_text().count("applying manual override: q4_K -> f16") == 181
    whole = complete_records(records)["Q4_K"]["tensors"]
    alone = _tensors(demo["records"]["Q4_K"])
    assert whole.keys() == alone.keys()
    for name, entry in alone.items():
        assert (whole[name]["type"], whole[name]["n_bytes"]) == (entry["type"], entry["n_bytes"]), name
        assert whole[name]["wse"] == pytest.approx(entry["wse"], rel=1e-9), name
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".log") == ["Q4_K.json", "Q5_0.json"]


@pytest.mark.toolchain
@pytest.mark.real_model
def test_the_imatrix_weights_change_the_error(demo, q4_quant):
    """The weights matter: on most weighted tensors the relative weighted error differs from the
    unweighted one by more than 10 %; token_embd (no entry) is unweighted; and one tensor's weighted
    error, recomputed here from the files with gguf-py, matches."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    records = _tensors(demo["records"]["Q4_K"])
    weighted = [r for r in records.values() if r["weighted"]]
    assert len(weighted) == 210 and not records["token_embd.weight"]["weighted"]
    differ = sum(abs((r["wse"] / r["ref_wse"]) / (r["se"] / r["ref_se"]) - 1) > 0.1 for r in weighted)
    assert differ > len(weighted) / 2, differ
    assert records["token_embd.weight"]["wse"] == records["token_embd.weight"]["se"]

    name = "blk.3.attn_v.weight"

    def tensor(reader, wanted: str):
        return next(t for t in reader.tensors if t.name == wanted)

    imatrix, reference = GGUFReader(demo["imatrix"]), GGUFReader(demo["reference"])
    sums = tensor(imatrix, f"{name}.in_sum2").data.astype(np.float64).ravel()
    count = float(tensor(imatrix, f"{name}.counts").data.ravel()[0])
    got = dequantize(tensor(q4_quant, name).data, tensor(q4_quant, name).tensor_type).astype(np.float64)
    want = dequantize(tensor(reference, name).data, tensor(reference, name).tensor_type).astype(np.float64)
    assert records[name]["wse"] == pytest.approx(float((sums / count * (got - want) ** 2).sum()), rel=1e-9)


@pytest.mark.toolchain
@pytest.mark.real_model
def test_a_failing_measure_leaves_no_record_and_no_quant(demo, tmp_path):
    """llama-quantize succeeds but the imatrix entry cannot weigh its tensor (two counts for one
    matrix): one clear error, no record, and the temporary quant and its sidecar are gone."""
    from gguf import GGUFWriter

    from workflow_scripts.gguf_header import read_gguf_header

    source = read_gguf_header(demo["imatrix"])
    broken = tmp_path / "broken.imatrix.gguf"
    writer = GGUFWriter(str(broken), "llama")
    writer.add_string("general.type", "imatrix")
    writer.add_uint32("imatrix.chunk_count", 2)
    writer.add_uint32("imatrix.chunk_size", 128)
    writer.add_array("imatrix.datasets", ["calibration.txt"])
    for name, entry in source.tensors.items():
        values = np.concatenate(list(source.row_blocks(entry))).view(np.float32).ravel()
        if name == "blk.0.attn_q.weight.counts":
            values = np.array([values[0], values[0]], dtype=np.float32)
        writer.add_tensor(name, values)  # 1-D, as llama-imatrix writes an ordinary weight's entry
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = tmp_path / "out" / "Q8_0.json"
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.sensitivity", "measure", "--stamp", str(demo["stamp"]),
                           "--reference", str(demo["reference"]), "--imatrix", str(broken), "--type", "Q8_0",
                           "--threads", "2", "--log", str(tmp_path / "m.log"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "entry blk.0.attn_q.weight has 576 sums and 2 counts" in proc.stderr
    assert "llama_model_quantize_impl" in (tmp_path / "m.log").read_text()  # the quant was made
    assert list(out.parent.iterdir()) == []


@pytest.mark.toolchain
@pytest.mark.real_model
@pytest.mark.slow
def test_probes_measure_each_group_lowered_with_the_types_asked(demo, tmp_path):
    """Base and one probe per group (9 on the demo model), each quantized with its tensor-type file
    (its types checked in the file), measured on the calibration logits. Lowering every ffn_down to
    Q3_K raises the KLD well above base: a probe whose overrides were lost would measure base again."""
    out, log = tmp_path / "auto" / "probes.json", tmp_path / "logs" / "probes.log"
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.sensitivity", "probe", "--stamp", str(demo["stamp"]),
                           "--reference", str(demo["reference"]), "--imatrix", str(demo["imatrix"]),
                           *[arg for t in MENU for arg in ("--sensitivity", str(demo["records"][t]))],
                           "--logits", str(demo["logits"]), "--threads", "2", "--verify", str(demo["reference"]),
                           "--log", str(log), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    groups = {"token_embd", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
    assert set(result["groups"]) == groups and result["seconds"] > 0
    base = result["base"]
    assert set(base["tensors"].values()) == {"Q8_0"} and len(base["tensors"]) == 211
    records = {t: _tensors(demo["records"][t]) for t in MENU}
    for group, entry in result["groups"].items():
        lowered = {n: t for n, t in entry["tensors"].items() if t != "Q8_0"}
        assert lowered and all(re.sub(r"^blk\.\d+\.", "", n) == f"{group}.weight" for n in lowered), group
        assert all(t == records["Q3_K"][n]["type"] for n, t in lowered.items()), group  # the smallest option
        assert entry["n_bytes"] == sum(records["Q8_0"][n]["n_bytes"] for n in base["tensors"] if n not in lowered) \
            + sum(records["Q3_K"][n]["n_bytes"] for n in lowered)
        assert {"kld_mean", "kld_mean_error", "same_top_pct", "ppl_ratio"} <= set(entry), group
        # one progress line per probe and both of its logs kept; the probe's file had its types
        assert f"probe {list(result['groups']).index(group) + 2}/9 {group}:" in proc.stdout
        assert "applying manual override" in (log.parent / f"probes.{group}.quantize.log").read_text()
        assert re.search(r"Mean\s+KLD:", (log.parent / f"probes.{group}.kld.log").read_text()), group
    ffn_down = result["groups"]["ffn_down"]
    assert ffn_down["kld_mean"] > base["kld_mean"] + 3 * (ffn_down["kld_mean_error"] + base["kld_mean_error"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["probes.json"]  # no quant, no tensor-type file left
