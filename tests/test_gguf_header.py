"""GGUF source files: the header scan refuses what is not a GGUF or is cut short."""

import pytest

from tests.stub_sources import small_gguf
from workflow_scripts.errors import UserError
from workflow_scripts.gguf_header import check_gguf_file, gguf_data_end


def test_not_a_gguf_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(UserError, match=r"model.gguf: not a GGUF file"):
        check_gguf_file(bad)
    with pytest.raises(UserError, match=r"absent.gguf: GGUF file does not exist"):
        check_gguf_file(tmp_path / "absent.gguf")


def test_header_scan_finds_where_the_data_ends_as_gguf_py_does(tmp_path, smollm2_gguf):
    from gguf import GGUFReader

    small = small_gguf(tmp_path / "small.gguf")
    assert gguf_data_end(small) == max(t.data_offset + t.n_bytes for t in GGUFReader(small).tensors)
    assert gguf_data_end(smollm2_gguf) == smollm2_gguf.stat().st_size  # 49k-token tokenizer arrays stepped over


@pytest.mark.parametrize("keep", [0.95, 0.3])  # cut in the tensor data / cut in the header
def test_truncated_gguf_is_refused_naming_the_file(tmp_path, keep):
    full = small_gguf(tmp_path / "full.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[: int(len(full) * keep)])
    with pytest.raises(UserError, match=r"cut.gguf: (damaged or )?truncated GGUF"):
        check_gguf_file(cut)
    check_gguf_file(tmp_path / "full.gguf")
