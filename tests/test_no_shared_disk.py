"""A cluster whose nodes share no disk: every stage, from URIs only, through `ray job submit`.

The worker node runs in its own mount namespace (`unshare -m`) with an empty tmpfs over /tmp, where every local
data and output root of this test lives. A stage that writes on one node and reads the same local path on the other
fails here, as it would on cloud nodes. Object storage is moto's standalone S3 server on loopback (the emulator Ray's
own S3 tests use), reached through the same pyarrow client as AWS with only the endpoint overridden; the catalog's
images come from a loopback HTTP server, which fetch may reach only with `--allow-private-addresses`.
"""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from test_data_fetch import CatalogServer

from phi3v_ray.storage import location

from support.ray_cluster import RAY_BIN, WORKER_MARKER, TwoNodeCluster
from support.ray_cluster import two_node_cluster as start_two_node_cluster

REPO_ROOT = Path(__file__).resolve().parents[1]
PRODUCTS = 40
LOCAL_ROOT = Path(tempfile.gettempdir())  # private to the worker node: a tmpfs of its own


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[TwoNodeCluster]:
    """Head + worker node; the worker sees its own empty /tmp (Ray's session files included, as on a real node)."""
    yield from start_two_node_cluster(private_dirs=[LOCAL_ROOT])


@pytest.fixture
def catalog_server(tmp_path: Path) -> Iterator[tuple[CatalogServer, pd.DataFrame]]:
    """A generated catalog whose image URLs point at a loopback HTTP server."""
    from phi3v_ray.data.synth import synth_catalog

    source = synth_catalog(tmp_path / "source", PRODUCTS, seed=5, broken_url_share=0.0)
    table = pd.read_parquet(source / "catalog.parquet")
    server = CatalogServer()
    urls = []
    for row in table.itertuples():
        path = f"/img/{row.product_code}"
        server.routes[path] = ("image", (source / row.local_image_path).read_bytes())
        urls.append(f"{server.base}{path}")
    table = table.drop(columns=["local_image_path"]).assign(imageurl=urls)
    yield server, table
    server.close()


def _job(cluster: TwoNodeCluster, *cli: str, timeout: int = 600) -> str:
    """Run `phi3v-ray <cli>` as a submitted job on the cluster; returns its output (fails the test on an error)."""
    runtime_env = {"env_vars": {"WANDB_MODE": "offline", "DS_ACCELERATOR": "cpu"}}
    result = subprocess.run(
        [
            RAY_BIN, "job", "submit", f"--address={cluster.dashboard_url}",
            f"--runtime-env-json={json.dumps(runtime_env)}", "--", "python", "-m", "phi3v_ray.cli", *cli,
        ],
        env=cluster.env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "succeeded" in result.stdout, f"phi3v-ray {cli[:2]}:\n{output[-5000:]}"
    return output


def _worker_node_sees(cluster: TwoNodeCluster, path: Path) -> bool:
    """Whether a task placed on the worker node finds `path` (proves the mount namespace is really private)."""
    probe = (
        "import os, ray; ray.init(); "
        f"seen = ray.remote(resources={{{WORKER_MARKER!r}: 1}})(os.path.exists).remote({str(path)!r}); "
        "print('SEEN=' + str(ray.get(seen)))"
    )
    result = subprocess.run(
        [RAY_BIN, "job", "submit", f"--address={cluster.dashboard_url}", "--", "python", "-c", probe],
        env=cluster.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return "SEEN=True" in result.stdout


def _keys(uri: str) -> list[str]:
    root = location(uri)
    return sorted(where.uri.removeprefix(root.uri + "/") for where, _ in root.files(recursive=True))


def test_every_stage_runs_from_uris_only_on_nodes_that_share_no_disk(
    private_cluster: TwoNodeCluster, catalog_server, bucket: str, tmp_path: Path
) -> None:
    _server, table = catalog_server
    assert not _worker_node_sees(
        private_cluster, tmp_path / "source" / "catalog.parquet"
    )  # the head's disk only
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    source = location(f"{bucket}/source/catalog.parquet")
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    source.write_bytes(buffer.getvalue())
    catalog, runs, evaluation = f"{bucket}/catalog", f"{bucket}/runs", f"{bucket}/evaluation"
    experiment = str(REPO_ROOT / "experiments" / "demo.yaml")
    settings = {
        "data.catalog_dir": catalog,
        "data.prepared_dir": f"{bucket}/prepared",
        "data.max_train_examples": 8,
        "data.max_eval_examples": 4,
        "run.storage_path": runs,
        "run.name": "nsd",
        "run.max_steps": 2,
        "run.eval_every": 2,
        "run.checkpoint_every": 2,
        "run.val_generate_samples": 0,
        "optim.micro_batch": 2,
        "scaling.placement_strategy": "STRICT_SPREAD",  # one training worker per node
        "wandb.mode": "offline",
        "evaluate.max_new_tokens": 8,
    }
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]

    # 1. fetch: Ray tasks on both nodes write the images straight into the bucket.
    _job(private_cluster, "data", "fetch", "--source", source.uri, "--out", catalog, "--allow-private-addresses",
         "--rows-per-task", "8")  # fmt: skip
    manifest = pd.read_parquet(io.BytesIO(location(f"{catalog}/manifest.parquet").read_bytes()))
    assert len(manifest) == PRODUCTS and (manifest["status"] == "ok").all(), manifest["status"].value_counts()
    images = [key for key in _keys(catalog) if key.startswith("images/")]
    assert len(images) == PRODUCTS
    # 2. split, 3. prepare (Ray Data actors on both nodes read the bucket and write the prepared parquet to it)
    _job(private_cluster, "data", "split", catalog)
    prepared_output = _job(private_cluster, "data", "prepare", experiment, *sets)
    assert "MISMATCH" not in prepared_output
    assert any(key.endswith("meta.json") for key in _keys(f"{bucket}/prepared"))
    # 4. a 2-worker training run, one worker per node, checkpoints into the bucket
    _job(private_cluster, "train", experiment, *sets)
    checkpoints = sorted({key.split("/meta.json")[0] for key in _keys(runs) if key.endswith("/meta.json")})
    assert checkpoints, _keys(runs)
    latest = f"{runs}/{checkpoints[-1]}"
    assert location(f"{latest}/adapter/adapter_model.safetensors").is_file()
    # 5. evaluate the run from its URI, leaderboard into the bucket
    _job(
        private_cluster, "evaluate", experiment, *sets, "--checkpoints", f"{runs}/nsd", "--output", evaluation
    )
    board = pd.read_csv(io.BytesIO(location(f"{evaluation}/leaderboard.csv").read_bytes()))
    assert {"trivial", "base"} <= set(board["checkpoint"]) and len(board) >= 3

    # The checkpoint loads back from its URI, on this machine, with nothing shared but the bucket.
    from phi3v_ray.checkpoint import load_trained_model

    model = load_trained_model(latest)
    assert any("lora_" in name for name, _ in model.named_parameters())
    # Nothing was written to the local roots (the test's own folder holds only the source catalog it generated).
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not any(Path.cwd().glob("s3:*"))
