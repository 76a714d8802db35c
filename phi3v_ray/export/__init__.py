"""Export a trained checkpoint as something anyone can serve: a merged model in the official Phi-3-Vision layout
(or the PEFT adapter alone) plus a Hugging Face model card.

choose.py picks the checkpoint (a directory, a sweep, a leaderboard), adapter.py reads the LoRA adapter,
base_weights.py streams the base tensors, merge.py folds the adapter in (float32, then cast), shards.py writes the
safetensors shards, official_layout.py the config/tokenizer/processor files, model_card.py the README.md, and run.py
ties them together for `phi3v-ray export` and `evaluate --export-best`.
"""
