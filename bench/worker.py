"""The benchmark's own Celery tasks, on batchgrid's Celery configuration.

Run by the benchmark as ``celery -A bench.worker worker -Q bench``:

- ``bench.noop`` does nothing, so its cost is the price of one task;
- ``bench.naive.aggregate`` is the tutorial design batchgrid replaces: rows travel
  through the broker as task arguments (``DataFrame.to_dict("records")``) and the
  worker rebuilds a DataFrame to aggregate them.

The app is built by ``batchgrid.celery_app.create_app`` (acks late, JSON only,
prefetch one), so the no-op cost is the one batchgrid's own tasks pay.
"""

from typing import Any

import pandas as pd

from batchgrid.celery_app import create_app
from batchgrid.settings import Settings
from bench.harness import NAIVE_TASK, NOOP_TASK

__all__ = ["aggregate_records", "app", "noop"]

app = create_app(Settings())


@app.task(name=NOOP_TASK)
def noop() -> None:
    """Do nothing: what is measured is the delivery."""


@app.task(name=NAIVE_TASK)
def aggregate_records(
    records: list[dict[str, Any]], by: str, value: str
) -> dict[str, list[float]]:
    """Per group of ``by``: count, sum, min and max of ``value`` over the records."""
    frame = pd.DataFrame.from_records(records)
    grouped = frame.groupby(by)[value].agg(["count", "sum", "min", "max"])
    return {
        str(key): [int(row["count"]), float(row["sum"]), row["min"], row["max"]]
        for key, row in grouped.iterrows()
    }
