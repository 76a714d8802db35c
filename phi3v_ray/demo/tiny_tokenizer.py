"""Builds the tiny tokenizer file that `phi3v_ray.model.tokenizer` ships and loads (`python -m` this to rebuild).

The tiny tokenizer is demo and test scaffolding, trained on the sample catalog's word list. Training it here (and
shipping the result as package data) keeps the model layer free of the data layer: `model.tokenizer` only reads
`tiny_tokenizer.json`, and a test checks that a rebuild here reproduces that file byte for byte.

What it copies from the official (Llama SentencePiece) tokenizer, because the processor depends on it: a "▁"
prepended to every text segment, spaces written as "▁", byte fallback (so any text round-trips), digits split one
per token, `<s>` added by every call, and the Phi-3 chat special tokens with the same right-stripping.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from phi3v_ray.data.vocabulary import corpus_lines
from phi3v_ray.model.tokenizer import TINY_SPECIAL_TOKENS, TINY_TOKENIZER_FILE, TINY_VOCAB_SIZE

_BYTE_TOKENS: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))
# Printable ASCII is always a single token, so ordinary text never needs byte fallback.
_ASCII_ALPHABET: tuple[str, ...] = tuple(chr(c) for c in range(33, 127)) + ("▁",)


def _llama_like_pipeline(tokenizer: Tokenizer) -> None:
    """Install the SentencePiece-style normalizer, digit splitting, `<s>` post-processor and decoder."""
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # Words start at "▁" (kept on the word that follows), so merges never cross a word boundary.
            pre_tokenizers.Split(Regex("▁"), behavior="merged_with_next"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )


def _learned_pieces() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train BPE on the catalog vocabulary; return its pieces and merges (ids assigned later, in a fixed order)."""
    trainer_tokenizer = Tokenizer(BPE(unk_token="<unk>"))
    _llama_like_pipeline(trainer_tokenizer)
    budget = TINY_VOCAB_SIZE - len(TINY_SPECIAL_TOKENS) - len(_BYTE_TOKENS)
    trainer = BpeTrainer(
        vocab_size=budget, min_frequency=1, initial_alphabet=list(_ASCII_ALPHABET), show_progress=False
    )
    lines = corpus_lines()
    # Each line also as one "word per line" pass, so every catalog word gets a whole-word token.
    words = sorted({word for line in lines for word in line.split()})
    trainer_tokenizer.train_from_iterator(lines + words, trainer=trainer)
    learned = json.loads(trainer_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    return learned["vocab"], merges  # type: ignore[return-value]


def build_tiny_tokenizer_json() -> str:
    """The tiny tokenizer serialised (pretty JSON, ids fixed: `<unk>`=0 … `<|image|>`=8, ≤1024 tokens)."""
    learned_vocab, merges = _learned_pieces()
    vocab: dict[str, int] = {content: idx for idx, (content, _, _) in enumerate(TINY_SPECIAL_TOKENS)}
    for piece in _BYTE_TOKENS:
        vocab[piece] = len(vocab)
    # Learned pieces in their trained id order (deterministic: BPE training breaks ties by pair ids).
    for piece, _ in sorted(learned_vocab.items(), key=lambda item: item[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    if len(vocab) > TINY_VOCAB_SIZE:
        raise RuntimeError(f"tiny tokenizer has {len(vocab)} tokens, more than {TINY_VOCAB_SIZE}")
    tokenizer = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    _llama_like_pipeline(tokenizer)
    tokenizer.add_special_tokens(
        [
            AddedToken(content, rstrip=rstrip, lstrip=False, normalized=False, special=special)
            for content, rstrip, special in TINY_SPECIAL_TOKENS
        ]
    )
    return tokenizer.to_str(pretty=True) + "\n"


def write_tiny_tokenizer(path: str | Path = TINY_TOKENIZER_FILE) -> Path:
    """Rebuild the tokenizer file (by default the one shipped in the package); returns where it was written."""
    target = Path(path)
    target.write_text(build_tiny_tokenizer_json(), encoding="utf-8")
    return target


if __name__ == "__main__":
    print(f"wrote {write_tiny_tokenizer()}")
