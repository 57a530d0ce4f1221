"""The suite's safety nets fire: each is proven by running a small suite through pytester with
this suite's own conftest, leak guard and pytest settings, on the loop of the current run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from slow_split import in_slow_half

TESTS = Path(__file__).parent
RunSuite = Callable[..., pytest.RunResult]


@pytest.fixture
def run_suite(
    pytester: pytest.Pytester, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> RunSuite:
    """Runs the given test module in a fresh pytest process set up as this suite is."""
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(leak_guard=(TESTS / "leak_guard.py").read_text())
    pytester.makepyfile(slow_split=(TESTS / "slow_split.py").read_text())
    (pytester.path / "pyproject.toml").write_text((TESTS.parent / "pyproject.toml").read_text())
    # A leak is reported once the grace is over; the proofs need not wait for the default.
    monkeypatch.setenv("FIEFDOM_TEST_LEAK_GRACE", "0.5")
    loop = request.config.getoption("loop")

    def run(source: str, *args: str) -> pytest.RunResult:
        pytester.makepyfile(test_inner=source)
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", f"--loop={loop}", "test_inner.py", *args
        )

    return run


# Each module has a test that leaks one kind of resource and one that does the same and
# releases it. ``keep`` holds the leaked resource until the module ends, so that the inner
# run itself ends cleanly.
LEAKS = {
    "task": (
        """
import asyncio

async def test_leaks(request):
    asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="forgotten")

async def test_cleans_up(request):
    loop = asyncio.get_running_loop()
    # The guard must look at this very loop: uvloop's when the run asks for it.
    wanted = "uvloop" if request.config.getoption("loop") == "uvloop" else "asyncio"
    assert type(loop).__module__.split(".")[0] == wanted
    task = loop.create_task(asyncio.Event().wait())
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
""",
        ["*test left 1 task(s) running:", "*forgotten*"],
    ),
    "file": (
        """
import pytest

@pytest.fixture(scope="module")
def keep():
    held = []
    yield held
    for f in held:
        f.close()

def test_leaks(keep, tmp_path):
    keep.append(open(tmp_path / "notes.txt", "w"))

def test_cleans_up(tmp_path):
    with open(tmp_path / "notes.txt", "w") as f:
        f.write("x")
""",
        ["*1 file descriptor(s) left open:", "*fd *: /*/notes.txt"],
    ),
    "socket": (
        """
import socket
import pytest

@pytest.fixture(scope="module")
def keep():
    held = []
    yield held
    for s in held:
        s.close()

def test_leaks(keep):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    keep.append(s)

def test_cleans_up():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
""",
        ["*1 file descriptor(s) left open:", "*fd *: TCP socket 127.0.0.1:*"],
    ),
    "sqlite": (
        """
import sqlite3
import pytest

@pytest.fixture(scope="module")
def keep():
    held = []
    yield held
    for db in held:
        db.close()

def test_leaks(keep, tmp_path):
    db = sqlite3.connect(tmp_path / "app.db")
    db.execute("CREATE TABLE t (x)")
    keep.append(db)

def test_cleans_up(tmp_path):
    db = sqlite3.connect(tmp_path / "app.db")
    db.execute("CREATE TABLE t (x)")
    db.close()
""",
        ["*file descriptor(s) left open:", "*fd *: SQLite database file /*/app.db"],
    ),
    "child process": (
        """
import subprocess
import sys
import pytest

@pytest.fixture(scope="module")
def keep():
    held = []
    yield held
    for proc in held:
        proc.stdin.close()
        proc.wait()

CHILD = [sys.executable, "-c", "import sys; sys.stdin.read()"]

def test_leaks(keep):
    keep.append(subprocess.Popen(CHILD, stdin=subprocess.PIPE))

def test_cleans_up():
    proc = subprocess.Popen(CHILD, stdin=subprocess.PIPE)
    proc.stdin.close()
    proc.wait()
""",
        ["*1 child process(es) left behind:", "*pid * (state *): *sys.stdin.read()*"],
    ),
    "PostgreSQL connection": (
        """
import asyncpg
import pytest
import pytest_asyncio

# One loop for the module, so that the connection leaked by a test can be closed at the end.
pytestmark = pytest.mark.asyncio(loop_scope="module")

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def keep():
    held = []
    yield held
    for conn in held:
        await conn.close()

async def test_leaks(keep, postgres_server):
    settings = {"application_name": "leaky"}
    keep.append(await asyncpg.connect(postgres_server, server_settings=settings))

async def test_cleans_up(postgres_server):
    conn = await asyncpg.connect(postgres_server)
    await conn.close()
""",
        [
            "*1 PostgreSQL connection(s) to fiefdom_test_* left open (pg_stat_activity):",
            "*backend pid * for client 127.0.0.1:* (application_name 'leaky'*",
        ],
    ),
}


@pytest.mark.parametrize(("source", "report"), LEAKS.values(), ids=LEAKS.keys())
def test_a_test_that_leaks_fails_and_one_that_cleans_up_passes(
    run_suite: RunSuite, source: str, report: list[str]
) -> None:
    """The guard fails a test that leaves the resource behind, names it, and passes the test
    that releases it."""
    result = run_suite(source, "-v")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*test_leaks PASSED*", "*test_leaks ERROR*", "*test_cleans_up PASSED*"],
        consecutive=False,
    )
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaks*", *report])


RELEASED_LATER = """
import threading

def test_released_a_moment_later(tmp_path):
    f = open(tmp_path / "notes.txt", "w")
    closer = threading.Timer({delay}, f.close)
    closer.daemon = True
    closer.start()
"""


def test_a_resource_released_a_moment_later_is_no_leak(
    run_suite: RunSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A descriptor closed a moment after the test (by another thread, as a server backend
    exits after its client hung up) is waited for; one still open after the grace is not."""
    monkeypatch.setenv("FIEFDOM_TEST_LEAK_GRACE", "10")
    run_suite(RELEASED_LATER.format(delay=0.2)).assert_outcomes(passed=1)
    monkeypatch.setenv("FIEFDOM_TEST_LEAK_GRACE", "0.2")
    result = run_suite(RELEASED_LATER.format(delay=30))
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fd *: /*/notes.txt"])


def test_what_the_loop_owns_is_not_the_tests(run_suite: RunSuite) -> None:
    """Descriptors the event loop opens for its own use and closes with itself (uvloop keeps
    /dev/null open once it has spawned a process with pipes) are not reported."""
    result = run_suite(
        """
import asyncio
import subprocess
import sys

async def test_spawns_with_a_pipe():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print('hi')", stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert out == b"hi\\n"
"""
    )
    result.assert_outcomes(passed=1)


def test_the_run_is_on_the_loop_it_asked_for(request: pytest.FixtureRequest) -> None:
    """--loop picks the loop of pytest-asyncio's runners and of asyncio.run() alike."""
    wanted = "uvloop" if request.config.getoption("loop") == "uvloop" else "asyncio"

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert asyncio.run(loop_module()) == wanted


DIALECT_TESTS = """
import pytest

@pytest.mark.dialect("sqlite")
def test_sqlite_only(store_url):
    assert store_url.startswith("sqlite")

@pytest.mark.dialect("postgres")
def test_postgres_only(backend):
    assert backend == "postgres"

def test_everywhere(store_url):
    pass
"""


def test_a_dialect_marker_generates_only_that_dialect(run_suite: RunSuite) -> None:
    """A test marked for one dialect has no case at all for the other (not a skip)."""
    result = run_suite(DIALECT_TESTS, "--collect-only", "-q")
    assert result.ret == 0
    collected = sorted(line for line in result.outlines if line.startswith("test_inner.py::"))
    assert collected == [
        "test_inner.py::test_everywhere[postgres]",
        "test_inner.py::test_everywhere[sqlite]",
        "test_inner.py::test_postgres_only[postgres]",
        "test_inner.py::test_sqlite_only[sqlite]",
    ]


@pytest.mark.parametrize(
    ("marker", "uses", "message"),
    [
        ('"mysql"', "store_url", "*use @pytest.mark.dialect(name) with one name of sqlite, post*"),
        ('"sqlite", "postgres"', "store_url", "*use @pytest.mark.dialect(name) with one name*"),
        ('"sqlite"', "tmp_path", "*dialect only applies to a test that uses store_url*"),
    ],
    ids=["unknown-dialect", "two-dialects", "no-store"],
)
def test_a_misused_dialect_marker_is_an_error(
    run_suite: RunSuite, marker: str, uses: str, message: str
) -> None:
    """A dialect marker naming no single known dialect, or on a test without a store, fails
    collection with a message saying how to use it."""
    result = run_suite(
        f"import pytest\n\n@pytest.mark.dialect({marker})\ndef test_x({uses}):\n    pass\n",
        "--collect-only",
        "-q",
    )
    assert result.ret != 0
    result.stdout.fnmatch_lines([message])


def test_slow_half_runs_the_fast_tests_and_a_stable_half_of_the_slow_ones(
    run_suite: RunSuite,
) -> None:
    """``--slow=half`` (CI's uvloop pass) keeps every test not marked slow and exactly the
    slow tests ``in_slow_half`` picks, the same ones on every run; by default every slow
    test runs."""
    source = (
        "import pytest\n\n"
        "def test_fast():\n    pass\n\n"
        "@pytest.mark.slow\n"
        '@pytest.mark.parametrize("n", range(12))\n'
        "def test_slow(n):\n    pass\n"
    )
    slow = [f"test_inner.py::test_slow[{n}]" for n in range(12)]
    halves = []
    for _ in range(2):
        result = run_suite(source, "--slow=half", "--collect-only", "-q")
        halves.append(sorted(line for line in result.outlines if "::" in line))
    expected = sorted(["test_inner.py::test_fast", *filter(in_slow_half, slow)])
    assert halves == [expected, expected]
    # Some slow tests in each half (a split that kept all or none would prove nothing).
    assert 0 < len(expected) - 1 < len(slow)
    result = run_suite(source, "--collect-only", "-q")
    assert sorted(line for line in result.outlines if "::" in line) == sorted(
        ["test_inner.py::test_fast", *slow]
    )
