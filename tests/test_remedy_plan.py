"""A remedy's planned tensor types (llama-quantize --dry-run) against the build before it: parsed from
the tool's real output, and on the tiny model (64-wide rows: every K-quant falls back to a
32-value-block type) a remedy whose raises had already happened is found to change nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from workflow_scripts.errors import UserError
from workflow_scripts.gguf_census import read_tensor_types
from workflow_scripts.remedy_plan import compare, main, parse_dry_run, previous_types

DRY_RUN = """\
llama_model_quantize_impl: model size  =   256.63 MiB (16.00 BPW)
warning: blk.0.attn_k.weight                  - ncols    576 not divisible by 256 (required for type  iq4_xs) -> falling back to  iq4_nl
[   2/ 272] token_embd.weight                    - [   576,  49152,      1,      1], type =    f16, size =    54.00 MiB ->    28.69 MiB (q8_0)
[   3/ 272] blk.0.attn_k.weight                  - [   576,    192,      1,      1], type =    f16, size =     0.21 MiB ->     0.06 MiB (iq4_nl)
[   4/ 272] blk.0.attn_norm.weight               - [   576,      1,      1,      1], type =    f32, size =    0.002 MiB
[ 241/ 272] blk.26.ffn_down.weight               - [  1536,    576,      1,      1], type =    f16, size =     1.69 MiB ->     0.69 MiB (q6_K)
llama_model_quantize_impl: quant size  =    99.50 MiB (6.20 BPW)
"""


def test_the_dry_run_gives_each_tensors_type_as_the_census_names_it():
    assert parse_dry_run(DRY_RUN) == {"token_embd.weight": "Q8_0", "blk.0.attn_k.weight": "IQ4_NL",
                                      "blk.0.attn_norm.weight": "F32", "blk.26.ffn_down.weight": "Q6_K"}


def test_changes_are_per_tensor_and_both_sides_must_name_the_same_tensors():
    assert compare({"a": "Q8_0", "b": "Q5_0"}, {"a": "Q5_0", "b": "Q5_0"}) == {"a": ["Q5_0", "Q8_0"]}
    assert compare({"a": "Q8_0"}, {"a": "Q8_0"}) == {}
    with pytest.raises(UserError, match=r"names other tensors than the build before it \(b\)"):
        compare({"a": "Q8_0", "b": "F32"}, {"a": "Q8_0"})


def test_the_previous_types_come_from_a_census_or_a_plan(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"tensor_types": {"a": "Q4_K"}}))
    (tmp_path / "p.json").write_text(json.dumps({"types": {"a": "Q8_0"}}))
    assert previous_types(tmp_path / "c.json") == {"a": "Q4_K"} and previous_types(tmp_path / "p.json") == {"a": "Q8_0"}
    (tmp_path / "cut.json").write_text('{"tensor_types": {"a": ')
    with pytest.raises(UserError, match=r"cut.json: cannot read the previous build's tensor types"):
        previous_types(tmp_path / "cut.json")
    with pytest.raises(UserError, match=r"c.json: cannot read"):
        previous_types(tmp_path / "missing" / "c.json")
    (tmp_path / "other.json").write_text(json.dumps({"quant": "Q4_K_M"}))
    with pytest.raises(UserError, match=r"other.json: expected a census with 'tensor_types' or a remedy plan"):
        previous_types(tmp_path / "other.json")


def _types_of(toolchain_bin: Path, reference: Path, ftype: str, out: Path, *args: str) -> Path:
    """The census-like types of a real quantization of ``reference``."""
    gguf = out.with_suffix(".gguf")
    subprocess.run([str(toolchain_bin / "llama-quantize"), *args, str(reference), str(gguf), ftype, "2"],
                   check=True, capture_output=True)
    out.write_text(json.dumps({"tensor_types": {n: i.type for n, i in read_tensor_types(gguf).items()}}))
    return out


@pytest.mark.toolchain
def test_a_remedy_whose_raises_already_happened_changes_nothing(tiny_f16, toolchain_bin, toolchain_stamp, tmp_path):
    """Q6_K of 64-wide rows is Q8_0 throughout (row fallback), so raising attn_v, the output and the
    embedding to Q8_0 changes nothing; over Q4_K_M (Q5_0 by fallback, Q8_0 where it wanted Q6_K) the
    same raise changes exactly the attn_v tensors that were not Q8_0 yet. Nothing is written."""
    raise_args = ["--tensor-type", "attn_v=q8_0", "--output-tensor-type", "q8_0", "--token-embedding-type", "q8_0"]
    q6k = _types_of(toolchain_bin, tiny_f16, "Q6_K", tmp_path / "q6k.json")
    plan = tmp_path / "Q6_K-sensitive.plan.json"
    main(["--stamp", str(toolchain_stamp), "--name", "Q6_K-sensitive", "--previous", str(q6k),
          "--build-json", json.dumps({"argv": [*raise_args, str(tiny_f16), "{out}", "Q6_K"]}),
          "--log", str(tmp_path / "q6k.log"), "--out", str(plan)])
    result = json.loads(plan.read_text())
    assert result["unchanged"] and result["changed"] == {} and set(result["types"].values()) == {"Q8_0", "F32"}
    assert "changes no tensor's type against q6k.json" in (tmp_path / "q6k.log").read_text()
    assert sorted(p.name for p in tmp_path.glob("*.gguf")) == ["q6k.gguf"]  # the dry run wrote no file

    q4 = _types_of(toolchain_bin, tiny_f16, "Q4_K_M", tmp_path / "q4.json")
    before = previous_types(q4)
    plan = tmp_path / "Q4_K_M-sensitive.plan.json"
    main(["--stamp", str(toolchain_stamp), "--name", "Q4_K_M-sensitive", "--previous", str(q4),
          "--build-json", json.dumps({"argv": [*raise_args, str(tiny_f16), "{out}", "Q4_K_M"]}),
          "--log", str(tmp_path / "q4.log"), "--out", str(plan)])
    result = json.loads(plan.read_text())
    wanted = {n: [t, "Q8_0"] for n, t in before.items()
              if t != "Q8_0" and (".attn_v." in n or n in ("output.weight", "token_embd.weight"))}
    assert wanted and result["changed"] == wanted and not result["unchanged"]
    assert _types_of(toolchain_bin, tiny_f16, "Q4_K_M", tmp_path / "made.json", *raise_args).read_text() == \
        json.dumps({"tensor_types": result["types"]})  # the plan is what llama-quantize then makes
