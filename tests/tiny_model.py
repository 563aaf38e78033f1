"""A tiny real HF-format Llama made at test time: random weights, a sentencepiece BPE tokenizer.

Small enough to convert and quantize in seconds, real enough that convert_hf_to_gguf.py, the HF
tokenizer and llama.cpp all treat it as they would a published Llama checkpoint.
"""

from __future__ import annotations

import io
from pathlib import Path

VOCAB = 512


def train_tokenizer(corpus: str, dest: Path) -> Path:
    """Train a deterministic sentencepiece BPE model on ``corpus``; return tokenizer.model."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in corpus.splitlines() if line.strip()]),
        model_writer=model, model_type="bpe", vocab_size=VOCAB, byte_fallback=True, split_digits=True,
        character_coverage=1.0, num_threads=1, shuffle_input_sentence=False, seed_sentencepiece_size=100000,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2, add_dummy_prefix=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
    )
    path = dest / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


def make_tiny_llama(dest: Path, corpus: str, seed: int = 0, shape: dict | None = None, dtype: str = "float32",
                    max_shard_size: str | None = None) -> Path:
    """Write config.json, model.safetensors and the tokenizer files of a 2-layer Llama into ``dest``;
    ``shape`` overrides its sizes (benchmarks/gpu_measure.py makes a 1B one), ``dtype`` the weights'
    (``bfloat16``: BF16 weights); ``max_shard_size`` (e.g. ``"100KB"``) saves the weights as
    ``model-0000k-of-0000n.safetensors`` shards with ``model.safetensors.index.json``, as large
    checkpoints come."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    spm_path = train_tokenizer(corpus, dest)
    tokenizer = LlamaTokenizer(vocab_file=str(spm_path), legacy=True, add_bos_token=True, add_eos_token=False)
    tokenizer.save_pretrained(dest)
    torch.manual_seed(seed)
    sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 512, **(shape or {})}
    config = LlamaConfig(vocab_size=VOCAB, **sizes, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                         torch_dtype=dtype)
    shards = {"max_shard_size": max_shard_size} if max_shard_size else {}
    LlamaForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(dest, safe_serialization=True, **shards)
    return dest
