"""Run inside a virtualenv with hessra-pg installed from the wheel (not by pytest).

Usage: python check_env.py '<json>' with
  {"present": [dist, ...], "absent": [dist, ...], "needs": {module prefix: dist}}

Checks that every distribution in "present" is installed and none in
"absent", then imports every module of the installed hessra_pg package, in
this order, each in this one interpreter: a module whose prefix in "needs"
names an absent distribution must fail with ImportError, every other module
must import. Prints a JSON report (the caller asserts on it) and exits 0.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import sys
import warnings
from pathlib import Path


def installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def package_modules(package: str) -> list[str]:
    """Every module of the installed package, found from its files (nothing imported)."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    root = Path(next(iter(spec.submodule_search_locations)))
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[0].startswith("_extension") or parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join([package, *parts]))
    return names


def main() -> int:
    spec = json.loads(sys.argv[1])
    report: dict = {
        "python": sys.executable,
        "hessra_pg_file": None,
        "missing": [d for d in spec["present"] if not installed(d)],
        "unexpected": [d for d in spec["absent"] if installed(d)],
        "imported": [],
        "refused": {},
        "broken": {},
    }
    warnings.simplefilter("ignore", DeprecationWarning)  # the old module names are aliases
    present = set(spec["present"])
    for name in package_modules("hessra_pg"):
        needed = [dist for prefix, dist in spec["needs"].items() if name == prefix or name.startswith(prefix + ".")]
        expect_import = all(dist in present for dist in needed)
        try:
            importlib.import_module(name)
        except ImportError as exc:
            message = f"{type(exc).__name__}: {exc}"
            (report["broken"] if expect_import else report["refused"])[name] = message
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            report["broken"][name] = f"{type(exc).__name__}: {exc}"
        else:
            if expect_import:
                report["imported"].append(name)
            else:
                report["broken"][name] = f"imported although {needed} is not installed"
    import hessra_pg

    report["hessra_pg_file"] = hessra_pg.__file__
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
