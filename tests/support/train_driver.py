"""A training run's driver as its own process, on the Ray cluster at RAY_ADDRESS (tests that bring up extra nodes).

The pytest process keeps its own local Ray for the other tests, so a run on a multi-node test cluster needs a driver
process of its own. Usage: `python train_driver.py RESULT_JSON TMP_DIR OVERRIDE...`: the demo experiment with test
storage under TMP_DIR and the overrides, 8 train / 4 val tiny examples; writes the final metrics, the checkpoint
path and the error (if any) as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))


def main() -> int:
    import ray
    from test_train_support import demo_config, tiny_datasets

    from phi3v_ray.train.launcher import build_trainer

    result_file, tmp, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    ray.init(log_to_driver=False)  # RAY_ADDRESS names the cluster
    config = demo_config(tmp, *overrides)
    result = build_trainer(config, tiny_datasets(n_train=8, n_val=4)).fit()
    result_file.write_text(
        json.dumps(
            {
                "metrics": result.metrics,
                "checkpoint": result.checkpoint.path if result.checkpoint else None,
                "error": None if result.error is None else repr(result.error),
            }
        )
    )
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
