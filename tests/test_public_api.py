"""The public API (STYLE 1): each package re-exports its public names explicitly, lists
each once in ``__all__``, and documents every one of them. The packages are found by walking
``fiefdom``, so a new layer is checked the day it appears."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import pytest

import fiefdom


def _raise(name: str) -> None:
    # walk_packages skips a package that fails to import unless told otherwise.
    raise ImportError(f"cannot import {name} while walking fiefdom")


def _public_packages() -> list[str]:
    walked = pkgutil.walk_packages(fiefdom.__path__, "fiefdom.", onerror=_raise)
    public = sorted(
        info.name
        for info in walked
        if info.ispkg and not any(part.startswith("_") for part in info.name.split("."))
    )
    return ["fiefdom", *public]


PACKAGES = _public_packages()
# The layers DESIGN.md names that exist today; the walk must find at least these.
KNOWN_LAYERS = {"actors", "supervisors", "storage", "jobs", "protocol", "daemon"}


def _public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # from __future__ import annotations
    }


def test_the_walk_finds_every_layer() -> None:
    """The packages checked below include every layer of the library (the walk is not empty
    and does not stop at the first level)."""
    assert {f"fiefdom.{layer}" for layer in KNOWN_LAYERS} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_the_package_declares_its_api(package: str) -> None:
    """The package has an __all__ of names."""
    exported = importlib.import_module(package).__all__
    assert isinstance(exported, list)
    assert all(isinstance(name, str) for name in exported)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_is_exported_once(package: str) -> None:
    """__all__ lists each name once."""
    exported = list(importlib.import_module(package).__all__)
    duplicates = sorted({name for name in exported if exported.count(name) > 1})
    assert duplicates == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_exists(package: str) -> None:
    """Every name __all__ lists is an attribute of the package."""
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_public_name_is_missing_from_all(package: str) -> None:
    """Every public name of the package is in __all__ (re-exported explicitly, never by
    accident)."""
    module = importlib.import_module(package)
    assert sorted(_public_names(module) - set(module.__all__)) == []


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


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "fiefdom"])
def test_the_top_level_api_is_the_union_of_its_parts(package: str) -> None:
    """Every name fiefdom re-exports from the package is the package's own object."""
    module = importlib.import_module(package)
    shared = sorted(set(fiefdom.__all__) & set(module.__all__))
    different = [name for name in shared if getattr(fiefdom, name) is not getattr(module, name)]
    assert different == []
