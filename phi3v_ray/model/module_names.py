"""Names of the Phi-3-V submodules that training and evaluation address by name (the official checkpoint's names).

They belong to the model's layout, not to either user: training decides what trains by these names and evaluation
decides whether several adapters can share one generate by them, so both read them from here.
"""

from __future__ import annotations

# `model.vision_embed_tokens.img_processor` is the CLIP vision tower.
VISION_TOWER = "img_processor"
# `model.vision_embed_tokens.img_projection` is the projector: Linear, GELU, Linear.
PROJECTOR = "img_projection"
# The projector's two Linear layers. Saved one by one, peft can route a mixed-adapter batch through each of them
# (it cannot route through a wrapped Sequential), so evaluation can answer for several adapters in one generate.
PROJECTOR_LAYERS = (f"{PROJECTOR}.0", f"{PROJECTOR}.2")
