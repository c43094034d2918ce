"""``labkit grade`` on Dask (``dask.distributed``): each submission is one task that runs the same
sandbox as a local run (:func:`labkit.grading.grade.grade_task`) on a worker.

- ``--jobs N``: a ``LocalCluster`` of N worker processes (one thread each) on this machine;
- ``--scheduler ADDRESS``: an existing cluster (``dask scheduler`` + ``dask worker`` processes,
  or dask-jobqueue's ``SLURMCluster``; see ``book/instructors.md``).

The submission travels to the worker as bytes and the result comes back as a dict; only the
client writes files (atomically, one ``result.json`` per student, then ``grades.csv``), so a
killed worker loses no graded result: Dask runs its unfinished task again on another worker,
and a re-run of the batch skips every submission that has a result. Before any task, one worker
per host runs :func:`labkit.grading.grade.preflight` (sandbox, memory cap, import probe) and
every worker must run the same grading code as the client.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from .memory import ConfigurationError

__all__ = ["grade_on_dask", "worker_check"]

CONNECT_TIMEOUT_S = 10


def worker_check() -> dict[str, Any]:
    """Run on each worker: which host it is on and which grading code it has."""
    import socket

    from .grade import _grading_digest

    return {"host": socket.gethostname(), "labkit": _grading_digest()}


def _host_preflight(spec: dict[str, Any]) -> dict[str, Any]:
    from .grade import preflight

    try:
        info = preflight(spec)
    except Exception as exc:  # noqa: BLE001 - sent back to the client as a message
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"isolation": info["isolation"], "memory": info["memory"], "probe": info["probe"]}


def _task(spec: dict[str, Any], sub_id: str, name: str, raw: bytes) -> dict[str, Any]:
    from .grade import grade_task

    return grade_task(spec, sub_id, name, raw)


def _connect(scheduler: str | None, jobs: int) -> tuple[Any, Any, str]:
    """A client of the Dask cluster at ``scheduler``, or of a new local cluster of ``jobs`` worker
    processes; returns the client, the local cluster (None for ``scheduler``) and a description."""
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigurationError(f"cannot reach the Dask scheduler at {scheduler!r} within {CONNECT_TIMEOUT_S} s "
                                     f"({type(exc).__name__}: {exc}); start it (`dask scheduler`) or fix the "
                                     "address; no submission was graded") from None
        note = f"Dask cluster at {scheduler}"
    else:
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                               memory_limit=0, silence_logs=logging.ERROR, host="127.0.0.1")
        client = Client(cluster, set_as_default=False)
        note = f"{jobs} local Dask worker process(es)"
    return client, cluster, note


def _check_workers(client: Any, scheduler: str | None) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The cluster's workers (waiting up to 30 s for one) and their addresses by host; raises
    ``ConfigurationError`` when none comes or one runs other grading code than this client."""
    from .grade import _grading_digest

    workers = client.scheduler_info().get("workers", {})
    if not workers:
        try:
            client.wait_for_workers(1, timeout=30)
        except TimeoutError:
            raise ConfigurationError(f"the Dask scheduler at {scheduler} has no worker after 30 s; start "
                                     "`dask worker ADDRESS` processes; no submission was graded") from None
        workers = client.scheduler_info().get("workers", {})
    try:
        checks = client.run(worker_check)
    except Exception as exc:  # noqa: BLE001 - e.g. a worker without labkit cannot unpickle the function
        raise ConfigurationError(f"a Dask worker cannot run labkit's grading code ({type(exc).__name__}: {exc}); "
                                 "install the project on every worker (pip install -e '.[grade]' in the "
                                 "workers' environment); no submission was graded") from None
    mine = _grading_digest()
    wrong = sorted(addr for addr, c in checks.items() if c.get("labkit") != mine)
    if wrong:
        raise ConfigurationError(f"Dask worker(s) {', '.join(wrong)} run another version of labkit's grading "
                                 "code than this client; install the same version on every worker")
    hosts: dict[str, list[str]] = {}
    for addr, c in sorted(checks.items()):
        hosts.setdefault(c["host"], []).append(addr)
    return workers, hosts


def _preflight_hosts(client: Any, spec: dict[str, Any], hosts: dict[str, list[str]],
                     log: Callable[[str], None] | None) -> dict[str, Any]:
    """Run the preflight on one worker per host and log its warnings; returns the first host's
    report, or raises ``ConfigurationError`` with every host's failure."""
    from .grade import _warn

    first = [addrs[0] for addrs in hosts.values()]
    pre = client.run(_host_preflight, spec, workers=first)
    errors = [f"{addr}: {r['error']}" for addr, r in pre.items() if "error" in r]
    if errors:
        raise ConfigurationError("preflight failed on the Dask workers: "
                                 + " | ".join(errors))
    first_info = pre[first[0]]
    if log:
        for addr, r in pre.items():
            _warn(r["isolation"], r["memory"], lambda m, a=addr: log(f"[{a}] {m}"))
            log(f"[{addr}] probe: {r['probe']}")
    return first_info


def _failed_task_payload(spec: dict[str, Any], todo: list[tuple[str, Path]], fut: Any, exc: Exception) -> dict[str, Any]:
    """The 'grader-error' result of a submission whose task failed on every worker it was given."""
    sid = fut.key.rsplit("-", 1)[-1] if isinstance(fut.key, str) else str(fut.key)
    sid = next((s for s, _ in todo if fut.key == f"labkit-grade-{spec['batch_id']}-{s}"), sid)
    lab = spec["lab"]
    return {"result": {"id": sid, "status": "grader-error", "max": lab.max_points, "lab": lab.name,
                       "profile": spec["profile"], "source": spec["sources"].get(sid, ""),
                       "message": f"the Dask task failed: {type(exc).__name__}: {exc}"[:500],
                       "points": {c.name: 0.0 for c in lab.checks}}, "executed": None}


def _run_tasks(client: Any, spec: dict[str, Any], todo: list[tuple[str, Path]],
               record: Callable[[dict[str, Any]], Any]) -> None:
    """Submit one task per submission and ``record`` each result as it comes; cancels the rest on
    any error (a lost scheduler raises ``RuntimeError``)."""
    from distributed import as_completed

    spec_f = client.scatter(spec, broadcast=True, hash=False)
    futures = [client.submit(_task, spec_f, sid, str(p), p.read_bytes(), key=f"labkit-grade-{spec['batch_id']}-{sid}",
                             pure=False, retries=0) for sid, p in todo]
    try:
        for fut in as_completed(futures, loop=client.loop):
            try:
                payload = fut.result()
            except Exception as exc:  # noqa: BLE001 - a task that failed on every worker it was given
                if client.status != "running" or "Cancelled" in type(exc).__name__:
                    raise RuntimeError(f"lost the Dask scheduler ({type(exc).__name__}: {exc}); every result "
                                       "received is written; run the same command again to grade the rest"
                                       ) from None
                payload = _failed_task_payload(spec, todo, fut, exc)
            record(payload)
            fut.release()
    except BaseException:
        client.cancel(futures)
        raise


def grade_on_dask(spec: dict[str, Any], todo: list[tuple[str, Path]], *, jobs: int, scheduler: str | None,
                  record: Callable[[dict[str, Any]], Any], log: Callable[[str], None] | None) -> tuple[Any, Any, str]:
    """Grade ``todo`` on a Dask cluster; ``record(payload)`` is called here for each result."""
    try:
        from distributed import Client, LocalCluster, as_completed  # noqa: F401 - fail early without dask
    except ImportError as exc:
        raise ConfigurationError(f"dask.distributed is not installed ({exc}): pip install -e '.[grade]'") from None

    client, cluster, note = _connect(scheduler, jobs)
    try:
        workers, hosts = _check_workers(client, scheduler)
        if scheduler is not None:  # the sandboxes of one host share its cores
            spec = {**spec, "slots": max(len(a) for a in hosts.values())}
        first_info = _preflight_hosts(client, spec, hosts, log)
        _run_tasks(client, spec, todo, record)
        return first_info["isolation"], first_info["memory"], note + f" ({len(workers)} worker(s), {len(hosts)} host(s))"
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
