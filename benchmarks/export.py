"""Peak memory and wall time of `phi3v-ray export` on a model with the official CLIP ViT-L/14-336 vision tower.

    python benchmarks/export.py            # tiny language model + official vision tower (~0.6 GB in bf16)

Builds a base (official layout, bf16) and a LoRA checkpoint on it (language LoRA, vision LoRA, projector), then runs
the export in a fresh process and reads that process's peak RSS. The baseline is a process that imports the same
modules and exports nothing; the export's own memory is the difference. Shards are sized as a fraction of the model
like the default 2 GB shards are of the 8.3 GB official model, so the ratio measured here is the ratio there.
Target: peak <= 1.5x the model's size. The 4.2B figures are a linear extrapolation (bytes scale, the baseline does
not).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

OFFICIAL_BF16_BYTES = 4_146_621_440 * 2
DEFAULT_SHARD_BYTES = 2 * 10**9
PROBE = """
import sys, time, json
started = time.perf_counter()
from phi3v_ray.cli import main
imported = time.perf_counter()
if sys.argv[1:] == ["--imports-only"]:  # the baseline: everything an export imports, no work
    import peft, safetensors.torch, transformers, torch
    import phi3v_ray.export.base_weights, phi3v_ray.export.merge, phi3v_ray.export.model_card
    import phi3v_ray.export.official_layout, phi3v_ray.export.run, phi3v_ray.model.tokenizer
    code = 0
else:
    code = main(sys.argv[1:])
done = time.perf_counter()
# VmHWM is this process's own high-water mark; ru_maxrss would include the parent's RSS at fork time.
peak_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"code": code, "peak_bytes": peak_kib * 1024, "export_s": done - imported}))
"""


def _measure(args: list[str]) -> dict:
    """Run the CLI in a fresh process; its exit code, peak RSS and the wall time of the command itself."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _prepare(workdir: Path) -> tuple[Path, int]:
    """The official-vision base (bf16) and a LoRA checkpoint on it; returns (checkpoint, base bytes)."""
    from phi3v_ray.config import ModelSection

    from support.export_checkpoints import make_rich_lora_checkpoint, save_official_vision_base

    base_dir = save_official_vision_base(workdir / "base")
    base = ModelSection(path=str(base_dir), dtype="bfloat16", num_crops=4)
    checkpoint = make_rich_lora_checkpoint(workdir / "sweep" / "trial" / "checkpoint_000001", base=base)
    size = sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))
    return checkpoint, size


def main() -> int:
    """Print the measured figures, ratios and the 4.2B extrapolation."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", help="keep the files here (default: a temp dir)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="phi3v-export-bench-") as scratch:
        workdir = Path(options.workdir or scratch)
        checkpoint, model_bytes = _prepare(workdir)
        shard_bytes = max(1, model_bytes * DEFAULT_SHARD_BYTES // OFFICIAL_BF16_BYTES)
        baseline = _measure(["--imports-only"])
        started = time.perf_counter()
        export = _measure(
            ["export", "--checkpoint", str(checkpoint), "--out", str(workdir / "export")]
            + ["--dtype", "bfloat16", "--max-shard-size", str(shard_bytes), "--overwrite"]
        )
        process_s = time.perf_counter() - started
        if export["code"] != 0:
            print("export failed", export)
            return 1
        written = sum(p.stat().st_size for p in (workdir / "export").glob("*.safetensors"))
    own = export["peak_bytes"] - baseline["peak_bytes"]
    gb = 1e9
    print(f"model (bf16, official vision tower): {model_bytes / gb:.3f} GB; written {written / gb:.3f} GB")
    print(f"shard size: {shard_bytes / gb:.3f} GB (default 2 GB scaled to this model)")
    print(f"peak RSS, export process:       {export['peak_bytes'] / gb:.3f} GB")
    print(f"peak RSS, imports only:         {baseline['peak_bytes'] / gb:.3f} GB")
    print(f"export's own peak:              {own / gb:.3f} GB")
    print(f"ratio peak / model (total):     {export['peak_bytes'] / model_bytes:.2f}x  (target <= 1.5x)")
    print(f"ratio peak / model (own):       {own / model_bytes:.2f}x")
    print(f"wall time: export {export['export_s']:.1f} s, whole process {process_s:.1f} s")
    scale = OFFICIAL_BF16_BYTES / model_bytes
    projected = baseline["peak_bytes"] + own * scale
    print(
        f"extrapolated to 4.2B (8.29 GB bf16): peak ~{projected / gb:.1f} GB "
        f"({projected / OFFICIAL_BF16_BYTES:.2f}x), export ~{export['export_s'] * scale / 60:.1f} min on this machine"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
