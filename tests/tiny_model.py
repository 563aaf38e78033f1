"""A tiny real HF-format Llama (or Mixtral, a mixture of experts) made at test time: random
weights, a sentencepiece BPE tokenizer.

Small enough to convert and quantize in seconds, real enough that convert_hf_to_gguf.py, the HF
tokenizer and llama.cpp all treat it as they would a published Llama (Mixtral) checkpoint.
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


def save_tokenizer(corpus: str, dest: Path) -> None:
    """The sentencepiece tokenizer trained on ``corpus``, saved into ``dest`` as a Llama tokenizer."""
    from transformers import LlamaTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    spm_path = train_tokenizer(corpus, dest)
    tokenizer = LlamaTokenizer(vocab_file=str(spm_path), legacy=True, add_bos_token=True, add_eos_token=False)
    tokenizer.save_pretrained(dest)


TINY_SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 512}
"""The tiny models' sizes (``shape`` overrides them)."""


def make_tiny_llama(dest: Path, corpus: str, seed: int = 0, shape: dict | None = None, dtype: str = "float32",
                    max_shard_size: str | None = None) -> Path:
    """Write config.json, model.safetensors and the tokenizer files of a 2-layer Llama into ``dest``;
    ``shape`` overrides its sizes (benchmarks/gpu_measure.py makes a 1B one), ``dtype`` the weights'
    (``bfloat16``: BF16 weights); ``max_shard_size`` (e.g. ``"100KB"``) saves the weights as
    ``model-0000k-of-0000n.safetensors`` shards with ``model.safetensors.index.json``, as large
    checkpoints come."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    save_tokenizer(corpus, dest)
    torch.manual_seed(seed)
    sizes = {**TINY_SIZES, **(shape or {})}
    config = LlamaConfig(vocab_size=VOCAB, **sizes, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                         torch_dtype=dtype)
    shards = {"max_shard_size": max_shard_size} if max_shard_size else {}
    LlamaForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(dest, safe_serialization=True, **shards)
    return dest


def make_tiny_mixtral(dest: Path, corpus: str, seed: int = 0, experts: int = 8, experts_used: int = 2,
                      dead_experts: int = 2, shape: dict | None = None) -> Path:
    """A 2-layer Mixtral (``experts`` experts per layer, top-``experts_used`` routing, hidden 64;
    ``shape`` overrides its sizes: benchmarks/cost_scale.py makes a larger one) with
    the tiny Llama's tokenizer, in HF format: convert_hf_to_gguf.py takes it as it takes
    Mixtral-8x7B (arch ``llama`` with ``ffn_*_exps`` expert tensors). The last ``dead_experts`` experts
    of every layer are never routed to, whatever the text, as an expert a calibration text never
    reaches: hidden dimension 0 is a positive constant in every residual stream (set in the token
    embeddings, zeroed in every attention and expert output), and the router reads dimension 0 alone
    for those experts, with a large negative weight (and not at all for the others)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    save_tokenizer(corpus, dest)
    torch.manual_seed(seed)
    sizes = {**TINY_SIZES, **(shape or {})}
    config = MixtralConfig(vocab_size=VOCAB, **sizes, num_local_experts=experts, num_experts_per_tok=experts_used,
                           bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, torch_dtype="float32")
    model = MixtralForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            for expert in layer.block_sparse_moe.experts:
                expert.w2.weight[0, :] = 0.0
            router = layer.block_sparse_moe.gate.weight
            router[:, 0] = 0.0
            router[experts - dead_experts:, :] = 0.0
            router[experts - dead_experts:, 0] = -50.0
    model.save_pretrained(dest, safe_serialization=True)
    return dest
