"""The worker as a Ray actor: one per accelerator, placed by the custom resource `mlx`.

Each Mac joins the cluster with `ray start --address=HEAD --resources='{"mlx": 1}'`,
so exactly one worker actor lands on each. The actor takes no CPU from Ray's
bookkeeping (num_cpus=0: the trial's process uses the machine, not Ray's slots)
and runs up to four calls at once, so info(), heartbeat() and abort() answer
while run_trial() is busy.

A Ray worker process inherits the environment of the raylet that started it
(the shell that ran `ray start`, or the driver's for a local Ray): the actor
drops every secret-looking variable (ANTHROPIC_API_KEY, the journal URL, ...;
safety.redact) from its own environment before the Worker exists.
"""

from safety.redact import scrub_environ

from .worker import Worker

# How Ray places and runs the actor.
ACTOR_OPTIONS = {"num_cpus": 0, "resources": {"mlx": 1}, "max_concurrency": 4}


class WorkerActor:
    """Worker's API over Ray. Constructor arguments are Worker's (CONTRACTS.md)."""

    def __init__(self, *args, **kwargs):
        scrub_environ()
        self.worker = Worker(*args, **kwargs)

    def info(self) -> dict:
        return self.worker.info()

    def load_repo(self, bundle_bytes: bytes) -> str:
        return self.worker.load_repo(bundle_bytes)

    def run_trial(self, spec):
        return self.worker.run_trial(spec)

    def heartbeat(self) -> dict:
        return self.worker.heartbeat()

    def abort(self, trial_id=None) -> bool:
        return self.worker.abort(trial_id)

    def stop(self, graceful: bool = True, timeout: float | None = None) -> bool:
        """Finish (graceful) or abort the current trial, flush the journal; then the actor exits."""
        import ray
        clean = self.worker.stop(graceful, timeout)
        # leave after this reply: exit_actor() here would also swallow the return value
        ray.get_runtime_context().current_actor.__ray_terminate__.remote()
        return clean


def remote_class(**options):
    """The ray.remote class; `options` override ACTOR_OPTIONS (e.g. resources for a test)."""
    import ray
    return ray.remote(**{**ACTOR_OPTIONS, **options})(WorkerActor)
