"""Every hessra_pg exception class declares its SQLSTATE, in hessra_pg.errors
(or, for the two that format their own data, next to it)."""

import importlib
import inspect
import pkgutil

import hessra_pg
from hessra_pg import errors

#: The deprecated top-level aliases of 0.3.0's move (importing them warns).
ALIASES = {"verify", "keys", "encoding", "shape", "mint", "identity", "inspect", "policies", "config", "install",
           "doctor", "cluster", "testing", "shared_cache", "demo", "server", "backend", "__main__"}


def all_error_classes() -> set[type]:
    for module in pkgutil.walk_packages(hessra_pg.__path__, "hessra_pg."):
        if module.name.removeprefix("hessra_pg.") not in ALIASES:
            importlib.import_module(module.name)
    found, stack = set(), [errors.HessraError]
    while stack:
        cls = stack.pop()
        found.add(cls)
        stack.extend(cls.__subclasses__())
    return found


def test_every_error_class_is_in_errors_or_declares_its_sqlstate():
    classes = all_error_classes()
    assert len(classes) > 20
    for cls in classes:
        if cls.__module__ != "hessra_pg.errors":
            assert "sqlstate" in vars(cls), f"{cls.__module__}.{cls.__qualname__} declares no SQLSTATE"
        assert len(cls.sqlstate) == 5 and cls.sqlstate.isalnum(), cls


def test_sqlstates_say_what_kind_of_problem():
    assert errors.ConfigurationError.sqlstate == "55000"
    assert errors.UnknownChainError.sqlstate == "42704"
    assert errors.KeyFormatError.sqlstate == errors.ArgumentError.sqlstate == "22023"
    assert errors.StaleSnapshotError.sqlstate == "40001"
    assert errors.InternalError.sqlstate == "XX000"
    assert errors.NoActiveKeyError("x").hint.startswith("Add the authority's public key")
    assert errors.NoActiveKeyError("x", hint="specific").hint == "specific"
    assert inspect.getmodule(errors.DoctorRequirementError) is errors
