"""README.md for an export, in Hugging Face model-card form (YAML front matter, then sections).

It says what the weights are (base, training data and row counts, the trial's hyperparameters), how good they are
(rank and held-out metrics from the leaderboard, next to the trivial predictor's) and how to load them. It never
carries a machine path or a secret: locations are reduced to their last name, and keys that look like credentials
are left out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi3v_ray.checkpoint import CheckpointMeta
from phi3v_ray.errors import UserError
from phi3v_ray.evaluation.leaderboard import SCORE_COLUMNS
from phi3v_ray.export.choose import Choice

OFFICIAL_HUB_ID = "microsoft/Phi-3-vision-128k-instruct"
SECRET_WORDS = ("key", "token", "secret", "password", "credential")
HYPERPARAMETER_SECTIONS = ("finetune", "optim")
RUN_KEYS = ("epochs", "max_steps", "seed")
CARD_METRICS = SCORE_COLUMNS  # the leaderboard's own score columns, in its order


@dataclass(frozen=True)
class CardFacts:
    """What the card reports, gathered by the caller."""

    meta: CheckpointMeta
    choice: Choice
    dtype: str
    adapter_only: bool
    split_rows: dict[str, int | None]


def public_name(value: str) -> str:
    """A location without the machine: its last name (a hub id `owner/name` stays as it is)."""
    text = str(value).rstrip("/")
    if "://" in text or text.startswith(("/", "~", ".")) or "\\" in text or Path(text).exists():
        return Path(text.split("://")[-1]).name or text
    return text


def base_description(meta: CheckpointMeta) -> tuple[str, str | None]:
    """(how the card names the base, its hub id for the front matter when it has one)."""
    base = meta.base_model
    if base.path:
        name = public_name(base.path)
        return name, name if name.count("/") == 1 else None
    return f"phi3v-ray preset '{base.preset}' (same architecture as {OFFICIAL_HUB_ID})", None


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return public_name(value) if ("/" in value or "\\" in value) else value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def hyperparameters(experiment: dict[str, Any]) -> dict[str, Any]:
    """The trial's fine-tuning, optimiser and run-length settings, minus anything that looks like a secret."""
    chosen: dict[str, Any] = {}
    sections = {name: experiment.get(name) or {} for name in HYPERPARAMETER_SECTIONS}
    sections["run"] = {key: value for key, value in (experiment.get("run") or {}).items() if key in RUN_KEYS}
    for section, values in sections.items():
        for key, value in values.items():
            if any(word in key.lower() for word in SECRET_WORDS) or isinstance(value, dict):
                continue
            chosen[f"{section}.{key}"] = _plain(value)
    return chosen


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def reported_figures(row: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
    """(the row's card metrics, the split they come from, the split it was ranked on).

    A leaderboard ranked on one split (`evaluate.select_on`) carries the chosen checkpoint's held-out figures as
    `<split>_<metric>` columns: those are the ones to publish, not the figures the choice was made on.
    """
    ranked_on = row.get("split")
    for split in ("test", "val", "train"):
        if split != ranked_on and row.get(f"{split}_n_examples") is not None:
            return {m: row.get(f"{split}_{m}") for m in CARD_METRICS}, split, ranked_on
    return {m: row[m] for m in CARD_METRICS if m in row}, ranked_on, ranked_on


def _metrics_table(facts: CardFacts) -> list[str]:
    row = facts.choice.row
    if row is None:
        return ["No leaderboard names this checkpoint: run `phi3v-ray evaluate` on it to measure it.", ""]
    board = facts.choice.leaderboard
    figures, reported_on, ranked_on = reported_figures(row)
    trivial_row = board.trivial_row() if board else None
    trivial = reported_figures(trivial_row)[0] if trivial_row else {}
    where = f"the `{reported_on}` split" if reported_on else "the held-out split"
    ranked = f" (chosen on the `{ranked_on}` split)" if ranked_on and ranked_on != reported_on else ""
    lines = [
        f"Rank **{row.get('rank')}** of {len(board.rows) if board else '?'} contestants{ranked}, "
        f"ranked by `{board.primary_metric if board else '?'}`; figures from {where}.",
        "",
        "| metric | this model | trivial predictor |",
        "|---|---|---|",
    ]
    for metric, value in figures.items():
        lines.append(f"| {metric} | {_cell(value)} | {_cell(trivial.get(metric))} |")
    return [*lines, ""]


def _front_matter(facts: CardFacts, hub_id: str | None, metrics: dict[str, Any]) -> list[str]:
    lines = ["---", "library_name: " + ("peft" if facts.adapter_only else "transformers")]
    if hub_id:
        lines.append(f"base_model: {hub_id}")
    lines += ["pipeline_tag: image-text-to-text", "tags:", "- phi3_v", "- phi3v-ray", "- product-catalog"]
    if facts.adapter_only:
        lines.append("- lora")
    if metrics:
        lines.append("metrics:")
        lines += [f"- {name}" for name in metrics]
    lines += ["---", ""]
    return lines


def _how_to_load(facts: CardFacts) -> list[str]:
    if facts.adapter_only:
        return [
            "```python",
            "from peft import PeftModel",
            "from phi3v_ray.model.loading import load_model",
            "",
            "base, tokenizer = load_model(BASE)  # the base named in adapter_config.json",
            'model = PeftModel.from_pretrained(base, "THIS_DIRECTORY")',
            "```",
            "",
            "vLLM cannot apply LoRA adapters to Phi-3-Vision: export the merged model (without `--adapter-only`) "
            "to serve it.",
        ]
    return [
        "With phi3v-ray (no remote code):",
        "",
        "```python",
        "from phi3v_ray.model.loading import load_model",
        'model, tokenizer = load_model("THIS_DIRECTORY", dtype="bfloat16")',
        "```",
        "",
        "or `phi3v-ray predict --checkpoint THIS_DIRECTORY photo.jpg`. With vLLM, which serves `Phi3VForCausalLM` "
        "from the official layout:",
        "",
        "```bash",
        "vllm serve THIS_DIRECTORY --max-model-len 4096",
        "```",
        "",
        f"vLLM reads the weights and config natively; for images it uses the Phi-3-Vision processor code published "
        f"in {OFFICIAL_HUB_ID} (processing_phi3_v.py), which this export does not ship: nothing here runs remote "
        f"code.",
    ]


def render_card(facts: CardFacts) -> str:
    """The model card text."""
    meta, choice = facts.meta, facts.choice
    base_name, hub_id = base_description(meta)
    metrics = reported_figures(choice.row)[0] if choice.row else {}
    data = meta.experiment.get("data") or {}
    catalog = public_name(data.get("catalog_dir", "unknown"))
    title = "adapter" if facts.adapter_only else "merged model"
    lines = _front_matter(facts, hub_id, metrics)
    lines += [
        f"# {public_name(choice.name)} — Phi-3-Vision fine-tuned for product catalogs ({title})",
        "",
        "Names, categorises and prices a product from its photo: `Product: …, Category: …, Full Price: …`.",
        "",
        "## Model",
        "",
        f"- Base model: {base_name}",
        f"- Fine-tuning: {meta.mode}"
        + (f" (trial {meta.trial})" if meta.trial else "")
        + f", step {meta.step}",
        f"- Chosen because: {choice.reason}",
        f"- Weights: {'PEFT LoRA adapter (safetensors)' if facts.adapter_only else facts.dtype + ', official layout'}",
        f"- Image crops: num_crops = {meta.base_model.num_crops}",
        "",
        "## Training data",
        "",
        f"- Catalog: {catalog}",
    ]
    lines += [f"- {split} rows: {_cell(count)}" for split, count in facts.split_rows.items()]
    lines += ["", "## Hyperparameters", "", "```json", json.dumps(hyperparameters(meta.experiment), indent=2)]
    lines += ["```", "", "## Held-out results", "", *_metrics_table(facts), "## How to load", ""]
    lines += _how_to_load(facts)
    lines += [
        "",
        "## Intended use",
        "",
        "Drafting catalog entries (title, category, list price) from product photos of the catalog it was trained "
        "on, for a person to review.",
        "",
        "## Limitations",
        "",
        "- Trained on one catalog: products, categories and price levels outside it are guessed, not known.",
        "- Prices are estimates from the photo alone; check them against the price list before use.",
        "- The metrics above come from one held-out split; they measure this catalog, not general ability.",
        "- Answers can be confidently wrong; the parse rate shows how often an answer was unreadable.",
        "",
    ]
    return "\n".join(lines)


def split_row_counts(experiment: dict[str, Any]) -> dict[str, int | None]:
    """Rows per split of the training catalog; None where the catalog cannot be read from here."""
    from phi3v_ray.data.split import load_split

    catalog = (experiment.get("data") or {}).get("catalog_dir")
    counts: dict[str, int | None] = {}
    for split in ("train", "val", "test"):
        try:
            counts[split] = len(load_split(catalog, split)) if catalog else None
        except (UserError, OSError):  # a catalog on another machine or deleted since: the card says "–"
            counts[split] = None
    return counts
