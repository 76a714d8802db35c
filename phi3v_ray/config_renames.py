"""Old config names that keep working: a renamed section is read under its new name, with one deprecation line.

Kept apart from config.py so the typed sections read without the compatibility rules around them.
"""

from __future__ import annotations

import warnings
from typing import Any

from phi3v_ray.errors import ConfigError, RenamedSettingWarning

# Sections renamed in a release: old name -> new name. Old names keep working (YAML sections, `--set` keys and
# dotted keys in `tune.search_space`) and print one deprecation line saying what to write instead.
RENAMED_SECTIONS = {"lora": "finetune"}


def _warn_renamed(where: str, old: str) -> None:
    warnings.warn(
        f"{where}: '{old}' is now called '{RENAMED_SECTIONS[old]}' (it also selects full fine-tuning); "
        f"the old name still works for now, rename it",
        RenamedSettingWarning,
        stacklevel=3,
    )


def renamed_dotted_key(key: str, where: str) -> str:
    """`lora.rank` -> `finetune.rank` (with a deprecation message); other keys unchanged."""
    head, dot, rest = key.partition(".")
    if dot and head in RENAMED_SECTIONS:
        _warn_renamed(where, head)
        return f"{RENAMED_SECTIONS[head]}.{rest}"
    return key


def rename_old_sections(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Read old section names as the new ones; both at once is ambiguous and refused."""
    result = dict(raw)
    for old, new in RENAMED_SECTIONS.items():
        if old not in result:
            continue
        if new in result:
            raise ConfigError(
                f"{source}: both '{old}' and '{new}' sections given; '{old}' is the old name of '{new}', keep one"
            )
        _warn_renamed(source, old)
        result[new] = result.pop(old)
    tune = result.get("tune")
    if isinstance(tune, dict) and isinstance(tune.get("search_space"), dict):
        where = f"{source}: tune.search_space"
        space = {}
        for key, spec in tune["search_space"].items():
            if isinstance(spec, dict) and isinstance(spec.get("ratio_of"), str):
                spec = {**spec, "ratio_of": renamed_dotted_key(spec["ratio_of"], where)}
            space[renamed_dotted_key(key, where) if isinstance(key, str) else key] = spec
        result["tune"] = {**tune, "search_space": space}
    return result
