"""Progress plot of a campaign: one panel per track, every trial a dot over time,
the mainline as a step line with its promotions annotated, the held-out test
line beside it. matplotlib is imported here only (Agg: no display needed)."""

import datetime

from .export import short, trial_status
from .views import CampaignView

# Dot colours by what became of the trial (upstream words where they fit).
COLORS = {"keep": "tab:green", "discard": "tab:red", "pending": "tab:blue", "heldout": "tab:purple"}
FIGSIZE_PER_TRACK = (11, 3.8)


def _dt(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc)


def plot(state: CampaignView, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    tracks = [n for n in state.track_names() if state.trials_of(track=n)] or [None]
    w, h = FIGSIZE_PER_TRACK
    fig, axes = plt.subplots(len(tracks), 1, figsize=(w, h * len(tracks)), squeeze=False)
    end = state.last_time
    for ax, name in zip(axes[:, 0], tracks):
        if name is None:
            ax.text(0.5, 0.5, "no trials yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        trials = [t for t in state.trials_of(track=name) if t.finished]
        ok = [t for t in trials if t.value is not None]
        for status, color in COLORS.items():
            pts = [t for t in ok if trial_status(state, t) == status]
            if pts:
                ax.scatter([_dt(t.finished) for t in pts], [t.value for t in pts], s=18, color=color,
                           alpha=0.8, label=f"trial: {status}", zorder=3)
        crashed = [t for t in trials if t.value is None]
        if crashed and ok:
            top = max(t.value for t in ok)
            ax.scatter([_dt(t.finished) for t in crashed], [top] * len(crashed), marker="x",
                       color="black", label="trial: crash (no value)", zorder=3)

        curve = state.mainline_curve(name)
        if curve:
            xs = [_dt(t) for t, _v, _c in curve] + [_dt(max(end, curve[-1][0]))]
            ys = [v for _t, v, _c in curve] + [curve[-1][1]]
            ax.step(xs, ys, where="post", color="black", linewidth=1.6, label="mainline", zorder=2)
        tr = state.tracks.get(name)
        held = [(s.time, s.test_bpb) for s in (tr.history if tr else [])
                if s.action == "heldout" and isinstance(s.test_bpb, (int, float))]
        if held:
            xs = [_dt(t) for t, _v in held] + [_dt(max(end, held[-1][0]))]
            ys = [v for _t, v in held] + [held[-1][1]]
            ax.step(xs, ys, where="post", color="tab:purple", linestyle="--", linewidth=1.2,
                    label="held-out test_bpb", zorder=2)
        for s in (tr.history if tr else []):
            if s.action in ("promoted", "reverted") and curve:
                level = next((v for t, v, c in curve if t == s.time), None)
                if level is None:
                    continue
                c = state.candidates.get(s.candidate_id or "")
                hyp = state.hypotheses.get(c.hypothesis_id or "") if c else None
                text = f"{s.action} {short(s.commit)}" + (f"\n{hyp.title[:40]}" if hyp and hyp.title else "")
                ax.annotate(text, (_dt(s.time), level), xytext=(6, 14), textcoords="offset points",
                            fontsize=7, arrowprops=dict(arrowstyle="-", color="gray", lw=0.6))
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_ylabel("val_bpb" + (" (lower is better)" if state.direction == "minimize" else ""))
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=datetime.timezone.utc))
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time (UTC)")
    fig.suptitle(f"campaign {state.campaign}")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
