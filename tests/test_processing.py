"""The processor reproduces the official Phi-3-Vision numbers: token counts, HD canvas, token sequence, labels."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from phi3v_ray.errors import ConfigError, DataError
from phi3v_ray.model.geometry import hd_canvas_size, num_image_tokens
from phi3v_ray.model.processing import (
    IGNORE_INDEX,
    Phi3VProcessor,
    group_by_grid,
    hd_canvas,
    padding_share,
)
from phi3v_ray.model.tokenizer import load_tokenizer, tiny_tokenizer

ANSWER = "Product: Heritage Trench Coat, Category: TRENCH COATS, Full Price: 2290.0"


def _noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A non-white image, so padding and content can be told apart."""
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 200, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode=mode)


@pytest.fixture(scope="module")
def tiny() -> Phi3VProcessor:
    return Phi3VProcessor(tiny_tokenizer(), num_crops=16)


@pytest.fixture(scope="module")
def official(official_files) -> Phi3VProcessor:
    return Phi3VProcessor(load_tokenizer(official_files), num_crops=16)


TOKEN_COUNTS = [
    (672, 672, 4, 757),  # 2×2 grid
    (1280, 960, 16, 1921),
    (500, 500, 16, 2509),  # square → 4×4
    (50, 8000, 16, 2653),  # the most image tokens any image can get at 16 crops
    (1600, 300, 4, 745),
    (1600, 300, 16, 2485),
    (600, 800, 16, 1933),
]


@pytest.mark.parametrize(("width", "height", "num_crops", "expected"), TOKEN_COUNTS)
def test_num_image_tokens_matches_official_counts(width, height, num_crops, expected):
    assert num_image_tokens(width=width, height=height, num_crops=num_crops) == expected


@pytest.mark.parametrize(("width", "height", "num_crops", "expected"), TOKEN_COUNTS)
def test_encode_puts_exactly_that_many_image_tokens(width, height, num_crops, expected):
    processor = Phi3VProcessor(tiny_tokenizer(), num_crops=num_crops)
    encoded = processor.encode(processor.prompt_text(), [Image.new("RGB", (width, height), (90, 30, 10))])
    assert int((encoded["input_ids"] == 8).sum()) == expected


def test_portrait_canvas_size_is_height_by_width():
    assert hd_canvas_size(600, 800, num_crops=16) == (1344, 1008)


def test_encode_reports_canvas_size_as_image_size(tiny):
    encoded = tiny.encode(tiny.prompt_text(), [_noise(600, 800)])
    assert encoded["image_sizes"].tolist() == [[1344, 1008]]
    assert encoded["pixel_values"][0].shape == (3, 1344, 1008)
    assert encoded["pixel_values"][0].dtype == np.uint8


def test_resize_height_uses_official_float_truncation_and_splits_white_padding():
    image = _noise(448, 400)
    canvas = hd_canvas(image, num_crops=4, crop_size=336)
    assert canvas.shape == (3, 672, 672)
    # int(672 / (448/400)) = 599 rows of content, 73 rows of padding: 36 on top, 37 below.
    assert (canvas[:, :36] == 255).all()
    assert (canvas[:, 36 + 599 :] == 255).all()
    expected = np.asarray(image.resize((672, 599), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(canvas[:, 36 : 36 + 599], expected)


def test_portrait_is_padded_left_and_right():
    canvas = hd_canvas(Image.new("RGB", (300, 1600), (10, 20, 30)), num_crops=4, crop_size=336)
    # Transposed 1600×300 → 1344×252, padded to 336 rows (42 + 42), transposed back: white columns.
    assert canvas.shape == (3, 1344, 336)
    assert (canvas[:, :, :42] == 255).all()
    assert (canvas[:, :, 42 + 252 :] == 255).all()
    assert (canvas[:, :, 42 : 42 + 252] == np.array([10, 20, 30], dtype=np.uint8)[:, None, None]).all()


def test_portrait_is_resized_in_the_transposed_frame():
    image = _noise(310, 900, seed=3)
    canvas = hd_canvas(image, num_crops=16, crop_size=336)
    # Landscape frame 900×310: scale 5 → 1680 wide, int(1680 / (900/310)) = 578 rows, padded to 672 (47 on top).
    assert canvas.shape == (3, 1680, 672)
    transposed_resized = image.transpose(Image.Transpose.TRANSPOSE).resize(
        (1680, 578), Image.Resampling.BILINEAR
    )
    np.testing.assert_array_equal(
        canvas[:, :, 47 : 47 + 578], np.asarray(transposed_resized).transpose(2, 1, 0)
    )
    # Resizing the portrait directly rounds differently between PIL's two passes; the official order is kept.
    direct = np.asarray(image.resize((578, 1680), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert not np.array_equal(canvas[:, :, 47 : 47 + 578], direct)


def test_alpha_is_dropped_not_composited_on_white():
    rgba = Image.new("RGBA", (336, 336), (10, 200, 30, 0))  # fully transparent green
    canvas = hd_canvas(rgba, num_crops=1, crop_size=336)
    assert canvas[:, 100, 100].tolist() == [10, 200, 30]


def test_grayscale_image_becomes_three_equal_channels():
    canvas = hd_canvas(Image.new("L", (336, 336), 77), num_crops=1, crop_size=336)
    assert canvas.shape == (3, 336, 336)
    assert (canvas == 77).all()


def test_user_turn_with_real_tokenizer(official):
    assert official.tokenizer("<|user|>\n")["input_ids"] == [1, 32010, 29871, 13]


def test_prompt_text_is_the_official_chat_template(official):
    rendered = official.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<|image_1|>\n" + Phi3VProcessor.PROMPT}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert official.prompt_text() == rendered


def test_full_prompt_sequence_matches_official_layout(official):
    encoded = official.encode(official.prompt_text(), [_noise(1280, 960)])
    ids = encoded["input_ids"].tolist()
    span = 1921
    assert ids[:4] == [1, 32010, 29871, 13]
    assert ids[4 : 4 + span] == [32044] * span
    # The text after the image is its own chunk: it starts with <s>, and its leading "\n" becomes ▁ <0x0A>.
    after = official.tokenizer.convert_ids_to_tokens(ids[4 + span :])
    assert after[:4] == ["<s>", "▁", "<0x0A>", "What"]
    assert ids[-5:] == [29973, 32007, 29871, 13, 32001]  # "?" <|end|> ▁ <0x0A> <|assistant|> ("\n" stripped)
    assert len(ids) == 4 + span + 14


def test_answer_follows_assistant_like_official_tokenization(official):
    encoded = official.encode(official.prompt_text(), [_noise(672, 672)], answer=ANSWER)
    ids = encoded["input_ids"].tolist()
    start = len(ids) - len(official.answer_ids(ANSWER))
    assert ids[start - 4 : start + 1] == [32007, 29871, 13, 32001, 10969]  # <|end|>\n<|assistant|>\nProduct
    assert ids[-2:] == [32007, 32000]


def test_answer_ids_equal_tokenizing_prompt_and_answer_together(official):
    encoded = official.encode(official.prompt_text(), [_noise(700, 500)], answer=ANSWER)
    ids = encoded["input_ids"].tolist()
    last_chunk = official.tokenizer(
        "\n" + Phi3VProcessor.PROMPT + "<|end|>\n<|assistant|>\n" + ANSWER + "<|end|>"
    )
    assert ids[-len(last_chunk["input_ids"]) - 1 :] == last_chunk["input_ids"] + [32000]


def test_labels_cover_exactly_the_answer_end_and_endoftext(official):
    encoded = official.encode(official.prompt_text(), [_noise(672, 672)], answer=ANSWER)
    ids, labels = encoded["input_ids"], encoded["labels"]
    labelled = labels != IGNORE_INDEX
    first = int(np.argmax(labelled))
    assert labelled[first:].all() and not labelled[:first].any()
    np.testing.assert_array_equal(labels[labelled], ids[labelled])
    assert official.tokenizer.decode(labels[labelled].tolist()) == ANSWER + "<|end|><|endoftext|>"
    assert official.decode(labels[labelled]) == ANSWER


def test_labels_are_all_ignored_without_an_answer(tiny):
    encoded = tiny.encode(tiny.prompt_text(), [_noise(400, 400)])
    assert (encoded["labels"] == IGNORE_INDEX).all()
    assert encoded["labels"].dtype == np.int32 and encoded["input_ids"].dtype == np.int32


def test_tiny_labels_decode_to_the_answer(tiny):
    encoded = tiny.encode_product(_noise(400, 300), answer=ANSWER)
    labels = encoded["labels"]
    assert tiny.tokenizer.decode(labels[labels != IGNORE_INDEX].tolist()) == ANSWER + "<|end|><|endoftext|>"


def test_encode_product_has_the_prepared_example_layout(tiny):
    encoded = tiny.encode_product(_noise(600, 800), answer=ANSWER)
    assert set(encoded) == {"input_ids", "labels", "pixel_values", "image_size"}
    assert encoded["pixel_values"].shape == (3, 1344, 1008) and encoded["pixel_values"].dtype == np.uint8
    assert encoded["image_size"].tolist() == [1344, 1008] and encoded["image_size"].dtype == np.int32


def test_two_images_get_their_own_spans_in_order(tiny):
    text = "<|user|>\n<|image_1|>\n<|image_2|>\nCompare.<|end|>\n<|assistant|>\n"
    encoded = tiny.encode(text, [_noise(1280, 960), Image.new("RGB", (50, 8000))])
    ids = encoded["input_ids"].tolist()
    first = ids.index(8)
    assert ids[first : first + 1921] == [8] * 1921
    second = ids.index(8, first + 1921)
    assert ids[first + 1921 : second] == [1, tiny.tokenizer.convert_tokens_to_ids("▁"), 19]  # <s> ▁ <0x0A>
    assert ids[second : second + 2653] == [8] * 2653
    assert encoded["image_sizes"].tolist() == [[1008, 1344], [5376, 336]]


def test_more_images_than_placeholders_is_rejected(tiny):
    with pytest.raises(DataError, match=r"1 <\|image_k\|> placeholder\(s\) \[1\] but 2 image\(s\)"):
        tiny.encode(tiny.prompt_text(), [_noise(10, 10), _noise(10, 10)])


def test_placeholder_without_image_is_rejected(tiny):
    with pytest.raises(DataError, match=r"but 0 image\(s\)"):
        tiny.encode(tiny.prompt_text(), [])


def test_non_contiguous_placeholders_are_rejected(tiny):
    with pytest.raises(DataError, match=r"numbered \[1, 3\]; expected \[1, 2\]"):
        tiny.encode("<|image_1|><|image_3|>Compare.", [_noise(10, 10), _noise(10, 10)])


def test_out_of_order_placeholders_are_rejected(tiny):
    with pytest.raises(DataError, match=r"numbered \[2, 1\]; expected \[1, 2\]"):
        tiny.encode("<|image_2|><|image_1|>Compare.", [_noise(10, 10), _noise(10, 10)])


@pytest.mark.parametrize("num_crops", [0, -3])
def test_num_crops_below_one_is_rejected(num_crops):
    with pytest.raises(ConfigError, match=rf"num_crops: found {num_crops}, expected an integer >= 1"):
        num_image_tokens(width=100, height=100, num_crops=num_crops)
    with pytest.raises(ConfigError, match="num_crops"):
        Phi3VProcessor(tiny_tokenizer(), num_crops=num_crops)


def test_empty_image_is_rejected(tiny):
    with pytest.raises(DataError, match=r"found 0×0 px, expected at least 1×1 \(the image is empty\)"):
        tiny.encode_product(Image.new("RGB", (0, 0)))


def test_non_pil_image_is_rejected(tiny):
    with pytest.raises(DataError, match=r"image: found ndarray, expected a PIL.Image.Image"):
        tiny.encode_product(np.zeros((8, 8, 3), dtype=np.uint8))


def test_image_too_elongated_to_keep_a_row_is_rejected():
    with pytest.raises(DataError, match=r"found 10000×1 px"):
        hd_canvas_size(1, 10000, num_crops=16)


def test_odd_patch_grid_is_rejected():
    with pytest.raises(ConfigError, match=r"expected an even number"):
        Phi3VProcessor(tiny_tokenizer(), crop_size=42, patch_size=14)


def test_from_config_reads_crop_settings_and_image_token():
    config = SimpleNamespace(
        crop_size=56, num_crops=4, image_token_id=8, vision_config=SimpleNamespace(patch_size=14)
    )
    processor = Phi3VProcessor.from_config(config, tiny_tokenizer())
    assert (processor.crop_size, processor.num_crops, processor.patch_size, processor.image_token_id) == (
        56,
        4,
        14,
        8,
    )
    # 56/14/2 = 2 merged tokens per crop side; a 2×2 grid → 2·2·(2·2+1) + 1 + 2·3 = 27.
    encoded = processor.encode_product(_noise(112, 112))
    assert encoded["pixel_values"].shape == (3, 112, 112)
    assert int((encoded["input_ids"] == 8).sum()) == 27


def test_from_config_names_missing_fields():
    config = SimpleNamespace(crop_size=336, num_crops=None, vision_config=SimpleNamespace())
    with pytest.raises(ConfigError, match=r"missing image_token_id, num_crops, patch_size"):
        Phi3VProcessor.from_config(config, tiny_tokenizer())


def _examples(processor: Phi3VProcessor) -> list[dict]:
    return [
        processor.encode_product(_noise(400, 400), answer=ANSWER),
        processor.encode_product(_noise(1280, 960), answer="Product: Cap"),
    ]


def test_collate_right_pads_for_training(tiny):
    examples = _examples(tiny)
    lengths = [len(e["input_ids"]) for e in examples]
    batch = tiny.collate(examples)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(lengths) and width - max(lengths) < 8
    for row, length in enumerate(lengths):
        assert batch["attention_mask"][row, :length].all() and not batch["attention_mask"][row, length:].any()
        assert (batch["input_ids"][row, length:] == tiny.pad_token_id).all()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
        assert batch["input_ids"][row, :length].tolist() == examples[row]["input_ids"].tolist()
        assert batch["labels"][row, :length].tolist() == examples[row]["labels"].tolist()
    assert all(t.dtype == torch.int64 for t in (batch["input_ids"], batch["attention_mask"], batch["labels"]))


def test_collate_left_pads_for_generation(tiny):
    examples = [tiny.encode_product(_noise(400, 400)), tiny.encode_product(_noise(1280, 960))]
    batch = tiny.collate(examples, padding_side="left", pad_to_multiple_of=None)
    short = len(examples[0]["input_ids"])
    width = batch["input_ids"].shape[1]
    assert width == max(len(e["input_ids"]) for e in examples)
    assert batch["input_ids"][0, width - short :].tolist() == examples[0]["input_ids"].tolist()
    assert not batch["attention_mask"][0, : width - short].any()
    assert batch["input_ids"][:, -1].tolist() == [4, 4]  # both rows end on <|assistant|>, ready to generate


def test_collate_pads_canvases_bottom_right_with_zeros(tiny):
    examples = _examples(tiny)  # canvases 1344×1344 and 1008×1344
    batch = tiny.collate(examples)
    pixels = batch["pixel_values"]
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (2, 3, 1344, 1344)
    assert batch["image_sizes"].tolist() == [[1344, 1344], [1008, 1344]]
    assert batch["image_sizes"].dtype == torch.int64
    np.testing.assert_array_equal(pixels[1, :, :1008].numpy(), examples[1]["pixel_values"])
    assert not pixels[1, :, 1008:].any()


def test_collate_accepts_multi_image_examples(tiny):
    text = "<|user|>\n<|image_1|>\n<|image_2|>\nCompare.<|end|>\n<|assistant|>\n"
    multi = tiny.encode(text, [_noise(336, 336), _noise(672, 336)])
    batch = tiny.collate([multi, tiny.encode_product(_noise(336, 336))])
    # 2:1 at 16 crops → scale 5 → 1680×840, padded to 1008 rows; the batch canvas covers the largest extent.
    assert batch["image_sizes"].tolist() == [[1344, 1344], [1008, 1680], [1344, 1344]]
    assert tuple(batch["pixel_values"].shape) == (3, 3, 1344, 1680)


def test_collate_rejects_examples_encoded_with_other_crop_settings(tiny):
    four_crops = Phi3VProcessor(tiny_tokenizer(), num_crops=4).encode_product(_noise(400, 400))
    with pytest.raises(
        DataError, match=r"example 0: holds 757 image tokens but its canvases \[\(672, 672\)\] need"
    ):
        Phi3VProcessor(tiny_tokenizer(), num_crops=16, crop_size=168).collate([four_crops])


def test_collate_rejects_unknown_padding_side(tiny):
    with pytest.raises(ConfigError, match=r"padding_side: found 'middle'"):
        tiny.collate(_examples(tiny), padding_side="middle")


def test_decode_hides_special_image_and_ignored_tokens(official):
    ids = [32010, 32044, 32044, 32001, 10969, 29901, 32007, 32000, 2, IGNORE_INDEX]
    assert official.decode(ids) == "Product:"


def test_stop_tokens_are_end_endoftext_and_eos(official, tiny):
    assert official.stop_token_ids == [32007, 32000, 2]
    assert tiny.stop_token_ids == [6, 3, 2]


def test_group_by_grid_batches_equal_grids_and_cuts_padding(tiny):
    small, large = tiny.encode_product(_noise(336, 336)), tiny.encode_product(_noise(1280, 960))
    interleaved = [small, large, small, large]
    batches = group_by_grid(interleaved, batch_size=2)
    assert [[e["image_size"].tolist() for e in batch] for batch in batches] == [
        [[1008, 1344], [1008, 1344]],
        [[1344, 1344], [1344, 1344]],
    ]
    assert padding_share(batches[0]) == padding_share(batches[1]) == 0.0
    assert padding_share(interleaved[:2]) == pytest.approx((2509 - 1921) / (2 * (2509 + 18)))
