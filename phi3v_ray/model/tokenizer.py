"""Tokenizers without remote code: the official Phi-3-Vision files, or a tiny offline one with the same specials.

The tiny tokenizer exists so that tests and the CPU demo need no download. It copies what matters to the processor
from the official (Llama SentencePiece) tokenizer: a "▁" prepended to every text segment, spaces written as "▁",
byte fallback (so any text round-trips), digits split one per token, `<s>` added by every call, the Phi-3 chat
special tokens with the same right-stripping, and the same chat template. Its ids are fixed so that the tiny model
preset (vocab 1024, image token 8, pad 3) and every process agree on them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import PreTrainedTokenizerFast

from phi3v_ray.data.vocabulary import corpus_lines
from phi3v_ray.errors import ConfigError

TINY_TOKENIZER = "tiny"
TINY_VOCAB_SIZE = 1024

# (content, rstrip, special) in id order 0..8; the flags copy the official tokenizer_config.json
# (`</s>` is not "special" there, `<|assistant|>`, `<|image|>` and `</s>` eat whitespace on their right).
TINY_SPECIAL_TOKENS: tuple[tuple[str, bool, bool], ...] = (
    ("<unk>", False, True),
    ("<s>", False, True),
    ("</s>", True, False),
    ("<|endoftext|>", False, True),
    ("<|assistant|>", True, True),
    ("<|system|>", False, True),
    ("<|end|>", False, True),
    ("<|user|>", False, True),
    ("<|image|>", True, True),
)

# The official chat template, verbatim from Phi-3-vision-128k-instruct's tokenizer_config.json.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{{- '<|assistant|>\n' -}}{% endif %}"
)

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


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """The serialised tiny tokenizer; cached because many Ray workers in one process ask for it."""
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
    return tokenizer.to_str()


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a `tokenizers.Tokenizer` with the official special-token roles and chat template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|system|>", "<|end|>", "<|user|>"],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        padding_side="right",
        model_max_length=131072,
    )


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The deterministic offline tokenizer for the tiny preset (ids fixed: `<unk>`=0 … `<|image|>`=8, ≤1024 tokens)."""
    return _wrap(Tokenizer.from_str(_tiny_tokenizer_json()))


def load_tokenizer(path: str | Path | None) -> PreTrainedTokenizerFast:
    """`None` or "tiny" → the tiny tokenizer; a directory with tokenizer.json → that tokenizer, never remote code."""
    if path is None or str(path) == TINY_TOKENIZER:
        return build_tiny_tokenizer()
    directory = Path(path)
    if not (directory / "tokenizer.json").is_file():
        raise ConfigError(
            f"tokenizer path {directory}: no tokenizer.json found; expected a directory holding tokenizer.json "
            f"(+ tokenizer_config.json) or {TINY_TOKENIZER!r}"
        )
    # Loading the class directly (not AutoTokenizer) never consults config.json's auto_map / remote code.
    return PreTrainedTokenizerFast.from_pretrained(str(directory))
