"""`--adapter-only`: the PEFT adapter as trained (safetensors + adapter_config.json naming the base), for users who
keep the base and swap adapters; `PeftModel.from_pretrained(load_model(base), DIR)` loads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from phi3v_ray.checkpoint import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS_FILE,
    CheckpointMeta,
    model_source,
)
from phi3v_ray.errors import CheckpointError
from phi3v_ray.export.adapter import read_adapter


def write_adapter_package(checkpoint: Path, meta: CheckpointMeta, target: Path) -> None:
    """Copy the adapter weights and write its config with `base_model_name_or_path` set to the base."""
    if meta.mode != "lora":
        raise CheckpointError(
            f"{checkpoint}: a {meta.mode} fine-tune has no adapter; export it without --adapter-only"
        )
    source = checkpoint / ADAPTER_DIR
    read_adapter(source)  # the same checks a merge makes: a package we could not merge is not shipped either
    shutil.copyfile(source / ADAPTER_WEIGHTS_FILE, target / ADAPTER_WEIGHTS_FILE)
    config = json.loads((source / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = model_source(meta.base_model)
    config["inference_mode"] = True
    (target / ADAPTER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
