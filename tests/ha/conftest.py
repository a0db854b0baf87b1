from __future__ import annotations

from collections.abc import Iterator

import pytest

from .cluster import HaCluster


@pytest.fixture(scope="session")
def ha_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaCluster]:
    """Three RabbitMQ nodes of the HA tests' own (about 10-13 s to boot), shared by them.

    Every test leaves all three running; ``ha_nodes_back`` makes sure of it.
    """
    cluster = HaCluster(tmp_path_factory.mktemp("rabbit-ha"))
    with cluster:
        yield cluster


@pytest.fixture
def ha_nodes_back(ha_cluster: HaCluster) -> Iterator[HaCluster]:
    """The cluster, given back with every node running even when the test failed."""
    yield ha_cluster
    for node in ha_cluster.nodes:
        node.thaw()
    for node in ha_cluster.nodes:
        if not node.up():
            node.restart()
    ha_cluster.wait_running(len(ha_cluster.nodes))
