"""GGUF source files: the header scan refuses what is not a GGUF or is cut short."""

import pytest

from tests.stub_sources import small_gguf
from workflow_scripts.errors import UserError
from workflow_scripts.gguf_header import StringArray, read_gguf_header


def test_not_a_gguf_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(UserError, match=r"model.gguf: not a GGUF file"):
        read_gguf_header(bad)
    with pytest.raises(UserError, match=r"absent.gguf: GGUF file does not exist"):
        read_gguf_header(tmp_path / "absent.gguf")


def test_header_scan_finds_where_the_data_ends_as_gguf_py_does(tmp_path, smollm2_gguf):
    from gguf import GGUFReader

    small = small_gguf(tmp_path / "small.gguf")
    assert read_gguf_header(small).data_end == max(t.data_offset + t.n_bytes for t in GGUFReader(small).tensors)
    # 49k-token tokenizer arrays stepped over
    assert read_gguf_header(smollm2_gguf).data_end == smollm2_gguf.stat().st_size


def test_header_reads_what_gguf_py_reads(smollm2_gguf):
    """Metadata, tensor names, types, shapes, offsets and data, against gguf-py's own reader."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    header, reader = read_gguf_header(smollm2_gguf), GGUFReader(smollm2_gguf)
    fields = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    assert set(header.metadata) == set(fields)
    for key, value in fields.items():
        got = header.metadata[key]
        if isinstance(got, StringArray):
            assert len(got) == len(value) == (49152 if key == "tokenizer.ggml.tokens" else len(value))
            assert header.strings(key) == value  # decoded on demand, string for string
        else:
            assert got == pytest.approx(value), key
    assert header.metadata["general.architecture"] == "llama"
    assert list(header.tensors) == [t.name for t in reader.tensors]
    for tensor in reader.tensors:
        entry = header.tensors[tensor.name]
        assert (entry.type, entry.shape, entry.offset, entry.n_bytes, entry.n_elements) == (
            tensor.tensor_type, tuple(int(d) for d in tensor.shape), tensor.data_offset, tensor.n_bytes,
            tensor.n_elements)
    # Each key/value's bytes as the file holds them (what convert copies), against gguf-py's parts.
    raw = header.raw_metadata()
    assert list(raw) == list(fields)
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            assert raw[key] == b"".join(part.tobytes() for part in field.parts), key
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight"):
        entry = header.tensors[name]
        tensor = next(t for t in reader.tensors if t.name == name)
        rows = np.concatenate(list(header.row_blocks(entry, max_elements=1 << 16)))
        assert rows.shape[0] == entry.n_elements // entry.shape[0]
        assert np.array_equal(dequantize(rows, entry.type).ravel(), dequantize(tensor.data, tensor.tensor_type).ravel())


@pytest.mark.parametrize("keep", [0.95, 0.3])  # cut in the tensor data / cut in the header
def test_truncated_gguf_is_refused_naming_the_file(tmp_path, keep):
    full = small_gguf(tmp_path / "full.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full[: int(len(full) * keep)])
    with pytest.raises(UserError, match=r"cut.gguf: (damaged or )?truncated GGUF"):
        read_gguf_header(cut)
    read_gguf_header(tmp_path / "full.gguf")
