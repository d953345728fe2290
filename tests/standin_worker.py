"""A Ray actor with worker/actor.py's API that trains nothing, for the tests and benches that
drive the real coordinator (bench/scale.py, bench/campaign_truth.py, the lease test): a trial
lasts `trial_s` and reports value(spec), writing trial_started, trial_progress and
trial_finished (under the worker's own result id) to the journal as a real worker does."""

import time


def standin_class(value, trial_s: float = 0.0, track: str = "standin/bench/1s/000000000000",
                  progress_s: float | None = None, reply_lag_s: float = 0.0, answer_pings: bool = True):
    """value(spec dict) -> the trial's metric; track: what every stand-in reports as its own.
    progress_s: a trial_progress event this often during the trial; reply_lag_s: Ray's reply comes
    this long after trial_finished is journaled; answer_pings False: heartbeat() never answers."""
    import ray

    from journal import Event, open_journal
    from journal.events import result_event_id
    from worker import TrialResult

    @ray.remote(num_cpus=0, resources={"mlx": 1}, max_concurrency=4)
    class StandIn:
        def __init__(self, name, workdir, journal_url=None, campaign="bench", expected_fingerprint=None,
                     fixed_hashes=None, env=None, **options):
            self.name = name
            self.journal = open_journal(journal_url, campaign=campaign) if journal_url else None

        def load_repo(self, bundle):
            return "loaded"

        def info(self):
            hardware_class, profile = track.split("/")[:2]
            return {"name": self.name, "hardware_class": hardware_class, "hardware": {}, "mlx_backend": "none",
                    "mlx_version": None, "data_fingerprint": "0" * 64, "profile": profile, "time_budget": 1,
                    "track": track, "problem": None}

        def _append(self, type_, data, event_id=None):
            if self.journal is not None:
                ev = Event(type=type_, source=self.name, data={"worker": self.name, **data})
                if event_id:
                    ev.id = event_id
                self.journal.append(ev)

        def run_trial(self, spec):
            common = {k: spec.get(k) for k in ("trial_id", "commit", "seed", "kind", "candidate_id", "track")}
            self._append("trial_started", common)
            end = time.time() + trial_s
            while progress_s and time.time() < end:
                self._append("trial_progress", {"trial_id": spec["trial_id"], "step": 1, "progress": 0.5})
                time.sleep(min(progress_s, max(0.0, end - time.time())))
            time.sleep(max(0.0, end - time.time()))
            v = value(spec)
            r = TrialResult(spec["trial_id"], self.name, spec["commit"], spec["seed"], "ok", val_bpb=v,
                            metrics={"val_bpb": v}, timings={"train": trial_s})
            self._append("trial_finished", {**common, "status": "ok", "crash_class": None, "reason": "",
                                            "val_bpb": v, "metrics": r.metrics, "log_tail": "", "log_path": None,
                                            "timings": r.timings}, result_event_id(spec["trial_id"]))
            time.sleep(reply_lag_s)
            return r

        def heartbeat(self):
            while not answer_pings:
                time.sleep(3600)
            return {"worker": self.name, "time": time.time()}

        def abort(self, trial_id=None):
            return False

        def stop(self, graceful=True, timeout=None):
            if self.journal is not None:
                self.journal.close()
            return True

    return StandIn
