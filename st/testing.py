"""Randomly initialised LMs of any size, built with transformers from a config (no download), for
tests, benchmarks and the GPU script. They share a real tokenizer, so they read real text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Llama-architecture shapes. "1b" is the Llama-3.2-1B configuration.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        rope_theta=500000.0,
    ),
}


def random_llama(
    folder: Path,
    tokenizer_folder: Path,
    shape: str = "tiny",
    std: float | None = 0.2,
    seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Save a random Llama with `tokenizer_folder`'s tokenizer in `folder`. `std` widens the init
    of the tiny shape so that documents differ visibly; None keeps transformers' own init."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **SHAPES[shape],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    if std is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0, std)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def random_sentence_embedder(folder: Path, words: list[str], size: int = 32, seed: int = 0) -> Path:
    """Save a random 2-layer BERT with mean pooling as a sentence-transformers folder in `folder`,
    its word-piece vocabulary `words` (plus the special tokens): a stand-in for MiniLM in tests."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.models import Pooling, Transformer  # type: ignore[no-redef]

    bert = folder / "bert"
    bert.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(w.lower() for w in words)]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (bert / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')
    tokenizer = AutoTokenizer.from_pretrained(str(bert))
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * size,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    transformer = Transformer(str(bert), max_seq_length=128)
    pooling = Pooling(size, pooling_mode="mean")
    out = folder / "embedder"
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(out))
    return out
