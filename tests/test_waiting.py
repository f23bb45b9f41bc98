"""Waiting on a cluster that has lost every worker ends with an error, not a hang."""

from __future__ import annotations

import time

import pytest
from distributed import Client, LocalCluster

from radflow.cluster.waiting import NoWorkers, each_done, result


def _double(x: int) -> int:
    return 2 * x


def test_a_future_on_a_cluster_without_workers_raises_after_the_patience():
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        fut = client.submit(_double, 1)
        t0 = time.monotonic()
        with pytest.raises(NoWorkers, match="no worker for 1 s"):
            result(fut, patience=1)
        with pytest.raises(NoWorkers):
            list(each_done([fut, client.submit(_double, 2)], patience=1))
        assert time.monotonic() - t0 < 60  # bounded (the patience plus polling), never for ever


def test_with_workers_the_results_come_back():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        futures = client.map(_double, range(20))
        assert result(futures[3], patience=1) == 6
        assert sorted(f.result() for f in each_done(futures, patience=1)) == [2 * i for i in range(20)]
