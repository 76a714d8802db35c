"""Generation (batched, left-padded, KV cache, stop at `<|end|>`) and LoRA through peft on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from phi3v_ray.model import Phi3VConfig, Phi3VForCausalLM
from phi3v_ray.model.loading import build_model

CROP = 56
PAD, END = 3, 6
LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "out_proj"]


def example(
    model: Phi3VForCausalLM, size: tuple[int, int], text: list[int], seed: int
) -> dict[str, torch.Tensor]:
    """One prompt (`<s><|user|>` + image span + `text`) with its uint8 canvas."""
    count = model.model.vision_embed_tokens.token_counts(torch.tensor([size]))[0]
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.tensor([1, 7] + [8] * count + [1, *text]),
        "pixel_values": torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator),
        "image_size": torch.tensor(size),
    }


def left_padded(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collate like the processor does for generation: left padding, zero-padded canvases, real sizes."""
    length = max(len(e["input_ids"]) for e in examples)
    height = max(int(e["image_size"][0]) for e in examples)
    width = max(int(e["image_size"][1]) for e in examples)
    ids = torch.full((len(examples), length), PAD)
    mask = torch.zeros(len(examples), length, dtype=torch.long)
    pixels = torch.zeros(len(examples), 3, height, width, dtype=torch.uint8)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, length - n :], mask[row, length - n :] = e["input_ids"], 1
        h, w = e["image_size"].tolist()
        pixels[row, :, :h, :w] = e["pixel_values"]
    sizes = torch.stack([e["image_size"] for e in examples])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "image_sizes": sizes}


@pytest.fixture(scope="module")
def model() -> Phi3VForCausalLM:
    return build_model(Phi3VConfig.preset("tiny")).eval()


def test_batched_left_padded_greedy_generation_equals_per_example(model: Phi3VForCausalLM) -> None:
    examples = [
        example(model, (CROP, 2 * CROP), [20, 21, 4], seed=0),
        example(model, (2 * CROP, CROP), [22, 23, 24, 25, 26, 27, 4], seed=1),
        example(model, (CROP, CROP), [28, 4], seed=2),
    ]
    batch = left_padded(examples)
    generated = model.generate(**batch, max_new_tokens=6, do_sample=False)[:, batch["input_ids"].shape[1] :]
    for row, e in enumerate(examples):
        alone = model.generate(**left_padded([e]), max_new_tokens=6, do_sample=False)[
            0, len(e["input_ids"]) :
        ]
        assert generated[row, : len(alone)].tolist() == alone.tolist(), row


def test_generation_stops_at_end_token(model: Phi3VForCausalLM) -> None:
    assert model.generation_config.eos_token_id == [END, PAD, 2]
    e = example(model, (CROP, CROP), [20, 21, 4], seed=3)
    free = model.generate(**left_padded([e]), max_new_tokens=6, do_sample=False)[0, len(e["input_ids"]) :]
    # Make `<|end|>` win wherever the model's third greedy token won (its logit doubled), so it must stop there.
    stopping = build_model(Phi3VConfig.preset("tiny")).eval()
    with torch.no_grad():
        stopping.lm_head.weight[END] = 2 * stopping.lm_head.weight[int(free[2])]
    stopped = stopping.generate(**left_padded([e]), max_new_tokens=6, do_sample=False)[
        0, len(e["input_ids"]) :
    ]
    assert stopped.tolist()[-1] == END
    assert len(stopped) <= 3


def lora_model() -> PeftModel:
    """The tiny base with LoRA on the text and CLIP projections and the image projector fully trainable."""
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=LORA_TARGETS,
        modules_to_save=["img_projection"],
        init_lora_weights=False,  # random B, so the adapter changes the logits and a bad load would show
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        return get_peft_model(build_model(Phi3VConfig.preset("tiny")), lora)


def test_lora_leaves_only_adapter_and_projector_parameters_trainable() -> None:
    peft_model = lora_model()
    trainable = [name for name, param in peft_model.named_parameters() if param.requires_grad]
    assert trainable
    for name in trainable:
        assert ".lora_A." in name or ".lora_B." in name or ".img_projection.modules_to_save." in name, name
    assert any(".img_processor." in name for name in trainable)  # the CLIP targets are adapted too


def test_lora_adapter_save_load_round_trip_gives_identical_logits_and_generation(tmp_path: Path) -> None:
    peft_model = lora_model().eval()
    with torch.no_grad():
        projector = peft_model.base_model.model.model.vision_embed_tokens.img_projection
        projector.modules_to_save["default"][0].weight.add_(0.05)
    e = example(peft_model.base_model.model, (CROP, 2 * CROP), [20, 21, 4], seed=5)
    batch = left_padded([e])
    inputs = {key: batch[key] for key in ("input_ids", "pixel_values", "image_sizes")}
    with torch.no_grad():
        adapted = peft_model(**inputs).logits
        base = build_model(Phi3VConfig.preset("tiny")).eval()(**inputs).logits
    assert (adapted - base).abs().max() > 1e-3
    peft_model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(build_model(Phi3VConfig.preset("tiny")), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, adapted, rtol=0, atol=0)
    generated = peft_model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert torch.equal(reloaded.generate(**batch, max_new_tokens=4, do_sample=False), generated)


class ForwardRecorder:
    """Counts CLIP runs and records how many tokens each forward embeds, via hooks on the real modules."""

    def __init__(self, model: Phi3VForCausalLM) -> None:
        self.embedded_lengths: list[int] = []
        self.clip_runs = 0
        self._handles = [
            model.model.embed_tokens.register_forward_hook(
                lambda _m, args, _out: self.embedded_lengths.append(int(args[0].shape[1]))
            ),
            model.model.vision_embed_tokens.register_forward_hook(lambda *_: self._count_clip()),
        ]

    def _count_clip(self) -> None:
        self.clip_runs += 1

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def test_decode_steps_embed_only_the_new_token_and_never_rerun_clip(model: Phi3VForCausalLM) -> None:
    examples = [
        example(model, (CROP, 2 * CROP), [20, 21, 4], seed=6),
        example(model, (CROP, CROP), [22], seed=7),
    ]
    batch = left_padded(examples)
    recorder = ForwardRecorder(model)
    try:
        model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    finally:
        recorder.close()
    prompt_length = batch["input_ids"].shape[1]
    # One prefill over the whole prompt (images included), then one token per step against the KV cache.
    assert recorder.embedded_lengths == [prompt_length, 1, 1, 1, 1]
    assert recorder.clip_runs == 1


def test_cache_passed_under_either_name_continues_the_prompt_identically(model: Phi3VForCausalLM) -> None:
    e = example(model, (CROP, CROP), [20, 21, 4], seed=8)
    batch = left_padded([e])
    inputs = {key: batch[key] for key in ("input_ids", "pixel_values", "image_sizes")}
    next_token = torch.tensor([[30]])
    with torch.no_grad():
        full = model(
            input_ids=torch.cat([batch["input_ids"], next_token], 1),
            **{k: inputs[k] for k in ("pixel_values", "image_sizes")},
        ).logits[:, -1]
        continued = []
        for name in ("cache", "past_key_values"):
            prefill = model(**inputs, use_cache=True)
            cache = prefill.cache if hasattr(prefill, "cache") else prefill.past_key_values
            assert cache is not None and cache.get_seq_length() == batch["input_ids"].shape[1]
            step = model(input_ids=next_token, use_cache=True, **{name: cache})
            continued.append(step.logits[:, -1])
    for logits in continued:
        torch.testing.assert_close(logits, full, rtol=1e-5, atol=1e-5)


def test_longrope_cache_is_rebuilt_once_when_generation_crosses_the_original_context() -> None:
    prompt = [20, 21, 4]
    config = Phi3VConfig.preset("tiny")
    probe = build_model(config)
    e = example(probe, (CROP, CROP), prompt, seed=9)
    original = len(e["input_ids"]) + 2  # the third generated token crosses it
    config.text_config.original_max_position_embeddings = original
    config.text_config.rope_parameters["original_max_position_embeddings"] = original
    short_context = build_model(config).eval()
    batch = left_padded([e])
    recorder = ForwardRecorder(short_context)
    try:
        cached = short_context.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    finally:
        recorder.close()
    length = len(e["input_ids"])
    # Keys cached with the short factors are stale past `original`: the whole sequence is recomputed exactly once.
    assert recorder.embedded_lengths == [length, 1, 1, length + 3, 1]
    assert recorder.clip_runs == 2
    uncached = short_context.generate(
        **batch, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=False
    )
    assert cached.tolist() == uncached.tolist()
