"""Where a trial's accelerator seconds went: start-up, training, evaluation, pre-flight, smoke, idle.

The worker's `timings` (journaled with trial_finished) keep their wall-time entries (git, validate,
smoke, train = the training process, evaluate = the evaluator process, journal, total); this adds
the split the swarm's efficiency is judged by:
  startup    training process start to the start of its first step (imports, tokenizer, model
             build, data loader warm-up; the whole process when it never reached a step)
  training   the rest of the training process: its steps (the first one included) and the final save
  evaluate   the fixed evaluator, start-up included
  preflight  the pre-flight evaluation; it runs beside the first step, so it is not added to the rest
  smoke      a separate smoke run (self-reported targets only)
  idle       what is left of the trial's wall time: git, validation, journal writes, the worker's own work
and `training_share`, the fraction of the trial's wall time spent in training.
"""

# the entries that together make a trial's wall time (preflight overlaps training)
BUSY = ("startup", "training", "evaluate", "smoke")


def start() -> dict:
    return {"git": 0.0, "validate": 0.0, "smoke": 0.0, "train": 0.0, "evaluate": 0.0, "journal": 0.0,
            "startup": 0.0, "training": 0.0, "preflight": 0.0}


def add_run(timings: dict, ran) -> None:
    """Add one run of worker/trial.py (its training process, pre-flight and evaluator)."""
    startup = ran.train_seconds if ran.startup_seconds is None else min(ran.startup_seconds, ran.train_seconds)
    timings["train"] += ran.train_seconds
    timings["startup"] += startup
    timings["training"] += ran.train_seconds - startup
    timings["evaluate"] += ran.eval_seconds
    timings["preflight"] += ran.preflight_seconds


def close(timings: dict, total: float) -> None:
    """Set the total, the idle rest and the training share."""
    timings["total"] = total
    timings["idle"] = max(0.0, total - sum(timings.get(k, 0.0) for k in BUSY))
    timings["training_share"] = timings.get("training", 0.0) / total if total > 0 else 0.0


def training_share(timings_list) -> dict:
    """Seconds per entry summed over trials, and the share of their wall time spent training."""
    keys = ("total", "startup", "training", "evaluate", "preflight", "smoke", "idle")
    sums = {k: sum(float((t or {}).get(k) or 0.0) for t in timings_list) for k in keys}
    sums["training_share"] = sums["training"] / sums["total"] if sums["total"] > 0 else 0.0
    return sums
