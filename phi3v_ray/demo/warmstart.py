"""A stand-in for a pretrained checkpoint: a short full fine-tune of the tiny base on a *different* task.

The real suite starts from Phi-3-Vision, which already knows what a coat looks like and how to spell "Trench Coat".
A randomly initialised tiny model knows neither, and LoRA on frozen random weights learns far too slowly for a
10-minute CPU demo (measured: loss 7.0 → 5.0 in 300 steps, below the majority-category rate). So the demo first
teaches the tiny base to *describe* generic objects — shape noun, colour, pattern, material and the colour's RGB
values — from its own synthetic images (a separate seed from the catalog), to say in a sentence which category a
named kind of thing belongs to (text only), and to add and round numbers (text only). It never sees the product
answer format, a product photo from the catalog or a price. The LoRA sweep then has to learn the actual task:
reading category, title and price off a product photo and writing them in the answer format.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from phi3v_ray.data.synth import NOUNS, STYLES, build_table
from phi3v_ray.data.synth_images import draw_product
from phi3v_ray.data.vocabulary import CATEGORIES, COLOURS, MATERIALS, PATTERNS
from phi3v_ray.model.loading import load_model, save_pretrained
from phi3v_ray.model.processing import Phi3VProcessor

WARMUP_PROMPT = "Describe the object."
KNOWLEDGE_PROMPT = "What kind of thing is this?"
# Long side of the warm-start drawings (the tiny model's canvas is at most 112 px).
WARM_START_IMAGE_SIDE = 224
TEXT_EVERY = 3  # every 3rd warm-start step is a batch of text-only lines (world knowledge and arithmetic)
COLOUR_NAMES = {rgb: name for name, rgb in COLOURS.items()}


def describe(silhouette: str, colour: tuple[int, int, int], pattern: str, material: str) -> str:
    """The warm-start caption: words a pretrained model would know, in a format unlike the product answer.

    It ends with the colour's RGB values ("RGB 28 40 90"): a pretrained model reads numbers off a picture, while
    the tiny base has never written a digit, so without numbers here the digit tokens' embeddings and output rows
    stay random (and frozen under LoRA) and the sweep's model answered one price ("10.0") for every product.

    Written in the catalog's capitalisation ("A Navy Check Leather Wallet.") on purpose: the tiny tokenizer has one
    token per catalog word ("▁Wallet", "▁Navy"), while lower-case words fall apart into sub-word pieces
    ("▁", "w", "all", "et"). Lower-case captions trained the pieces and left the catalog words' embeddings random
    (and frozen under LoRA), as a real pretrained model's would never be.
    """
    pattern_word = "" if pattern == "Plain" else f"{pattern} "
    red, green, blue = colour
    return f"A {COLOUR_NAMES[colour]} {pattern_word}{material} {NOUNS[silhouette]}, RGB {red} {green} {blue}."


def knowledge_lines(count: int, seed: int) -> list[tuple[str, str]]:
    """Text-only (question, answer) world knowledge: which kind of product a named thing is.

    A pretrained model knows that a trench coat is one of the TRENCH COATS (outerwear) and has seen the category
    words; the tiny base has not, so their embeddings and lm_head rows would stay random and, under LoRA, frozen.
    These lines name things in the catalog's vocabulary (style, pattern, material, noun, colour) and say which
    category they belong to, in a sentence form — never the product answer format, never prices, no images.
    """
    rng = random.Random(seed)
    kinds = [(c3, c2, NOUNS[silhouette]) for c3, (c2, silhouette, _) in CATEGORIES.items()]
    colours, materials, patterns = list(COLOURS), list(MATERIALS), list(PATTERNS)
    lines = [(f"What is a {noun}?", f"A {noun} is one of the {c3}, in {c2}.") for c3, c2, noun in kinds]
    while len(lines) < count:
        c3, c2, noun = rng.choice(kinds)
        pattern = rng.choice(patterns)
        name = f"{rng.choice(STYLES)} {'' if pattern == 'Plain' else pattern + ' '}{rng.choice(materials)} {noun}"
        if rng.random() < 0.75:
            name += f" in {rng.choice(colours)}"
        lines.append((KNOWLEDGE_PROMPT + f" {name}", f"The {name} is one of the {c3}, in {c2}."))
    return lines


def arithmetic_lines(count: int, seed: int) -> list[tuple[str, str]]:
    """Text-only (question, answer) number lines: sums and roundings of numbers from 5 to 9,999.

    What a pretrained model brings and the tiny base lacks: numbers written digit by digit, how many digits a
    magnitude takes, and a number in the answer that follows one in the question. Nothing here is a price or a
    product, and the answers are sentences, unlike the product answer format.
    """
    rng = random.Random(seed)
    lines: list[tuple[str, str]] = []
    while len(lines) < count:
        first = int(math.exp(rng.uniform(math.log(5), math.log(6000))))
        if rng.random() < 0.5:
            second = int(math.exp(rng.uniform(math.log(5), math.log(3000))))
            lines.append((f"What is {first} plus {second}?", f"{first} plus {second} is {first + second}."))
        else:
            step = rng.choice((5, 10, 50, 100))
            rounded = max(step, round(first / step) * step)
            lines.append((f"Round {first} to a multiple of {step}.", f"{first} is about {rounded}."))
    return lines


def build_examples(processor: Phi3VProcessor, count: int, seed: int, threads: int = 2) -> list[dict]:
    """Encoded (image, caption) pairs drawn with the catalog generator's painter under its own seed.

    Drawn straight at 224 px (the tiny canvas is at most 112 px, so nothing is lost) on a few threads: PIL releases
    the GIL while it paints and resizes."""
    _, specs = build_table(count, seed=seed, broken_url_share=0.0)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        images = list(pool.map(lambda spec: draw_product(spec, max_side=WARM_START_IMAGE_SIDE), specs))
    text = processor.prompt_text(WARMUP_PROMPT)
    return [
        processor.encode(text, [image], describe(spec.silhouette, spec.colour, spec.pattern, spec.material))
        for spec, image in zip(specs, images, strict=True)
    ]


def build_text_lines(processor: Phi3VProcessor, count: int, seed: int) -> list[dict]:
    """Encoded text-only lines, half world knowledge, half arithmetic (no image placeholder, answer-only labels)."""
    lines = knowledge_lines(count - count // 2, seed) + arithmetic_lines(count // 2, seed + 1)
    return [
        processor.encode(processor.prompt_text(question, image_count=0), [], answer)
        for question, answer in lines
    ]


def warm_start_tiny_base(
    out_dir: str | Path,
    *,
    steps: int = 2000,
    examples: int = 3000,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 1234,
    threads: int | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Full fine-tune of the tiny preset on captions; saves model + tokenizer to out_dir (official layout).

    The defaults are measured, not guessed. Colour (a pooled feature) is learned within ~100 steps, but the shape
    noun needs the decoder's attention to pick out where the silhouette lies among the image tokens, and the
    loss sits on a plateau (~0.25, text prior only) before that happens. 400 steps on 400 images at lr 2e-3 stop on
    the plateau: held-out noun accuracy was 14% (chance ~8%; noun-only captions, 64 held-out images). More steps
    on more images at a lower lr get past it: 1000 steps on 1500 images at lr 1e-3 gave 66% held-out noun
    and 95% colour accuracy. lr 1e-2, or 1e-2 on the vision side only, did worse than 2e-3; 1e-3 did better.
    Twice that (2000 steps on 3000 images) raised the sweep's held-out category accuracy from 0.66 to 0.77, and the
    category is what the price follows first (demo/run.py DemoPlan); with 2 threads the extra steps cost ~50 s.

    Every TEXT_EVERY-th step trains on text-only lines instead (knowledge_lines and arithmetic_lines), and the
    captions use the catalog's word tokens (see describe). Before the knowledge lines and word tokens, LoRA on this
    base (rank 16, lr 3e-3, 300 steps, batch 16, 540 training rows) reached 11.7% held-out category accuracy, about
    the majority rate (10%); with both, 30% (60 held-out rows), and the warm start took 85 s (1000 steps).
    Without any digits (RGB values, arithmetic) the sweep's checkpoints answered "Full Price: 10.0" for every
    product; with them, prices follow the photo once the sweep runs long enough (see demo/run.py DemoPlan).
    """
    torch.manual_seed(seed)
    # The warm start runs before Ray starts, so the cores are its own: on 2 cores a step (batch 16) took 69 ms with
    # 2 threads and 108 ms with 1. Past a few threads a 128-wide model's matmuls are too small to split further.
    with torch_threads(threads or min(4, os.cpu_count() or 1)):
        return _fine_tune(out_dir, steps, examples, batch_size, lr, seed, progress)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to `count` inside the block, and back to what they were after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fine_tune(
    out_dir: str | Path,
    steps: int,
    examples: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: Callable[[int, float], None] | None,
) -> dict[str, float]:
    """The warm start's training loop and save (warm_start_tiny_base sets the threads around it)."""
    model, tokenizer = load_model("tiny")
    processor = Phi3VProcessor.from_config(model.config, tokenizer)
    pairs = build_examples(processor, examples, seed)
    text_lines = build_text_lines(processor, max(examples, batch_size), seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / max(steps, 1))
    sampler = random.Random(seed)
    model.train()
    started = time.perf_counter()
    first_loss = last_loss = float("nan")
    for step in range(steps):
        source = text_lines if step % TEXT_EVERY == TEXT_EVERY - 1 else pairs
        batch = processor.collate(sampler.sample(source, batch_size), padding_side="right")
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        last_loss = loss.item()
        if step == 0:
            first_loss = last_loss
        if progress is not None:
            progress(step, last_loss)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_pretrained(model, out)
    tokenizer.save_pretrained(out)
    return {"first_loss": first_loss, "last_loss": last_loss, "seconds": time.perf_counter() - started}
