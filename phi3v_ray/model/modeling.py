"""Phi3VForCausalLM: transformers' Phi-3 decoder with CLIP image features written at the image-token positions.

Module names follow the official checkpoint (`model.embed_tokens`, `model.layers.N`, `model.norm`, `lm_head`,
`model.vision_embed_tokens.*`), so its safetensors load with zero renames. There is no `wte` alias of
`embed_tokens`: the checkpoint does not store one and a shared module would duplicate the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.phi3.modeling_phi3 import Phi3Model

from phi3v_ray.errors import DataError
from phi3v_ray.model import kv_cache
from phi3v_ray.model.configuration import Phi3VConfig
from phi3v_ray.model.image_embedding import Phi3VImageEmbedding


class Phi3VModel(Phi3Model):
    """The official `model.*` tree: Phi3Model (embed_tokens, layers, norm) plus `vision_embed_tokens`."""

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__(config.text_config)
        self.image_token_id = config.image_token_id
        self.vision_embed_tokens = Phi3VImageEmbedding(config)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Embed text and images together, then run the plain Phi-3 decoder on the merged embeddings.

        The KV cache is accepted as `cache` (transformers >= 5.24) or `past_key_values` (earlier releases).
        """
        cache = kv_cache.given_cache(cache, past_key_values)
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed_with_images(input_ids, pixel_values, image_sizes, cache)
            input_ids = None
        elif pixel_values is not None:
            raise DataError(
                "pixel_values need input_ids (to find the image tokens); got inputs_embeds instead"
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kv_cache.as_kwargs(cache),
            **kwargs,
        )

    def embed_with_images(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_sizes: torch.Tensor | None,
        cache: Any = None,
    ) -> torch.Tensor:
        """Token embeddings with image features written, in sequence order across the batch, at image tokens."""
        embeddings = self.embed_tokens(input_ids)
        image_mask = input_ids == self.image_token_id
        token_count = int(image_mask.sum())
        if pixel_values is None:
            if image_sizes is not None:
                raise DataError("image_sizes were given without pixel_values; expected both or neither")
            is_prefill = kv_cache.cached_length(cache) == 0
            if token_count and is_prefill:
                raise DataError(
                    f"input_ids hold {token_count} image tokens (id {self.image_token_id}) but no pixel_values "
                    "were given; expected the images those tokens stand for"
                )
            return embeddings
        expected = (
            sum(self.vision_embed_tokens.token_counts(image_sizes)) if image_sizes is not None else None
        )
        if expected is not None and expected != token_count:
            raise DataError(
                f"input_ids hold {token_count} image tokens (id {self.image_token_id}) but the "
                f"{len(image_sizes)} image(s) of image_sizes {image_sizes.tolist()} need {expected}; expected equal "
                "counts (one span per image, length from the crop grid)"
            )
        features = self.vision_embed_tokens(pixel_values, image_sizes)
        mask = image_mask.unsqueeze(-1).expand_as(embeddings)
        return embeddings.masked_scatter(mask, features.to(embeddings.dtype))


class Phi3VForCausalLM(PreTrainedModel, GenerationMixin):
    """Phi-3-Vision for generation and fine-tuning; `pixel_values` are the collated uint8 canvases."""

    config_class = Phi3VConfig
    config: Phi3VConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Phi3DecoderLayer", "CLIPEncoderLayer"]
    _skip_keys_device_placement = [kv_cache.CURRENT_NAME, kv_cache.DEPRECATED_NAME]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _keys_to_ignore_on_load_unexpected = [r"vision_embed_tokens\.wte\.", r"position_ids"]

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__(config)
        text = config.text_config
        self.model = Phi3VModel(config)
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        self.post_init()
        # Stop at `<|end|>` (and the end-of-text ids) rather than config.json's single eos.
        self.generation_config.eos_token_id = config.stop_token_ids
        self.generation_config.pad_token_id = text.pad_token_id
        self.generation_config.bos_token_id = text.bos_token_id

    def enable_activation_checkpointing(self) -> None:
        """Recompute layer activations in backward (less memory); non-reentrant, so frozen inputs still work.

        transformers 5.24 renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable` and deprecated
        the old name; earlier releases of the supported range have only the old one.
        """
        if hasattr(self, "activation_checkpointing_enable"):
            self.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @property
    def activation_checkpointing_enabled(self) -> bool:
        """Whether any layer recomputes its activations in backward."""
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())

    def get_input_embeddings(self) -> nn.Embedding:
        """The text token embedding (`model.embed_tokens`)."""
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the text token embedding."""
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        """The untied output projection (`lm_head`)."""
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Any = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits for every position (or the last `logits_to_keep`); loss when `labels` are given (-100 ignored)."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=kv_cache.given_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **kv_cache.as_kwargs(kv_cache.from_output(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Images go in on the prefill step only; later steps feed one new text token against the KV cache.

        `generate` hands the cache over as `cache` from transformers 5.24 and as `past_key_values` before.
        """
        cache = kv_cache.given_cache(cache, past_key_values)
        original = self.config.text_config.rope_parameters.get("original_max_position_embeddings")
        if (
            cache is not None
            and original is not None
            and input_ids.shape[1] > original
            and kv_cache.cached_length(cache) <= original
        ):
            # longrope switches to its long factors past `original`: keys cached with the short factors are stale,
            # so recompute the whole sequence (images included) once, like transformers' Phi3ForCausalLM.
            cache = None
            kwargs["next_sequence_length"] = None
            is_first_iteration = True
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            **kv_cache.as_kwargs(cache),
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["pixel_values"] = pixel_values
            model_inputs["image_sizes"] = image_sizes
        else:
            model_inputs.pop("pixel_values", None)
            model_inputs.pop("image_sizes", None)
        return model_inputs

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        source: str | Path,
        *,
        dtype: str | torch.dtype | None = None,
        attention: str | None = None,
        strict: bool = True,
    ) -> Phi3VForCausalLM:
        """Load the official layout (sharded or single safetensors) or our own save; pickle files are refused."""
        from phi3v_ray.model.loading import load_pretrained

        return load_pretrained(source, dtype=dtype, attention=attention, strict=strict)

    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | Path,
        *,
        max_shard_size: int | str = "5GB",
        state_dict: dict[str, torch.Tensor] | None = None,
        safe_serialization: bool = True,
    ) -> None:
        """Write config.json (official field names) and safetensors weights (sharded + index when over the size).

        `state_dict` lets a caller pass consolidated weights (e.g. gathered from DeepSpeed ZeRO-3) instead.
        """
        from phi3v_ray.model.loading import save_pretrained

        save_pretrained(
            self,
            save_directory,
            max_shard_size=max_shard_size,
            state_dict=state_dict,
            safe_serialization=safe_serialization,
        )
