"""The ``batchgrid`` command line: run workers, submit jobs, watch them.

A flag that mirrors a setting also reads its ``BATCHGRID_*`` environment
variable (see settings). With no broker URL configured, ``images``, ``table``,
``serve``, ``loadgen`` and ``demo`` start an embedded Valkey server and local
worker processes for the command's duration.
"""

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from pydantic_settings import SettingsError
from redis import RedisError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from batchgrid.celery_app import create_app
from batchgrid.client import ApiClient
from batchgrid.errors import BatchgridError, ConfigError, JobStateError
from batchgrid.jobs import JobRecord, JobStore
from batchgrid.local import embedded_broker, local_cluster
from batchgrid.producer import Producer
from batchgrid.schemas import ImagesRequest, TablesRequest, plan_request
from batchgrid.settings import Settings, get_settings

__all__ = ["app", "main", "print_image_outcomes", "print_table", "wait_for"]

app = typer.Typer(
    help="Distributed batch work on Celery and Redis: images and large CSV tables.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

#: Exit codes, for scripts.
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_ITEMS_FAILED, EXIT_TIMEOUT = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
#: How long serve lets requests in flight finish after Ctrl-C or SIGTERM.
SERVE_SHUTDOWN_S = 30
#: How often a waiting command reads the job record.
POLL_INTERVAL_S = 0.2
#: How long a waiting command pauses after the job store did not answer.
STORE_RETRY_S = 1.0
#: A job still queued after this long gets a hint that no worker may be running.
IDLE_HINT_S = 15.0
#: Listing every image outcome stops being useful past this many; failures still print.
MAX_LISTED_ITEMS = 50


class JobKind(StrEnum):
    """The two kinds of job."""

    images = "images"
    tables = "tables"


JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print a machine-readable result.")
]
Workers = Annotated[
    int,
    typer.Option(
        "--workers", "-w", min=1, help="Local worker processes (embedded mode)."
    ),
]
Concurrency = Annotated[
    int | None,
    typer.Option(
        "--concurrency",
        "-c",
        min=1,
        envvar="BATCHGRID_CONCURRENCY",
        help="Pool processes per worker (default: one per core).",
    ),
]
Api = Annotated[
    str | None,
    typer.Option(
        "--api",
        envvar="BATCHGRID_API_URL",
        help="Talk to a producer at this URL instead of to the broker.",
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="BATCHGRID_API_TOKEN",
        help="Bearer token for the producer: its API (--api) and its /metrics.",
        show_default=False,
    ),
]
Timeout = Annotated[
    float,
    typer.Option("--timeout", min=1, help="Stop waiting after this many seconds."),
]


def _settings() -> Settings:
    """The settings, or one line naming each environment variable at fault."""
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{_location(error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"bad settings: {problems}") from None
    except SettingsError as exc:  # a JSON-valued variable that is no JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = _variable(field.group(1)) if field else "a BATCHGRID_ variable"
        raise ConfigError(
            f"bad settings: {name} is not valid JSON ({exc.__cause__ or exc})"
        ) from None
    except BatchgridError as exc:
        raise ConfigError(f"bad settings: {exc}") from None


def _location(loc: tuple[int | str, ...]) -> str:
    """Where a settings error lies: its variable, then the place inside its JSON
    (``BATCHGRID_SCHEDULE[0].params``)."""
    if not loc:
        return "settings"
    inside = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:]
    )
    return _variable(loc[0]) + inside


def _variable(field: object) -> str:
    """The environment variable of a settings field."""
    return f"BATCHGRID_{str(field).upper()}"


@contextmanager
def _errors() -> Iterator[None]:
    """Turn expected failures into one readable line and an exit code."""
    try:
        yield
    except BatchgridError as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        console.print(f"[bold red]error:[/] {problems}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except (OperationalError, RedisError, ConnectionError) as exc:
        console.print(
            f"[bold red]error:[/] the broker is unreachable ({exc}); check "
            "BATCHGRID_BROKER_URL and that the server is up",
            soft_wrap=True,  # one line, whatever the terminal width
        )
        raise typer.Exit(EXIT_USAGE) from None


def _print_json(document: Any) -> None:
    """Plain JSON on stdout: no colours, no wrapping, whatever the terminal."""
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def _store(settings: Settings) -> JobStore:
    store = JobStore.from_settings(settings)
    store.ping()
    return store


class JobSource(Protocol):
    """Where the CLI reads jobs: the job store, or a producer's HTTP API."""

    def get(self, job_id: str) -> JobRecord: ...

    def items(self, job_id: str) -> dict[str, dict[str, Any]]: ...

    def result(self, job_id: str) -> dict[str, Any] | None: ...


def wait_for(
    store: JobSource, job_id: str, *, timeout_s: float, quiet: bool
) -> JobRecord:
    """Follow a job until it ends or the timeout passes, with a progress bar."""
    deadline = time.monotonic() + timeout_s
    record = store.get(job_id)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        bar = progress.add_task(f"{record.kind} {job_id}", total=record.total, failed=0)
        hint_at = time.monotonic() + IDLE_HINT_S
        away = False
        while not record.finished and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)
            try:
                record = store.get(job_id)
            except (RedisError, ConnectionError) as exc:
                # A Redis restart or failover: the job goes on; keep asking.
                if not away:
                    progress.console.print(
                        f"[yellow]the job store is unreachable ({exc}); retrying "
                        "until it answers or --timeout passes"
                    )
                away = True
                time.sleep(STORE_RETRY_S)
                continue
            if away:
                progress.console.print("[green]the job store answers again")
                away = False
            progress.update(bar, completed=record.done, failed=record.failed)
            if record.state == "queued" and time.monotonic() > hint_at:
                hint_at = float("inf")
                progress.console.print(
                    f"[yellow]no worker has started job {job_id} after "
                    f"{IDLE_HINT_S:.0f} s; is a `batchgrid worker` consuming the "
                    f"{record.kind} queue?"
                )
        progress.update(bar, completed=record.done, failed=record.failed)
    return record


def _finish(
    store: JobSource, record: JobRecord, *, as_json: bool, resumable: bool = True
) -> int:
    """Print a finished (or timed-out) job and choose the exit code; an unfinished
    job gets a hint to follow it when it goes on without this command."""
    result = store.result(record.id)
    items = store.items(record.id) if record.kind == "images" else None
    if as_json:
        payload: dict[str, Any] = {"job": record.as_dict(), "result": result}
        if items is not None:
            payload["items"] = items
        _print_json(payload)
    else:
        if record.kind == "images" and items is not None:
            print_image_outcomes(items)
        elif record.kind == "tables" and result is not None:
            print_table(result)
        _print_status(record)
    if not record.finished:
        if resumable:
            console.print(
                f"job {record.id} is still {record.state}; follow it with "
                f"[bold]batchgrid status {record.id}[/]"
            )
        return EXIT_TIMEOUT
    if record.state in ("failed", "cancelled"):
        return EXIT_JOB_FAILED
    return EXIT_ITEMS_FAILED if record.failed else EXIT_OK


def print_image_outcomes(items: dict[str, dict[str, Any]]) -> None:
    """A table of per-image outcomes (failures always, successes while few)."""
    table = Table(title="images", show_lines=False)
    for column in ("input", "outcome", "worker", "detail"):
        table.add_column(column)
    listed = sorted(items.items())
    if len(listed) > MAX_LISTED_ITEMS:
        listed = [(name, o) for name, o in listed if "error" in o]
    for name, outcome in listed:
        if "error" in outcome:
            table.add_row(
                name,
                f"[red]{outcome['error']}",
                outcome.get("worker", ""),
                outcome["message"],
            )
        else:
            detail = f"{outcome['width']}x{outcome['height']}"
            if outcome["output"] != name:
                detail += f" → {outcome['output']}"
            if outcome.get("note"):
                detail += f" ({outcome['note']})"
            table.add_row(name, "[green]ok", outcome.get("worker", ""), detail)
    out.print(table)


def _number(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.2f}"


#: Statistics shown per group; the last two only when some group has any.
STATS = ("count", "sum", "mean", "min", "max", "missing", "unparseable")


def print_table(result: dict[str, Any]) -> None:
    """The merged per-group table, one row per group and value column.

    Means and sums print to two decimals; ``--json`` gives full precision.
    """
    values: list[str] = result["values"]
    rows = [
        (["∅" if key is None else str(key) for key in group["key"]], value, stats)
        for group in result["groups"]
        for value, stats in group["stats"].items()
    ]
    shown = [
        stat
        for stat in STATS
        if stat not in ("missing", "unparseable") or any(r[2][stat] for r in rows)
    ]
    title = f"{', '.join(values)} by {', '.join(result['by'])}"
    table = Table(title=title)
    for column in result["by"]:
        table.add_column(column)
    if len(values) > 1:
        table.add_column("value")
    for stat in shown:
        table.add_column(stat, justify="right", no_wrap=True)
    for keys, value, stats in rows:
        named = [value] if len(values) > 1 else []
        table.add_row(*keys, *named, *(_number(stats[stat]) for stat in shown))
    out.print(table)
    for value in values:
        counted = sum(r[2]["count"] for r in rows if r[1] == value)
        unparseable = sum(r[2]["unparseable"] for r in rows if r[1] == value)
        if unparseable and not counted:
            console.print(
                f"[yellow]no value of {value!r} is a number ({unparseable} "
                "unparseable); is it a numeric column?[/]"
            )
    if result.get("malformed_rows"):
        console.print(f"[yellow]{result['malformed_rows']} malformed rows skipped[/]")
        for sample in result.get("malformed_samples", []):
            console.print(f"  {sample['reason']}: {sample['text']!r}")


def _print_status(record: JobRecord, stream: Console = console) -> None:
    took = ""
    if record.finished_at and record.created_at:
        took = f" in {record.finished_at - record.created_at:.2f} s"
    color = {"succeeded": "green", "failed": "red"}.get(record.state, "yellow")
    stream.print(
        f"job {record.id}: [{color}]{record.state}[/]{took} — "
        f"{record.done}/{record.total} done, {record.failed} failed"
    )
    if record.error:
        stream.print(f"[red]reason:[/] {record.error}")


def _run_job(
    request: ImagesRequest | TablesRequest,
    *,
    api: str | None,
    token: str | None,
    workers: int,
    concurrency: int | None,
    wait: bool,
    timeout_s: float,
    as_json: bool,
) -> int:
    """Submit a job here or to a producer, then follow it; returns the exit code."""
    client = _api_client(api, token)
    if client is not None:
        job_id = client.submit(request)
        return _follow(client, job_id, wait=wait, timeout_s=timeout_s, as_json=as_json)
    settings = _settings()
    embedded = not settings.broker_url
    if embedded and not wait:
        raise ConfigError(
            "--no-wait needs a broker that outlives this command: set "
            "BATCHGRID_BROKER_URL (embedded workers stop when the command ends)"
        )
    plan = plan_request(settings, request)  # bad input fails before anything starts
    with local_cluster(settings, workers=workers, concurrency=concurrency) as s:
        store = _store(s)
        celery = create_app(s)
        producer = Producer(s, celery, store)
        submitted: str | None = None
        try:
            submitted = producer.submit(plan, origin="cli")
            code = _follow(
                store,
                submitted,
                wait=wait,
                timeout_s=timeout_s,
                as_json=as_json,
                resumable=not embedded,
            )
        except KeyboardInterrupt:
            if not embedded and submitted is None:
                raise  # the job, if any, was sent in part: nothing to follow
            code = EXIT_INTERRUPTED
        if embedded and code in (EXIT_TIMEOUT, EXIT_INTERRUPTED):
            # The local workers stop with this command; the job cannot go on. The
            # embedded server serves this command alone: its queued tasks go too,
            # or the next command's workers would skip through them first.
            if submitted is not None:
                producer.cancel(submitted)
            celery.control.purge()
            console.print(
                f"cancelled job {submitted}: the embedded workers stop with this "
                "command"
                if submitted
                else "interrupted while sending the job; its tasks were dropped"
            )
        return code


def _follow(
    source: JobSource,
    job_id: str,
    *,
    wait: bool,
    timeout_s: float,
    as_json: bool,
    resumable: bool = True,
) -> int:
    if not wait:
        out.print(job_id)
        return EXIT_OK
    record = wait_for(source, job_id, timeout_s=timeout_s, quiet=as_json)
    return _finish(source, record, as_json=as_json, resumable=resumable)


def _token(token: str | None) -> str | None:
    """--token, else BATCHGRID_API_TOKEN from the environment or .env (unless the
    settings cannot be read: a command given its URL needs none of them)."""
    if token:
        return token
    try:
        secret = _settings().api_token
    except ConfigError:
        return None
    return secret.get_secret_value() if secret else None


def _api_client(api: str | None, token: str | None) -> ApiClient | None:
    """A client of the producer named by --api (else BATCHGRID_API_URL, from the
    environment or .env) with its token; None when no producer is named."""
    url = api or _settings().api_url
    return ApiClient(url, token=_token(token)) if url else None


@contextmanager
def _job_source(api: str | None, token: str | None) -> Iterator[JobSource]:
    """The producer API when given, else the job store (embedded if need be)."""
    client = _api_client(api, token)
    if client is not None:
        yield client
        return
    with embedded_broker(_settings()) as s:
        yield _store(s)


@app.command()
def worker(
    queues: Annotated[
        str | None, typer.Option("--queues", "-Q", help="Comma-separated queues.")
    ] = None,
    concurrency: Concurrency = None,
    hostname: Annotated[
        str | None,
        typer.Option(
            "--hostname", "-n", help="Celery node name (default: celery@<host name>)."
        ),
    ] = None,
) -> None:
    """Run a worker that consumes the images and tables queues."""
    with _errors():
        settings = _settings()
        if not settings.broker_url:
            raise ConfigError(
                "a standalone worker needs BATCHGRID_BROKER_URL; `batchgrid images`, "
                "`table`, `serve` and `demo` start their own local workers when it "
                "is empty"
            )
        if settings.soft_shutdown_timeout_s and _remap_sigterm():
            return
        from batchgrid.worker import run_worker

        chosen = (
            queues.split(",")
            if queues
            else [settings.images_queue, settings.tables_queue]
        )
        run_worker(queues=chosen, concurrency=concurrency, hostname=hostname)


def _remap_sigterm() -> bool:
    """Start the worker again with SIGTERM meaning Celery's soft shutdown.

    billiard reads ``REMAP_SIGTERM`` when it is imported, so it must be in the
    environment before the process starts; returns False when it already is.
    """
    if os.environ.get("REMAP_SIGTERM") == "SIGQUIT":
        return False
    env = {**os.environ, "REMAP_SIGTERM": "SIGQUIT"}
    os.execve(sys.executable, [sys.executable, "-m", "batchgrid", *sys.argv[1:]], env)
    return True  # not reached: execve replaces this process


@app.command()
def images(
    sources: Annotated[
        list[str], typer.Argument(help="Directories, globs or image files.")
    ],
    destination: Annotated[str, typer.Argument(help="Output directory.")],
    workers: Workers = 1,
    concurrency: Concurrency = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for the job and print outcomes.")
    ] = True,
    timeout_s: Timeout = 3600,
    as_json: JsonFlag = False,
    api: Api = None,
    token: Token = None,
) -> None:
    """Convert images to grayscale across the workers."""
    with _errors():
        code = _run_job(
            ImagesRequest(sources=sources, destination=destination),
            api=api,
            token=token,
            workers=workers,
            concurrency=concurrency,
            wait=wait,
            timeout_s=timeout_s,
            as_json=as_json,
        )
    raise typer.Exit(code)


@app.command()
def table(
    csv: Annotated[str, typer.Argument(help="CSV path or URL.")],
    by: Annotated[
        list[str], typer.Option("--by", "-b", help="Group-by column (repeat).")
    ],
    value: Annotated[
        list[str], typer.Option("--value", "-v", help="Numeric column (repeat).")
    ],
    delimiter: Annotated[str, typer.Option(help="Field delimiter.")] = ",",
    encoding: Annotated[
        str, typer.Option(help="Text encoding (ASCII-compatible).")
    ] = "utf-8",
    chunk_bytes: Annotated[
        int | None,
        typer.Option(
            min=1, envvar="BATCHGRID_CHUNK_BYTES", help="Bytes per range task."
        ),
    ] = None,
    workers: Workers = 1,
    concurrency: Concurrency = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for the job and print the table.")
    ] = True,
    timeout_s: Timeout = 3600,
    as_json: JsonFlag = False,
    api: Api = None,
    token: Token = None,
) -> None:
    """Aggregate a CSV per group: count, sum, mean, min, max of numeric columns."""
    with _errors():
        request = TablesRequest(
            csv=csv,
            by=by,
            values=value,
            delimiter=delimiter,
            encoding=encoding,
            chunk_bytes=chunk_bytes,
        )
        code = _run_job(
            request,
            api=api,
            token=token,
            workers=workers,
            concurrency=concurrency,
            wait=wait,
            timeout_s=timeout_s,
            as_json=as_json,
        )
    raise typer.Exit(code)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="The job id printed at submission.")],
    as_json: JsonFlag = False,
    api: Api = None,
    token: Token = None,
) -> None:
    """Show a job's state and progress."""
    with _errors(), _job_source(api, token) as source:
        record = source.get(job_id)
        if as_json:
            _print_json(record.as_dict())
        else:
            _print_status(record, stream=out)
    raise typer.Exit(EXIT_JOB_FAILED if record.state in ("failed", "cancelled") else 0)


@app.command()
def result(
    job_id: Annotated[str, typer.Argument(help="The job id printed at submission.")],
    as_json: JsonFlag = False,
    api: Api = None,
    token: Token = None,
) -> None:
    """Print a job's result: per-image outcomes or the per-group table."""
    with _errors(), _job_source(api, token) as source:
        code = _finish(source, source.get(job_id), as_json=as_json)
    raise typer.Exit(code)


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job id printed at submission.")],
    api: Api = None,
    token: Token = None,
) -> None:
    """Cancel a job: tasks still queued are revoked, running ones finish."""
    with _errors():
        client = _api_client(api, token)
        if client is not None:
            record = client.cancel(job_id)
        else:
            with embedded_broker(_settings()) as s:
                store = _store(s)
                if not Producer(s, create_app(s), store).cancel(job_id):
                    raise JobStateError(
                        f"job {job_id} already {store.get(job_id).state}"
                    )
                record = store.get(job_id)
        _print_status(record, stream=out)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    workers: Workers = 1,
    concurrency: Concurrency = None,
) -> None:
    """Run the producer's HTTP API (with local workers when no broker is set)."""
    import uvicorn

    from batchgrid.api import create_api
    from batchgrid.logs import configure_logging

    with _errors():
        settings = _settings()
        configure_logging(settings)
        bind = host or settings.api_host
        bound_port = port if port is not None else settings.api_port
        cluster = local_cluster(
            settings,
            workers=workers,
            concurrency=concurrency,
            serve_url=_url_of(bind, bound_port),
        )
        # uvicorn shuts down cleanly, then raises Ctrl-C or SIGTERM again.
        with cluster as s, suppress(KeyboardInterrupt):
            uvicorn.run(
                create_api(s),
                host=bind,
                port=bound_port,
                log_config=None,
                timeout_graceful_shutdown=SERVE_SHUTDOWN_S,
            )


def _url_of(host: str, port: int) -> str | None:
    """How other commands on this machine reach serve; None for a random port."""
    if not port:
        return None
    # A wildcard bind is reached on loopback; an IPv6 literal goes in brackets.
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


@app.command()
def beat() -> None:
    """Run the periodic jobs of BATCHGRID_SCHEDULE (run exactly one beat)."""
    with _errors():
        settings = _settings()
        if not settings.broker_url:
            raise ConfigError("beat needs BATCHGRID_BROKER_URL (a shared Redis)")
        if not settings.schedule:
            raise ConfigError(
                "BATCHGRID_SCHEDULE is empty; set it to a JSON list such as "
                '[{"name": "flights", "kind": "tables", "every_s": 300, "params": '
                '{"csv": "/data/flights.csv", "by": ["carrier"], '
                '"values": ["arr_delay"]}}]'
            )
        from batchgrid.beat import run_beat
        from batchgrid.logs import configure_logging

        configure_logging(settings)
        run_beat(settings)


@app.command()
def loadgen(
    kind: Annotated[
        JobKind, typer.Option(help="Which job to submit.")
    ] = JobKind.tables,
    rate: Annotated[float, typer.Option(min=0.01, help="Jobs per second.")] = 1.0,
    duration_s: Annotated[
        float, typer.Option("--duration", min=0.1, help="Seconds of load.")
    ] = 30.0,
    burst: Annotated[
        bool, typer.Option(help="Submit all rate * duration jobs at once.")
    ] = False,
    workers: Workers = 1,
    concurrency: Concurrency = None,
    api: Api = None,
    token: Token = None,
) -> None:
    """Submit synthetic jobs at a steady rate and report job latency (p50/p95)."""
    from rich.progress import Progress as Bar

    from batchgrid.loadgen import make_request_factory, run_load

    with _errors():
        settings = _settings()
        request_for = make_request_factory(Path(settings.storage_roots[0]), kind.value)
        with (
            Bar(console=console) as bar,
            _submitter(api, token, workers, concurrency) as submitter,
        ):
            sent = bar.add_task("submitted", total=max(1, round(rate * duration_s)))
            finished = bar.add_task("finished", total=max(1, round(rate * duration_s)))

            def progress(submitted: int, done: int) -> None:
                bar.update(sent, completed=submitted)
                bar.update(finished, completed=done)

            report = run_load(
                submitter,
                request_for,
                rate_per_s=rate,
                duration_s=duration_s,
                burst=burst,
                on_progress=progress,
            )
        summary = Table(title=f"loadgen: {kind.value}")
        for column in (
            "submitted",
            "succeeded",
            "failed",
            "unfinished",
            "p50 s",
            "p95 s",
            "elapsed s",
        ):
            summary.add_column(column, justify="right")
        summary.add_row(
            str(report.submitted),
            str(report.succeeded),
            str(report.failed),
            str(report.unfinished),
            _seconds(report.p50_s),
            _seconds(report.p95_s),
            f"{report.elapsed_s:.1f}",
        )
        out.print(summary)
        folder = Path(settings.storage_roots[0]) / "loadgen"
        console.print(f"inputs and outputs are in {folder}; remove it when done")
    raise typer.Exit(
        EXIT_OK if report.failed == report.unfinished == 0 else EXIT_JOB_FAILED
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


class _DirectSubmitter:
    """Plans and submits jobs through the broker, as the API would."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.producer = Producer(settings, create_app(settings), store)

    def submit(self, request: ImagesRequest | TablesRequest) -> str:
        plan = plan_request(self.settings, request)
        return self.producer.submit(plan, origin="loadgen")

    def get(self, job_id: str) -> JobRecord:
        return self.store.get(job_id)


@contextmanager
def _submitter(
    api: str | None, token: str | None, workers: int, concurrency: int | None
) -> Iterator["ApiClient | _DirectSubmitter"]:
    client = _api_client(api, token)
    if client is not None:
        yield client
        return
    with local_cluster(_settings(), workers=workers, concurrency=concurrency) as s:
        yield _DirectSubmitter(s, _store(s))


@app.command()
def top(
    metrics_urls: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics",
            help="A worker's or producer's /metrics URL (repeat). Default: the "
            "local worker's, at BATCHGRID_METRICS_PORT.",
        ),
    ] = None,
    prometheus: Annotated[
        str | None,
        typer.Option(help="Read from this Prometheus server instead (last 5 min)."),
    ] = None,
    interval_s: Annotated[
        float, typer.Option("--interval", min=0.2, help="Seconds between refreshes.")
    ] = 2.0,
    once: Annotated[bool, typer.Option(help="Print one snapshot and exit.")] = False,
    token: Token = None,
) -> None:
    """Watch queue lengths and per-node queue wait and runtime (p50, p95)."""
    from functools import partial

    from batchgrid.top import read_endpoints, read_prometheus, run_top

    with _errors():
        if prometheus:
            read = partial(read_prometheus, prometheus, token=_token(token))
        else:
            urls = metrics_urls or [
                f"http://127.0.0.1:{_settings().metrics_port}/metrics"
            ]
            read = partial(read_endpoints, urls, token=_token(token))
        snapshot = run_top(read, console=out, interval_s=interval_s, once=once)
        if snapshot.errors and not (snapshot.queues or snapshot.nodes):
            raise BatchgridError(
                "no metrics source answered; check the --metrics URLs (a worker "
                "serves them on BATCHGRID_METRICS_PORT) or --prometheus"
            )


@app.command("autoscale-watch")
def autoscale_watch(
    namespace: Annotated[
        str, typer.Option(help="Namespace of the release.")
    ] = "batchgrid",
    release: Annotated[str, typer.Option(help="Helm release name.")] = "batchgrid",
    prometheus: Annotated[
        str | None,
        typer.Option(help="Prometheus Service as namespace/name:port; '' for none."),
    ] = "monitoring/prometheus-operated:9090",
    min_replicas: Annotated[
        int, typer.Option(min=0, help="autoscaling.minReplicas of the release.")
    ] = 0,
    interval_s: Annotated[
        float, typer.Option("--interval", min=0.5, help="Seconds between readings.")
    ] = 3.0,
    timeout_s: Annotated[
        float, typer.Option("--timeout", min=1, help="Give up after this many seconds.")
    ] = 900.0,
    png: Annotated[
        Path | None, typer.Option(help="Write the timeline PNG here.")
    ] = Path("k8s/out/autoscale.png"),
    context: Annotated[
        str | None, typer.Option(help="kubeconfig context; default: the current.")
    ] = None,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(help="kubeconfig file; default: $KUBECONFIG, ~/.kube/config."),
    ] = None,
) -> None:
    """Watch worker replicas follow the backlog on Kubernetes, then draw it."""
    from batchgrid.kube import KubeSource, watch

    with _errors():
        source = KubeSource(namespace, release, prometheus or None, context, kubeconfig)
        _, settled = watch(
            source.read,
            console=out,
            min_replicas=min_replicas,
            interval_s=interval_s,
            timeout_s=timeout_s,
            png=png,
        )
    if not settled:
        console.print(
            f"the fleet did not scale up and back to {min_replicas} replicas "
            f"within {timeout_s:.0f} s"
        )
        raise typer.Exit(EXIT_TIMEOUT)


@app.command()
def openapi() -> None:
    """Print the HTTP API's OpenAPI document (JSON)."""
    from batchgrid.api import create_api

    with _errors():
        document = create_api(_settings()).openapi()
    _print_json(document)


@app.command()
def demo(
    workdir: Annotated[
        Path, typer.Option(help="Where the demo puts its inputs and outputs.")
    ] = Path(".batchgrid/demo"),
    workers: Annotated[int, typer.Option("--workers", "-w", min=1)] = 2,
    concurrency: Concurrency = None,
) -> None:
    """Run both jobs on real photographs and a real table, and check the table."""
    from batchgrid.demo import run_demo

    with _errors():
        ok = run_demo(
            _settings(), workdir=workdir, workers=workers, concurrency=concurrency
        )
    raise typer.Exit(EXIT_OK if ok else EXIT_JOB_FAILED)


def main() -> None:
    """Entry point of the ``batchgrid`` script."""
    app(prog_name="batchgrid")


if __name__ == "__main__":
    main()
