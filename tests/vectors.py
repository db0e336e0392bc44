"""Read the interop vectors from ../shared/vectors (never copied here)."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from functools import lru_cache
from pathlib import Path

def _vectors_dir() -> Path:
    """HESSRA_VECTORS_DIR, else ../shared/vectors beside this checkout, else
    beside the local repository this checkout was cloned from (a scratch
    clone in a temporary directory has no ../shared of its own)."""
    if os.environ.get("HESSRA_VECTORS_DIR"):
        return Path(os.environ["HESSRA_VECTORS_DIR"])
    checkout = Path(__file__).resolve().parents[1]
    beside = checkout.parent / "shared" / "vectors"
    if beside.exists():
        return beside
    try:
        origin = subprocess.run(["git", "-C", str(checkout), "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin.startswith("file://"):
        origin = origin[len("file://"):]
    if origin and Path(origin).is_dir():
        cloned_from = Path(origin).resolve().parent / "shared" / "vectors"
        if cloned_from.exists():
            return cloned_from
    return beside


VECTORS = _vectors_dir()
SETS = ("hessra-postgres", "hessra-sdk")


def _load(path: Path):
    if not path.exists():
        raise FileNotFoundError(f"interop vectors not found at {path}: tests expect ../shared/vectors beside the checkout "
                                "or beside the repository it was cloned from (or set HESSRA_VECTORS_DIR)")
    return path


@lru_cache(maxsize=None)
def root_key_pem() -> str:
    return _load(VECTORS / "hessra-sdk" / "hessra_key.pem").read_text()


@lru_cache(maxsize=None)
def singleton_tokens(vector_set: str) -> list[dict]:
    return json.loads(_load(VECTORS / vector_set / "test_tokens.json").read_text())["tokens"]


@lru_cache(maxsize=None)
def chain_tokens(vector_set: str) -> list[dict]:
    return json.loads(_load(VECTORS / vector_set / "service_chain_tokens.json").read_text())["tokens"]


@lru_cache(maxsize=None)
def order_service_chain() -> list[dict]:
    return json.loads(_load(VECTORS / "hessra-postgres" / "order_service_chain.json").read_text())["order_service"]


@lru_cache(maxsize=None)
def service_nodes() -> dict[str, dict]:
    data = tomllib.loads(_load(VECTORS / "hessra-sdk" / "service_nodes.toml").read_text())
    return {node["component"]: node for node in data["service_nodes"]}


#: Spec §10.2, identical for every vector set: token -> results for
#: (own nodes, None), then the full chain with component
#: None / auth_service / payment_service / order_service.
CHAIN_MATRIX = {
    "order_service_authority_token": (True, False, True, False, False),
    "order_service_node_1_token": (True, False, True, True, False),
    "order_service_node_2_token": (True, False, True, True, True),
    "order_service_node_3_token": (True, True, True, True, True),
}
CHAIN_COMPONENTS = (None, "auth_service", "payment_service", "order_service")


# -- capability tokens (spec hessra-capability-tokens.md §9) -------------------


@lru_cache(maxsize=None)
def capability_keys() -> dict[str, dict]:
    """root, activator, attester, rogue: {"public": "ed25519/...", "private_hex": ...}."""
    return json.loads(_load(VECTORS / "capability" / "keys.json").read_text())["keys"]


@lru_cache(maxsize=None)
def capability_tokens() -> dict[str, dict]:
    """Each vector token by name: {"token", "kind", "blocks", "revocation_ids", ...}."""
    return {entry["name"]: entry
            for entry in json.loads(_load(VECTORS / "capability" / "tokens.json").read_text())["tokens"]}


@lru_cache(maxsize=None)
def capability_expected() -> dict:
    """{"oracle", "cases", "rls"}: the expected results of every case."""
    return json.loads(_load(VECTORS / "capability" / "expected.json").read_text())
