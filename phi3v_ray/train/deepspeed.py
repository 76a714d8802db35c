"""DeepSpeed config from the typed experiment config.

One function, so the ZeRO settings a run uses can be read (and tested) without starting DeepSpeed. The optimizer is
declared here rather than built in the loop because DeepSpeed must own it to offload it to the CPU (it swaps in its
CPU Adam) and to shard its state under ZeRO.
"""

from __future__ import annotations

from typing import Any

from phi3v_ray.config import ExperimentConfig
from phi3v_ray.train.schedule import samples_per_step


def build_deepspeed_config(config: ExperimentConfig, *, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """The dict handed to `deepspeed.initialize(config=...)` for this experiment and worker count."""
    optim, ds = config.optim, config.deepspeed
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": on_gpu,
        "contiguous_gradients": True,
        "reduce_bucket_size": ds.reduce_bucket_size,
    }
    if ds.zero_stage == 2:
        zero["allgather_bucket_size"] = ds.allgather_bucket_size
    else:
        zero["stage3_prefetch_bucket_size"] = ds.allgather_bucket_size
        # Full fine-tunes save one consolidated 16-bit model; gathering is needed for that (and cheap for LoRA).
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    # Offload settings live under zero_optimization; at the top level DeepSpeed ignores them.
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}

    return {
        "train_micro_batch_size_per_gpu": optim.micro_batch,
        "gradient_accumulation_steps": optim.grad_accum,
        "train_batch_size": samples_per_step(config, world_size),
        "gradient_clipping": optim.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optim.lr,
                "betas": list(optim.betas),
                "eps": optim.eps,
                "weight_decay": optim.weight_decay,
                # FusedAdam needs CUDA; on CPU the plain torch AdamW runs the same update.
                "torch_adam": not on_gpu,
            },
        },
        "bf16": {"enabled": config.model.dtype == "bfloat16"},
        "fp16": {"enabled": config.model.dtype == "float16"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # the loop reports its own metrics; keep DeepSpeed's log quiet
        "wall_clock_breakdown": False,
    }


def prebuild_cpu_comm_op() -> str | None:
    """Compile DeepSpeed's CPU shared-memory collective op once, in this process, before workers start.

    On CPU every worker's `deepspeed.initialize` JIT-loads this op; when the extension cache is cold (a fresh machine,
    or a cache built for another venv) the first workers compile it while holding a lock, and on a busy 2-core box that
    took 46 s of the demo's first trials. Built here first, the workers only load it. Returns why it was skipped, if it
    was (no compiler, op not compatible): the workers then do what they would have done anyway.
    """
    try:
        from deepspeed.accelerator import get_accelerator
        from deepspeed.ops import __compatible_ops__

        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if builder is None or not __compatible_ops__.get(builder.NAME, False):
            return "not used by this accelerator"
        builder.load(verbose=False)
    except Exception as error:  # a missing compiler must not stop a run that could still go without the op
        return f"{type(error).__name__}: {error}".splitlines()[0]
    return None
