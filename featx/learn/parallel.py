"""A thread map for work that releases the GIL (liblinear, libsvm, BLAS): threads share the arrays
instead of copying them into worker processes, and warnings raised in them still reach the caller's
`catch_warnings`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from featx.runtime import usable_cores


def thread_map(function, items, n_jobs: int | None = None, progress=None) -> list:
    """[function(item) for item in items], run on up to `n_jobs` threads (default: the usable
    cores), results in the items' order. `progress` is called once per finished item."""
    items = list(items)
    n_jobs = min(len(items), n_jobs or usable_cores())
    if n_jobs <= 1:
        results = []
        for item in items:
            results.append(function(item))
            progress and progress()
        return results
    with ThreadPoolExecutor(n_jobs, thread_name_prefix="featx-fit") as pool:
        futures = [pool.submit(function, item) for item in items]
        for future in futures:
            future.result()
            progress and progress()
        return [future.result() for future in futures]
