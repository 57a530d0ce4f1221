"""The guides stay true: every Python example in docs/embedding.md, docs/jobs.md and
docs/deployment.md runs to completion as written (each is a whole program, on a
temporary SQLite store); every ``fiefdom.…`` name they mention exists; every setting
docs/deployment.md names is a setting of the daemon; every link between the docs
(README's Documentation list included) reaches a file and, with an anchor, a heading."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from fiefdom.daemon import Config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GUIDES = ("embedding.md", "jobs.md", "deployment.md")
LINKED = ("embedding.md", "jobs.md", "deployment.md", "protocol.md", "cli.md")


def examples(name: str) -> list[tuple[int, str]]:
    """The Python blocks of ``docs/<name>``, each with its line number."""
    text = (DOCS / name).read_text(encoding="utf-8")
    return [
        (text[: m.start()].count("\n") + 1, m.group(1))
        for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S)
    ]


EXAMPLES = [
    pytest.param(code, id=f"{name}:{line}") for name in GUIDES for line, code in examples(name)
]


@pytest.mark.parametrize("code", EXAMPLES)
def test_the_example_runs(code: str, tmp_path: Path) -> None:
    """The example runs as a program, in an empty folder, to exit status 0 (its own
    asserts check what it shows)."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def test_the_guides_have_examples() -> None:
    """The example tests above are not empty: embedding.md and jobs.md hold several."""
    assert len(examples("embedding.md")) >= 4
    assert len(examples("jobs.md")) >= 4


# Names in backticks that are not Python: a job kind's name and a file's.
NOT_PYTHON = {"fiefdom.prune", "fiefdom.db"}
# Files of the data folder, written like settings.
FILES = {"control.json", "daemon.lock"}


def unknown_names(text: str) -> list[str]:
    """The ``fiefdom.a.b`` names in backticks in ``text`` that do not resolve (a module,
    then attributes)."""
    missing = []
    for dotted in sorted(set(re.findall(r"`(fiefdom(?:\.[A-Za-z_]\w*)+)", text)) - NOT_PYTHON):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                found: object = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    found = getattr(found, attr)
            except AttributeError:
                missing.append(dotted)
            break
    return missing


@pytest.mark.parametrize("name", [*GUIDES, "protocol.md"])
def test_every_fiefdom_name_exists(name: str) -> None:
    """Each ``fiefdom.…`` name the guide writes in backticks is importable."""
    assert unknown_names((DOCS / name).read_text(encoding="utf-8")) == []


def test_an_unknown_name_is_caught() -> None:
    """The name check fires: a name that does not exist is reported, one that does is not."""
    text = "`fiefdom.JobEngine`, `fiefdom.JobEngin`, `fiefdom.storage.Store.enqueue_lots`"
    assert unknown_names(text) == ["fiefdom.JobEngin", "fiefdom.storage.Store.enqueue_lots"]


def _settings() -> set[str]:
    """Every ``section.key`` of the daemon's configuration (nested sections joined)."""
    found: set[str] = set()

    def walk(struct: type[msgspec.Struct], prefix: str) -> None:
        for field in msgspec.structs.fields(struct):
            name = f"{prefix}{field.name}"
            found.add(name)
            kind = field.type
            if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
                walk(kind, f"{name}.")

    walk(Config, "")
    return found


def unknown_settings(text: str) -> list[str]:
    """The settings ``text`` names (`` `store.pool_max_size` ``, ``FIEFDOM_STORE__URL``)
    that the configuration does not have."""
    settings = _settings()
    sections = {s for s in settings if "." not in s}
    named = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)", text)) - FILES
    named |= {
        ".".join(part.lower() for part in env.split("__"))
        for env in re.findall(r"FIEFDOM_([A-Z_]+__[A-Z_]+)", text)
    }
    return sorted(n for n in named if n.split(".")[0] in sections and n not in settings)


def test_every_setting_deployment_names_exists() -> None:
    """Each setting docs/deployment.md names (as ``section.key`` or as an environment
    variable) is a field of the daemon's configuration."""
    assert unknown_settings((DOCS / "deployment.md").read_text(encoding="utf-8")) == []


def test_an_unknown_setting_is_caught() -> None:
    """The settings check fires: a misspelt key and a misspelt variable are reported."""
    text = "`store.pool_max_size`, `store.pool_size`, FIEFDOM_JOBS__LEASES=1, `control.listen`"
    assert unknown_settings(text) == ["jobs.leases", "store.pool_size"]


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def broken_links(source: Path) -> list[str]:
    """The relative links of ``source`` to a file that does not exist or to an anchor
    that is no heading of their target."""
    broken = []
    text = source.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        if not file.is_file():
            broken.append(target)
        elif anchor:
            headings = re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), flags=re.M)
            if anchor not in {slug(h) for h in headings}:
                broken.append(target)
    return broken


@pytest.mark.parametrize("name", [*LINKED, "../README.md"])
def test_links_reach_their_targets(name: str) -> None:
    """Every relative link of the document reaches a file, and a heading when it names
    one."""
    assert broken_links(DOCS / name) == []


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    """The link check fires: a missing file and a missing heading are reported."""
    (tmp_path / "a.md").write_text("# A\n\n## Under systemd\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#under-systemd) [gone](c.md) [nowhere](a.md#tls) [self](#b)\n# B\n")
    assert broken_links(page) == ["c.md", "a.md#tls"]
