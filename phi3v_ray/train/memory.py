"""Per-GPU memory estimate for a training config: weights, grads, optimizer state, activations.

Used by `phi3v-ray train --dry-run` to say, before renting GPUs, whether a model / ZeRO stage / micro-batch fits.
Parameter counts come from the architecture numbers (a Phi3VConfig or the same fields), so the official 4.2B model is
estimated without downloading or allocating it. Activation terms count the tensors autograd keeps per token in one
decoder layer (sdpa/flash attention: no stored score matrix); they are estimates to within tens of percent, meant to
rank settings and catch clear misfits, not to replace a profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phi3v_ray.config import ExperimentConfig

GIB = 1024**3

# Cards the README table is made for: name -> usable memory in bytes.
GPUS: dict[str, int] = {"A10G-24GB": 24 * GIB, "A100-80GB": 80 * GIB, "H100-80GB": 80 * GIB}

# CUDA context, cuBLAS workspaces and allocator fragmentation: a flat reserve seen on every card.
RUNTIME_RESERVE_BYTES = int(1.5 * GIB)


@dataclass(frozen=True)
class ModelDims:
    """The architecture numbers the estimate needs (read from a Phi3VConfig)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    tie_word_embeddings: bool
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_image_size: int
    vision_patch_size: int
    vision_channels: int
    image_dim_out: int
    crop_size: int

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        """From a Phi3VConfig (`text_config` = Phi3Config, `vision_config` = CLIPVisionConfig)."""
        text, vision = config.text_config, config.vision_config
        return cls(
            vocab_size=text.vocab_size,
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_layers=text.num_hidden_layers,
            num_heads=text.num_attention_heads,
            num_kv_heads=text.num_key_value_heads or text.num_attention_heads,
            tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
            vision_hidden=vision.hidden_size,
            vision_intermediate=vision.intermediate_size,
            vision_layers=vision.num_hidden_layers,
            vision_image_size=vision.image_size,
            vision_patch_size=vision.patch_size,
            vision_channels=getattr(vision, "num_channels", 3),
            image_dim_out=config.image_dim_out,
            crop_size=config.crop_size,
        )

    @classmethod
    def for_preset(cls, preset: str) -> ModelDims:
        """Numbers of a built-in preset ("tiny" / "official") from phi3v_ray.model."""
        from phi3v_ray.model.configuration import Phi3VConfig

        return cls.from_config(Phi3VConfig.preset(preset))


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts by part, and how many of them train in the configured mode."""

    text: int
    vision: int
    projector: int
    trainable: int

    @property
    def total(self) -> int:
        return self.text + self.vision + self.projector


def _text_layer_linears(d: ModelDims) -> dict[str, tuple[int, int]]:
    head_dim = d.hidden_size // d.num_heads
    qkv_out = d.hidden_size + 2 * d.num_kv_heads * head_dim
    return {
        "qkv_proj": (d.hidden_size, qkv_out),
        "o_proj": (d.hidden_size, d.hidden_size),
        "gate_up_proj": (d.hidden_size, 2 * d.intermediate_size),
        "down_proj": (d.intermediate_size, d.hidden_size),
    }


def _vision_layer_linears(d: ModelDims) -> dict[str, tuple[int, int]]:
    h, i = d.vision_hidden, d.vision_intermediate
    return {
        "q_proj": (h, h),
        "k_proj": (h, h),
        "v_proj": (h, h),
        "out_proj": (h, h),
        "fc1": (h, i),
        "fc2": (i, h),
    }


def count_parameters(dims: ModelDims, config: ExperimentConfig) -> ParameterCounts:
    """Exact counts for our Phi3VForCausalLM layout (tested against the built tiny model)."""
    d = dims
    text_layer = sum(i * o for i, o in _text_layer_linears(d).values()) + 2 * d.hidden_size
    embeddings = d.vocab_size * d.hidden_size
    text = embeddings * (1 if d.tie_word_embeddings else 2) + d.num_layers * text_layer + d.hidden_size

    h, i = d.vision_hidden, d.vision_intermediate
    vision_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h  # attention, mlp, two layer norms
    patches = (d.vision_image_size // d.vision_patch_size) ** 2
    vision_embed = d.vision_channels * d.vision_patch_size**2 * h + h + (patches + 1) * h
    vision = vision_embed + d.vision_layers * vision_layer + 4 * h  # + pre/post layer norms

    merged = 4 * d.image_dim_out  # 2x2 merge of the CLIP features
    projector = merged * d.hidden_size + d.hidden_size + d.hidden_size * d.hidden_size + d.hidden_size
    projector += 2 * merged  # sub_GN and glb_GN separators

    finetune = config.finetune
    if finetune.mode == "full":
        trainable = text + vision + projector
    else:
        trainable = 0
        for name, (fan_in, fan_out) in _text_layer_linears(d).items():
            if name in finetune.target_modules:
                trainable += d.num_layers * finetune.rank * (fan_in + fan_out)
        if finetune.vision == "lora":
            trainable += d.vision_layers * sum(
                finetune.rank * (a + b) for a, b in _vision_layer_linears(d).values()
            )
        elif finetune.vision == "full":
            trainable += vision
        if finetune.projector_trainable:
            trainable += projector - 2 * merged  # the img_projection MLP; the separators stay frozen
    return ParameterCounts(text=text, vision=vision, projector=projector, trainable=trainable)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU by category for one setting."""

    weights: int
    grads: int
    optimizer: int
    activations: int
    reserve: int
    cpu_offloaded: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.reserve


def image_tokens_per_sample(dims: ModelDims, num_crops: int, *, width: int = 1000, height: int = 1000) -> int:
    """Image tokens of a product photo (square by default, like catalog shots) under the HD transform."""
    from phi3v_ray.model.geometry import num_image_tokens

    return num_image_tokens(
        width=width,
        height=height,
        num_crops=num_crops,
        crop_size=dims.crop_size,
        patch_size=dims.vision_patch_size,
    )


# Prompt, answer ("Product: ..., Category: ..., Full Price: ...") and chat specials around the image span.
TEXT_TOKENS_PER_SAMPLE = 64


def tokens_per_sample(dims: ModelDims, num_crops: int) -> int:
    """Sequence length of one training example: image span plus text."""
    return image_tokens_per_sample(dims, num_crops) + TEXT_TOKENS_PER_SAMPLE


def activation_bytes(dims: ModelDims, config: ExperimentConfig, *, seq_len: int, checkpointing: bool) -> int:
    """Activations autograd keeps for one micro-batch (16-bit), plus the fp32 logits the loss needs."""
    d, batch = dims, config.optim.micro_batch
    h, i = d.hidden_size, d.intermediate_size
    # Per token per decoder layer: norms, q/k/v, attention output (8h) and the gated MLP (gate, up, act, product: 4i);
    # LoRA dropout keeps its own copy of each adapted input.
    per_token_layer = 8 * h + 4 * i + (3 * h + i if config.finetune.mode == "lora" else 0)
    elem = 2 if config.model.dtype in ("bfloat16", "float16") else 4
    tokens = batch * seq_len
    if checkpointing:
        text = (
            tokens * d.num_layers * h * elem + tokens * per_token_layer * elem
        )  # layer inputs + one recompute
    else:
        text = tokens * d.num_layers * per_token_layer * elem
    logits = tokens * d.vocab_size * (elem + 4 + 4)  # logits, fp32 upcast for the loss, its gradient

    vision = 0
    if config.finetune.mode == "full" or config.finetune.vision != "frozen":
        patches = (d.vision_image_size // d.vision_patch_size) ** 2 + 1
        vision_tokens = batch * (config.model.num_crops + 1) * patches
        vh, vi = d.vision_hidden, d.vision_intermediate
        per_token_vlayer = 8 * vh + 2 * vi
        if checkpointing:
            vision = vision_tokens * (d.vision_layers * vh + per_token_vlayer) * elem
        else:
            vision = vision_tokens * d.vision_layers * per_token_vlayer * elem
    return text + logits + vision


def estimate_memory(
    dims: ModelDims, config: ExperimentConfig, *, world_size: int, seq_len: int, checkpointing: bool
) -> MemoryEstimate:
    """Per-GPU bytes for this config under its ZeRO stage and offload settings."""
    counts = count_parameters(dims, config)
    ds = config.deepspeed
    elem = 2 if config.model.dtype in ("bfloat16", "float16") else 4
    stage3 = ds.zero_stage == 3

    weights_full = counts.total * elem
    # ZeRO-3 shards all weights; each rank also holds the parameters it has gathered for the current layers.
    gathered = min(weights_full, 2 * ds.allgather_bucket_size * elem)
    weights = (gathered + (0 if ds.offload_param else weights_full // world_size)) if stage3 else weights_full
    # ZeRO-2 and 3 both partition gradients; one reduce bucket is in flight.
    grads = counts.trainable * elem // world_size + min(counts.trainable * elem, ds.reduce_bucket_size * elem)
    # fp32 master copy + Adam m and v: 12 bytes per trainable parameter, sharded (or moved to the CPU).
    optimizer_total = counts.trainable * (12 if elem == 2 else 8) // world_size
    optimizer = 0 if ds.offload_optimizer else optimizer_total
    cpu = (optimizer_total if ds.offload_optimizer else 0) + (
        weights_full // world_size if ds.offload_param else 0
    )
    return MemoryEstimate(
        weights=weights,
        grads=grads,
        optimizer=optimizer,
        activations=activation_bytes(dims, config, seq_len=seq_len, checkpointing=checkpointing),
        reserve=RUNTIME_RESERVE_BYTES,
        cpu_offloaded=cpu,
    )


def _gib(value: int) -> str:
    return f"{value / GIB:7.2f}"


def memory_table(dims: ModelDims, config: ExperimentConfig, *, world_size: int, seq_len: int) -> str:
    """A text table: each memory category with and without gradient checkpointing, and the fit per GPU card."""
    counts = count_parameters(dims, config)
    rows = {
        gc: estimate_memory(dims, config, world_size=world_size, seq_len=seq_len, checkpointing=gc)
        for gc in (False, True)
    }
    lines = [
        f"parameters: total {counts.total / 1e9:.3f}B (text {counts.text / 1e9:.3f}B, vision {counts.vision / 1e6:.1f}M, "
        f"projector {counts.projector / 1e6:.1f}M); trainable {counts.trainable / 1e6:.2f}M ({config.finetune.mode})",
        f"per-GPU estimate (GiB): ZeRO-{config.deepspeed.zero_stage}, {world_size} workers, micro-batch "
        f"{config.optim.micro_batch}, {seq_len} tokens/sample, {config.model.dtype}",
        f"  {'':<22}{'no grad-ckpt':>14}{'grad-ckpt':>12}",
    ]
    for label, attr in (
        ("weights", "weights"),
        ("gradients", "grads"),
        ("optimizer state", "optimizer"),
        ("activations", "activations"),
        ("runtime reserve", "reserve"),
        ("total", "total"),
    ):
        lines.append(
            f"  {label:<22}{_gib(getattr(rows[False], attr)):>14}{_gib(getattr(rows[True], attr)):>12}"
        )
    if rows[False].cpu_offloaded:
        lines.append(f"  {'offloaded to CPU RAM':<22}{_gib(rows[False].cpu_offloaded):>14}")
    for gpu, capacity in GPUS.items():
        verdict = [("fits" if rows[gc].total <= capacity else "does not fit") for gc in (False, True)]
        lines.append(f"  {gpu:<22}{verdict[0]:>14}{verdict[1]:>12}")
    return "\n".join(lines)
