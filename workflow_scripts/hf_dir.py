"""HF-format model directories: which files a conversion uses, and header-only checks that the
directory is complete (config.json, weights, every shard an index names, safetensors lengths).
"""

from __future__ import annotations

import json
from pathlib import Path

from workflow_scripts.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library refuses longer headers too


def check_hf_dir(path: Path | str, allow_pickle: bool = False) -> list[Path]:
    """The files of an HF-format directory that a conversion uses, after checking it is complete.

    Pickle weights (``*.bin``/``*.pt``) run code when loaded, so they count only with
    ``allow_pickle``; they are left out of the list otherwise.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: model directory does not exist; expected an HF-format model directory")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; expected an HF-format model directory")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if not safetensors:
        if not pickles:
            raise UserError(f"{path}: no weights; expected *.safetensors files")
        if not allow_pickle:
            raise UserError(f"{path}: only pickle weights ({pickles[0].name}); unpickling runs code, so they are "
                            "refused unless the source sets allow_pickle: true")
    for index in sorted(path.glob("*.index.json")):
        if index.name.startswith("pytorch_model") and not allow_pickle:
            continue  # names pickle shards that are not used
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (json.JSONDecodeError, AttributeError):
            raise UserError(f"{index}: not a valid index; expected JSON with a 'weight_map' object") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise UserError(f"{index}: names shard {missing[0]} which is missing from {path}")
    return [p for p in files if p not in pickles or allow_pickle]


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header is damaged or whose size is not what the header
    says (8-byte length, JSON header, then the tensors' data ranges); reads the header only."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else None
        if length is None or length > SAFETENSORS_MAX_HEADER or 8 + length > size:
            raise UserError(f"{path}: damaged safetensors header (its length field says {length} bytes, the file has "
                            f"{size}); expected an 8-byte length followed by a JSON header of at most "
                            f"{SAFETENSORS_MAX_HEADER} bytes")
        try:
            header = json.loads(handle.read(length))
            end = max((int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"),
                      default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            raise UserError(f"{path}: damaged safetensors header ({type(err).__name__}: {err}); expected a JSON "
                            "object with the data_offsets of every tensor") from None
    expected = 8 + length + end
    if size != expected:
        cut = "truncated" if size < expected else "longer than its header says"
        raise UserError(f"{path}: {cut}: the header says the data ends at byte {expected}, the file has {size} "
                        "bytes; expected the complete file (download or copy it again)")


def architecture_named(hparams: dict) -> bool:
    """Whether an HF config names the architecture convert_hf_to_gguf.py picks its converter by: a
    non-empty ``architectures`` list (at the top or in ``text_config``), or a non-HF Mamba's ``ssm_cfg``."""
    def named(config) -> bool:
        arches = config.get("architectures") if isinstance(config, dict) else None
        return isinstance(arches, list) and bool(arches) and all(isinstance(a, str) and a for a in arches)

    return named(hparams) or named(hparams.get("text_config")) or isinstance(hparams.get("ssm_cfg"), dict)


def check_hf_source(path: Path | str, allow_pickle: bool = False) -> list[Path]:
    """check_hf_dir, plus what can be told from headers: config.json parses and every safetensors
    file is as long as its header says. Cheap enough to run when the workflow is planned."""
    files = check_hf_dir(path, allow_pickle)
    config = Path(path) / "config.json"
    try:
        hparams = json.loads(config.read_bytes())
        if not isinstance(hparams, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        raise UserError(f"{config}: not valid JSON ({err}); expected the model's HF config, a JSON object") from None
    if not architecture_named(hparams):
        raise UserError(f"{config}: no architectures; expected the model class the checkpoint was saved as, e.g. "
                        '"architectures": ["LlamaForCausalLM"] (transformers writes it; convert_hf_to_gguf.py '
                        "chooses its converter by it)")
    for weights in files:
        if weights.suffix == ".safetensors":
            check_safetensors(weights)
    return files
