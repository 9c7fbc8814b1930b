"""A PNG timeline of an autoscaling run: replicas, queued and in-flight tasks.

``batchgrid autoscale-watch`` writes one when the fleet is back to its minimum,
so a run can be looked at, not only read::

    write_timeline(samples, Path("autoscale.png"))
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchgrid.errors import ConfigError

__all__ = ["Sample", "write_timeline"]


@dataclass(frozen=True)
class Sample:
    """One reading, ``at_s`` seconds into the run; mappings are keyed by queue."""

    at_s: float
    replicas: Mapping[str, int]
    waiting: Mapping[str, int]
    in_flight: Mapping[str, int]
    #: 95th percentile task runtime per node, seconds (when Prometheus answers).
    p95_s: Mapping[str, float] = field(default_factory=dict)


def write_timeline(samples: Sequence[Sample], path: Path) -> Path:
    """Draw replicas (top) and waiting / in-flight tasks (bottom) per queue."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(
            "the timeline needs matplotlib: pip install 'batchgrid[kube]'"
        ) from exc
    queues = sorted({queue for sample in samples for queue in sample.replicas})
    times = [sample.at_s for sample in samples]

    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    for queue in queues:
        top.step(
            times,
            [s.replicas.get(queue, 0) for s in samples],
            where="post",
            label=f"{queue} replicas",
        )
        line = bottom.plot(
            times, [s.waiting.get(queue, 0) for s in samples], label=f"{queue} queued"
        )[0]
        bottom.plot(
            times,
            [s.in_flight.get(queue, 0) for s in samples],
            linestyle="--",
            color=line.get_color(),
            label=f"{queue} in flight",
        )
    top.set_ylabel("worker replicas")
    bottom.set_ylabel("tasks")
    bottom.set_xlabel("seconds")
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
        axes.legend(loc="upper right", fontsize="small")
    figure.suptitle("batchgrid autoscaling: replicas follow queued + in-flight tasks")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
