"""The public API (STYLE 1): each package re-exports its public names explicitly, lists
each once in ``__all__``, and documents every one of them."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

import fiefdom

# Every layer's package follows the same rule.
PACKAGES = [
    "fiefdom",
    "fiefdom.actors",
    "fiefdom.supervisors",
    "fiefdom.storage",
    "fiefdom.protocol",
    "fiefdom.daemon",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_the_package_declares_its_api(package: str) -> None:
    """The package has an __all__."""
    assert isinstance(importlib.import_module(package).__all__, list)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_is_exported_once(package: str) -> None:
    """__all__ lists each name once, every listed name exists, and no public name of the
    package is missing from it (re-exported explicitly, never by accident)."""
    module = importlib.import_module(package)
    exported = list(module.__all__)
    duplicates = sorted({name for name in exported if exported.count(name) > 1})
    assert duplicates == []
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == []
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # from __future__ import annotations
    }
    assert sorted(public - set(exported)) == []


def _documented(module: types.ModuleType, name: str) -> bool:
    value = getattr(module, name)
    if inspect.isclass(value):
        doc = value.__dict__.get("__doc__")
        return bool(doc and doc.strip())
    if inspect.isroutine(value):
        return bool(inspect.getdoc(value))
    # Constants and type aliases cannot carry a docstring: the package's docstring names them.
    return name in (module.__doc__ or "")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_has_a_docstring(package: str) -> None:
    """Every exported class and function has its own docstring; every exported constant or
    alias is described in its package docstring."""
    module = importlib.import_module(package)
    assert module.__doc__
    undocumented = [name for name in module.__all__ if not _documented(module, name)]
    assert undocumented == []


def test_the_top_level_api_is_the_union_of_its_parts() -> None:
    """Every name fiefdom re-exports from actors and supervisors is the same object."""
    for package in ("fiefdom.actors", "fiefdom.supervisors"):
        module = importlib.import_module(package)
        for name in fiefdom.__all__:
            if hasattr(module, name):
                assert getattr(fiefdom, name) is getattr(module, name), name
