"""Several GPUs and Ray clusters, on CPUs: the project's own Tuner (grid.build_tuner) with trivial trials.

Ray is started with made-up GPUs (`num_gpus=2` on a CPU machine): Ray schedules on them and sets
CUDA_VISIBLE_DEVICES per trial as it would on real cards. The trials only wait and report what they saw,
so these tests check scheduling (side by side, one GPU each, which node) and not training.
Everything Ray-side is started here and shut down here (never `ray stop`: other runs share the machine).
"""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest

from tests.conftest import toy_plan
from trainables.driver.grid import build_tuner, experiment_location, read_marker, storage_location, write_marker
from trainables.driver.launch import UsageError, start_ray


def make_trainable(wait_s: float):
    """A trial that records when it ran, its GPU and node. Built in a function so Ray ships it by value.

    It drops a file in the shared `run.barrier` folder and waits (at most `wait_s`) until the other trial's
    file is there too: side-by-side trials both see each other, so their time spans overlap for sure even
    on a busy 2-core machine; trials one after another just wait `wait_s` once."""

    def trivial_trial(config):
        import os
        import time
        from pathlib import Path

        import ray
        from ray import tune

        started = time.time()
        barrier = Path(config["run"]["barrier"])
        (barrier / config["experiment"]["name"]).write_text(str(started))
        deadline = started + wait_s
        while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        tune.report({
            "score": 1.0, "start": started, "end": time.time(),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
            "node": ray.get_runtime_context().get_node_id(),
        })

    return trivial_trial


def two_trial_plan(storage: Path, name: str, max_concurrent: int | None, barrier: Path):
    barrier.mkdir(parents=True)
    return toy_plan(["exp_a", "exp_b"], storage, name, run_extra={"barrier": str(barrier)}, use_gpu=True,
                    max_concurrent=max_concurrent)


def fit(plan_and_space, wait_s: float) -> list[dict]:
    plan, space = plan_and_space
    results = build_tuner(plan, trainable=make_trainable(wait_s), param_space=space).fit()
    assert not results.errors, results.errors
    rows = sorted((r.metrics for r in results), key=lambda m: m["start"])
    assert len(rows) == 2
    return rows


@pytest.fixture
def no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # always our own Ray here, never someone's cluster
    # (Ray's authentication mode is fixed for the whole run in conftest.py: mixed modes hung this test.)


@pytest.fixture
def fake_two_gpu_ray(no_ray_address):
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow  # starts Ray
def test_two_gpus_two_trials_side_by_side_then_one_at_a_time(fake_two_gpu_ray, tmp_path):
    storage = tmp_path / "results"
    side_by_side = fit(two_trial_plan(storage, "two-at-once", 2, tmp_path / "b1"), wait_s=60)
    first, second = side_by_side
    assert second["start"] < first["end"], f"trials did not overlap: {side_by_side}"
    assert {first["cuda"], second["cuda"]} == {"0", "1"}, "each trial sees only its own GPU"

    one_by_one = fit(two_trial_plan(storage, "one-at-once", 1, tmp_path / "b2"), wait_s=2)
    first, second = one_by_one
    assert second["start"] >= first["end"], f"max_concurrent=1 but trials overlapped: {one_by_one}"

    for name in ("two-at-once", "one-at-once"):  # one experiment folder each, every trial's results inside it
        experiment = storage / name
        trial_dirs = sorted(p.name for p in experiment.iterdir() if (p / "params.json").exists())
        assert [d.split("_")[0:2] for d in trial_dirs] == [["exp", "a"], ["exp", "b"]], trial_dirs
        for d in trial_dirs:
            result = json.loads((experiment / d / "result.json").read_text().splitlines()[-1])
            assert result["score"] == 1.0


@pytest.mark.slow  # starts Ray
def test_gpu_trials_run_on_the_cluster_node_with_the_gpu(no_ray_address, tmp_path):
    """A head without GPU plus a second node with one: the CLI's start_ray refuses the GPU-less cluster at once,
    then connects to it by address, max_concurrent follows the cluster's GPUs, and trials land on the GPU node."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    try:
        args = Namespace(address=cluster.address, dashboard=False)
        with pytest.raises(UsageError, match="has no GPU"):
            start_ray(args, "quick", use_gpu=True)
        assert not ray.is_initialized()
        # without --address a run starts its own Ray, not the cluster that plain ray.init() would join (the head
        # wrote itself to Ray's ray_current_cluster file; seen in the suite: a parallel test landed on it)
        start_ray(Namespace(address=None, dashboard=False), "smoke", use_gpu=False)
        try:
            assert ray.get_runtime_context().gcs_address != cluster.address
        finally:
            ray.shutdown()

        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        gpus = start_ray(args, "quick", use_gpu=True)
        assert gpus == 1
        plan, space = two_trial_plan(tmp_path / "shared", "on-cluster", None, tmp_path / "barrier")
        plan.max_concurrent = gpus  # what run_grid does after start_ray when --max-concurrent isn't given
        rows = fit((plan, space), wait_s=1)
        assert {r["node"] for r in rows} == {gpu_node.node_id} != {cluster.head_node.node_id}
        assert rows[1]["start"] >= rows[0]["end"], "one GPU in the cluster: one trial at a time"
        assert len([p for p in (tmp_path / "shared" / "on-cluster").iterdir() if (p / "params.json").exists()]) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_storage_uri_passes_through_and_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_location("s3://bucket/ray_results") == "s3://bucket/ray_results"
    assert storage_location(Path("rel")) == str(tmp_path / "rel")

    uri = f"file://{tmp_path}/remote"  # a URI that pyarrow.fs writes without a cloud account
    plan, _ = toy_plan(["exp_a"], uri, "exp", use_gpu=True)
    assert experiment_location(plan) == f"{uri}/exp"
    write_marker(experiment_location(plan), plan)
    assert read_marker(f"{uri}/exp")["experiments"] == ["exp_a"]
    assert read_marker(tmp_path / "remote" / "exp")["use_gpu"] is True  # the same file, as a local path
    assert read_marker(f"{uri}/missing") is None

    tuner = build_tuner(plan, trainable=lambda config: None)  # Tune takes the URI as is (no Path mangling)
    assert tuner._local_tuner.get_run_config().storage_path == uri
