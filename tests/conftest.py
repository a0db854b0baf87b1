from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Iterator

import httpx
import pytest

from clarion.config import Settings, option

from .private_broker import PrivateBroker
from .support import MGMT_AUTH, MGMT_URL, PodFactory, Vhost

#: Both delivery designs (``--routing``), for the tests marked ``both_routings``.
ROUTINGS: tuple[str, ...] = option("routing").choices or ()
#: The ``--routing`` of every other test that asks for ``routing``: the pods' default.
DEFAULT_ROUTING = str(Settings.__dataclass_fields__["routing"].default)

#: Fixtures that reach a RabbitMQ node (the shared one or one of a test's own): a test
#: using any of them, directly or through another fixture, is marked ``broker``. So is one
#: that builds the container images (``images``, tests/images): it needs podman, a service
#: outside Python as RabbitMQ is, and minutes on a fresh machine. ``-m "not broker"`` is
#: the run that needs neither.
BROKER_FIXTURES = frozenset(
    {"rabbit_mgmt", "private_broker", "module_private_broker", "ha_cluster", "images"}
)
#: Fixtures that boot RabbitMQ nodes of a test's own, which the test stops, kills, freezes
#: or restarts, and times: a test using one is marked ``own_nodes`` too. ``make test`` runs
#: those one after the other, beside the other broker tests (scripts/test.sh).
OWN_NODE_FIXTURES = frozenset({"private_broker", "module_private_broker", "ha_cluster"})


@pytest.fixture(scope="session")
def rabbit_mgmt() -> str:
    """The management API of the shared RabbitMQ; the suite needs it (.ci/run starts it)."""
    try:
        httpx.get(f"{MGMT_URL}/api/overview", auth=MGMT_AUTH, timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(
            f"RabbitMQ management API not reachable at {MGMT_URL}: {exc} "
            "(run .ci/run or `make services`)"
        )
    return MGMT_URL


@pytest.fixture
def vhost(rabbit_mgmt: str) -> Iterator[Vhost]:
    """A fresh vhost for one test: its own exchange and queues on the shared broker."""
    v = Vhost().create()
    yield v
    v.delete()


@pytest.fixture(scope="module")
def module_vhost(rabbit_mgmt: str) -> Iterator[Vhost]:
    v = Vhost().create()
    yield v
    v.delete()


@pytest.fixture
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A RabbitMQ node of the test's own (tests/private_broker.py), for a test that stops,
    kills or restarts it; killed and removed after the test."""
    with PrivateBroker(tmp_path_factory.mktemp("rabbit")) as node:
        yield node


@pytest.fixture(scope="module")
def module_private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """``private_broker`` shared by a module's tests (a boot costs 6-20 s); a test that
    stops or kills it starts it again."""
    with PrivateBroker(tmp_path_factory.mktemp("rabbit")) as node:
        yield node


@pytest.fixture(scope="module")
def routing() -> str:
    """``--routing`` of the pods a test starts (parametrized by ``pytest_generate_tests``)."""
    return DEFAULT_ROUTING


def _parametrizes(metafunc: pytest.Metafunc, name: str) -> bool:
    """Whether the test gives ``name`` its own values (a plain argument, not the fixture)."""
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``routing``: the ``--routing`` of the pods a test starts. A test marked
    ``both_routings`` (what it checks depends on how messages reach pods: delivery
    across pods, bindings, catch-up, HA) runs once in each mode; any other test that
    asks for it runs once, in the default mode."""
    if "routing" in metafunc.fixturenames and not _parametrizes(metafunc, "routing"):
        both = metafunc.definition.get_closest_marker("both_routings") is not None
        modes = list(ROUTINGS) if both else [DEFAULT_ROUTING]
        metafunc.parametrize("routing", modes, ids=modes, scope="module")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if BROKER_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.broker)
        if OWN_NODE_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.own_nodes)
    if hasattr(config, "workerinput"):  # an xdist worker: its order is the hand-out order
        slow_files_first(items)


def slow_files_first(items: list[pytest.Item]) -> None:
    """The order ``-n 4 --dist loadfile`` hands files out in: files with a ``slow`` test
    first, then the others, the files with more tests first in each. xdist's own order
    (the number of tests alone, turned off in pyproject.toml) started the few long tests of
    tests/test_client_dist.py and tests/chart/test_names.py last, and the run ended with
    one worker on them while the others had finished."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    count = Counter(item.path for item in items)
    items.sort(key=lambda item: (item.path not in slow, -count[item.path]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test shows the log of every pod its pod factories started."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, PodFactory):
                report.sections.extend(value.logs())
    return report


@pytest.fixture
def pod_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodFactory]:
    """Starts gateway pods for one test (``support.PodFactory``); killed after it."""
    factory = PodFactory(tmp_path_factory.mktemp("pods"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_pod_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodFactory]:
    """``pod_factory`` for a module's shared pods: killed after its last test."""
    factory = PodFactory(tmp_path_factory.mktemp("pods"))
    yield factory
    factory.close()
