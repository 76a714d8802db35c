"""Tokenizers without remote code: the official Phi-3-Vision files, or the tiny offline one shipped with the package.

The tiny tokenizer exists so that tests and the CPU demo need no download. It is a file (tiny_tokenizer.json, next to
this module) built by `phi3v_ray.demo.tiny_tokenizer` from the sample catalog's words; this module only reads it, so
the model layer does not depend on the data layer. It behaves like the official (Llama SentencePiece) tokenizer where
the processor depends on it (see the builder), with the same chat template, and its ids are fixed so that the tiny
model preset (vocab 1024, image token 8, pad 3) and every process agree on them.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from phi3v_ray.errors import ConfigError

TINY_TOKENIZER = "tiny"
TINY_VOCAB_SIZE = 1024
TINY_TOKENIZER_FILE = Path(__file__).with_name("tiny_tokenizer.json")

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


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """The shipped tiny tokenizer's JSON; cached because many Ray workers in one process ask for it."""
    if not TINY_TOKENIZER_FILE.is_file():
        raise ConfigError(
            f"{TINY_TOKENIZER_FILE} is missing from the installed package; rebuild it with "
            "`python -m phi3v_ray.demo.tiny_tokenizer`"
        )
    return TINY_TOKENIZER_FILE.read_text(encoding="utf-8")


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


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The offline tokenizer for the tiny preset (ids fixed: `<unk>`=0 … `<|image|>`=8, ≤1024 tokens); a new object."""
    return _wrap(Tokenizer.from_str(_tiny_tokenizer_json()))


def load_tokenizer(path: str | Path | None) -> PreTrainedTokenizerFast:
    """`None` or "tiny" → the tiny tokenizer; a directory with tokenizer.json → that tokenizer, never remote code."""
    if path is None or str(path) == TINY_TOKENIZER:
        return tiny_tokenizer()
    directory = Path(path)
    if not (directory / "tokenizer.json").is_file():
        raise ConfigError(
            f"tokenizer path {directory}: no tokenizer.json found; expected a directory holding tokenizer.json "
            f"(+ tokenizer_config.json) or {TINY_TOKENIZER!r}"
        )
    # Loading the class directly (not AutoTokenizer) never consults config.json's auto_map / remote code.
    return PreTrainedTokenizerFast.from_pretrained(str(directory))
