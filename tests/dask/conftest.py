"""One real Dask LocalCluster (2 worker processes) shared by the module's tests."""

from __future__ import annotations

import pytest

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    # Worker processes are spawned: startup takes ~2-3 s, so the cluster is shared.
    with distributed.LocalCluster(
        processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as c:
        yield c
