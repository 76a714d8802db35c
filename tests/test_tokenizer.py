"""The tiny offline tokenizer behaves like the official Phi-3 tokenizer where the processor depends on it, and the
file the package ships is exactly what its builder (phi3v_ray.demo.tiny_tokenizer) makes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from phi3v_ray.data.vocabulary import corpus_lines
from phi3v_ray.errors import ConfigError
from phi3v_ray.model.tokenizer import (
    CHAT_TEMPLATE,
    TINY_TOKENIZER,
    TINY_TOKENIZER_FILE,
    load_tokenizer,
    tiny_tokenizer,
)

FIXED_IDS = {
    "<unk>": 0,
    "<s>": 1,
    "</s>": 2,
    "<|endoftext|>": 3,
    "<|assistant|>": 4,
    "<|system|>": 5,
    "<|end|>": 6,
    "<|user|>": 7,
    "<|image|>": 8,
}


def _fingerprint() -> str:
    return hashlib.sha256(tiny_tokenizer().backend_tokenizer.to_str().encode()).hexdigest()


def test_special_tokens_have_the_fixed_ids_and_roles():
    tokenizer = tiny_tokenizer()
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in FIXED_IDS} == FIXED_IDS
    assert (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.unk_token_id,
    ) == (
        1,
        3,
        3,
        0,
    )


def test_vocabulary_fits_the_tiny_preset():
    assert len(tiny_tokenizer()) <= 1024


@pytest.mark.parametrize(
    "text",
    [
        "Product: Heritage Trench Coat, Category: TRENCH COATS, Full Price: 2290.0",
        "  leading spaces, double  spaces and trailing ",
        "Ünïcode ✓ 日本語 émoji 🧥\ttab\nnew line\n\nblank line",
        "unseen words: zyxwvut qqq {braces} [brackets] ~tilde~ 0123456789",
    ],
)
def test_any_text_round_trips_losslessly(text):
    tokenizer = tiny_tokenizer()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_bos_is_added_by_every_call():
    tokenizer = tiny_tokenizer()
    assert tokenizer("Coat")["input_ids"][0] == 1
    assert tokenizer("\nCoat")["input_ids"][:1] == [1]
    assert tokenizer("Coat", add_special_tokens=False)["input_ids"][0] != 1


def test_digits_are_split_one_per_token():
    tokenizer = tiny_tokenizer()
    tokens = tokenizer.convert_ids_to_tokens(
        tokenizer("Price: 2290.0", add_special_tokens=False)["input_ids"]
    )
    assert tokens[-6:] == ["2", "2", "9", "0", ".", "0"]


def test_catalog_words_are_single_tokens():
    tokenizer = tiny_tokenizer()
    words = {word for line in corpus_lines() for word in line.split() if not word[0].isdigit()}
    too_long = {w for w in words if len(tokenizer(w, add_special_tokens=False)["input_ids"]) != 1}
    assert too_long == set()


def test_newline_after_assistant_is_stripped_like_the_official_tokenizer():
    tokenizer = tiny_tokenizer()
    ids = tokenizer("<|user|>\n<|end|>\n<|assistant|>\nProduct:", add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    # "<|user|>" and "<|end|>" keep their "\n" (as "▁", "<0x0A>"); "<|assistant|>" swallows it.
    assert tokens == ["<|user|>", "▁", "<0x0A>", "<|end|>", "▁", "<0x0A>", "<|assistant|>", "▁Product:"]


def test_image_and_eos_tokens_strip_whitespace_to_their_right():
    tokenizer = tiny_tokenizer()
    assert tokenizer("<|image|>\n Coat</s>\n", add_special_tokens=False)["input_ids"] == [
        8,
        tokenizer.convert_tokens_to_ids("▁Coat"),
        2,
    ]


def test_a_rebuild_in_a_fresh_process_equals_the_shipped_file():
    # The shipped tiny_tokenizer.json is what the builder makes (a fresh process: no state shared with this one), so
    # the file can always be regenerated and a tokenizers upgrade that changes training shows up here.
    code = "from phi3v_ray.demo.tiny_tokenizer import build_tiny_tokenizer_json; print(build_tiny_tokenizer_json(), end='')"
    rebuilt = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert rebuilt == TINY_TOKENIZER_FILE.read_text(encoding="utf-8")


def test_loading_is_identical_in_a_fresh_process():
    code = (
        "import hashlib; from phi3v_ray.model.tokenizer import tiny_tokenizer;"
        "print(hashlib.sha256(tiny_tokenizer().backend_tokenizer.to_str().encode()).hexdigest())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert other == _fingerprint()


def test_chat_template_matches_the_official_one(official_files):
    official = json.loads((official_files / "tokenizer_config.json").read_text())["chat_template"]
    assert official == CHAT_TEMPLATE
    assert tiny_tokenizer().chat_template == official


def test_load_tokenizer_gives_tiny_for_none_and_sentinel():
    assert load_tokenizer(None).convert_tokens_to_ids("<|image|>") == 8
    assert len(load_tokenizer(TINY_TOKENIZER)) == len(tiny_tokenizer())


def test_load_tokenizer_reads_official_files_without_remote_code(official_files):
    tokenizer = load_tokenizer(official_files)
    assert tokenizer("<|user|>\n")["input_ids"] == [1, 32010, 29871, 13]
    assert tokenizer.convert_tokens_to_ids(["<|assistant|>", "<|end|>", "<|image|>"]) == [32001, 32007, 32044]


def test_load_tokenizer_rejects_a_directory_without_tokenizer_json(tmp_path):
    with pytest.raises(ConfigError, match=r"no tokenizer\.json found"):
        load_tokenizer(tmp_path)
