"""The worker as a real Ray actor: placed by the `mlx` resource, answering info() and
heartbeat() while run_trial() runs, abort() of a running trial, graceful stop.
One test (starting Ray takes ~10 s); stand-in commits keep the trials fast.
"""

import time

import pytest

from test_worker import GOOD_TRAIN, STUB_FP, candidate, standin_repo
from worker import make_full_bundle

ray = pytest.importorskip("ray")

SLEEPER = 'import time\nprint("step 00000 (0.0%) | loss: 4.0 | remaining: 600s", flush=True)\ntime.sleep(3600)\n'


def test_worker_as_ray_actor(tmp_path):
    from worker.actor import ACTOR_OPTIONS, remote_class

    assert ACTOR_OPTIONS["resources"] == {"mlx": 1} and ACTOR_OPTIONS["num_cpus"] == 0
    path, base = standin_repo(tmp_path / "src")
    ray.init(address="local", num_cpus=1, resources={"mlx": 1}, include_dashboard=False, log_to_driver=False)
    try:
        actor = remote_class().remote("ray-1", str(tmp_path / "w"), campaign="raytest", heartbeat_s=0)
        ray.get(actor.load_repo.remote(make_full_bundle(path)), timeout=300)
        info = ray.get(actor.info.remote(), timeout=300)
        assert info["name"] == "ray-1" and info["data_fingerprint"] == STUB_FP and info["problem"] is None

        # the one `mlx` resource is taken: a second worker actor cannot be placed on this node
        second = remote_class().remote("ray-2", str(tmp_path / "w2"), campaign="raytest", heartbeat_s=0)
        ready, _ = ray.wait([second.info.remote()], timeout=2)
        assert ready == []
        ray.kill(second)

        ok = ray.get(actor.run_trial.remote(candidate(path, base, {"train.py": GOOD_TRAIN + "# ray\n"},
                                                      seed=4, smoke=False)), timeout=120)
        assert ok.status == "ok" and ok.val_bpb == pytest.approx(1.504)

        # a dict spec works too; abort() answers while run_trial() is busy
        spec = candidate(path, base, {"train.py": SLEEPER}, smoke=False, time_budget=600)
        running = actor.run_trial.remote({k: v for k, v in vars(spec).items()})
        deadline = time.monotonic() + 120    # generous: a loaded machine
        while ray.get(actor.heartbeat.remote(), timeout=120).get("phase") != "train":
            assert time.monotonic() < deadline, "the trial never reached the train phase"
            time.sleep(0.1)
        assert ray.get(actor.abort.remote(spec.trial_id), timeout=120) is True
        aborted = ray.get(running, timeout=300)
        assert aborted.status == "aborted" and aborted.trial_id == spec.trial_id

        assert ray.get(actor.stop.remote(graceful=True), timeout=300) is True
    finally:
        ray.shutdown()
