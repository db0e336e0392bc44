"""hessra_pg.tokens.capability: the capability tokens it mints print exactly
like the vector tokens (spec hessra-capability-tokens.md §1.1, §2), and
capability_info describes every vector token from its structure."""

from __future__ import annotations

import re
import time
from typing import Any, Callable

import biscuit_auth
import pytest

from hessra_pg.core.capability import verify_capability
from hessra_pg.core.datalog import decode
from hessra_pg.core.encoding import decode_token
from hessra_pg.errors import ArgumentError, KeyFormatError, TokenFormatError
from hessra_pg.tokens.capability import (
    activate,
    attest,
    capability_info,
    complete_facet,
    designate,
    is_capability,
    mint_capability,
)
from hessra_pg.core.verifier import RootKey
from hessra_pg.tokens.mint import TokenTime, mint_authorization
from tests import cap_vectors as cv

NOW, EXP = cv.NOW, cv.EXP
PAST = 1_700_000_000
LONG = TokenTime(start=EXP - 3600, duration=3600)
#: A tenant name chosen by a user (spec §4.2): printed, it looks like two designations.
EVIL = 'x") or designation("tenant", "victim'


def root() -> biscuit_auth.KeyPair:
    return cv.keypair("root")


def _mint(subject: str = "alice", **options: Any) -> str:
    options.setdefault("time_config", LONG)
    return mint_capability(root(), subject, "orders", "read", **options)


def _latent() -> str:
    return _mint("agent", anchor="db:main", latent=cv.public("activator"))


def _pending(at: int, window: int, facet: str) -> str:
    return activate(_latent(), cv.public("root"), cv.keypair("activator"), valid_for=window, facet=facet, now=at)


#: How to mint each vector token with this API (vectors minted with raw
#: Datalog by a holder, the 1.0 format and the other token kinds have none).
RECIPES: dict[str, Callable[[], str]] = {
    "plain": lambda: _mint(),
    "designated_tenant": lambda: _mint(designations=[("tenant", "acme")]),
    "designated_tenant_user": lambda: _mint(designations=[("tenant", "acme"), ("user", "alice")]),
    "anchored": lambda: _mint(anchor="db:main"),
    "anchored_tenant": lambda: _mint(anchor="db:main", designations=[("tenant", "acme")]),
    "trusting_unattested": lambda: _mint(trusting=[(cv.public("attester"), "tenant", "acme")]),
    "trusting_attested": lambda: attest(RECIPES["trusting_unattested"](), cv.public("root"), cv.keypair("attester"),
                                        designations=[("tenant", "acme")]),
    "trusting_attested_wrong_key": lambda: attest(RECIPES["trusting_unattested"](), cv.public("root"),
                                                  cv.keypair("rogue"), designations=[("tenant", "acme")]),
    "latent": _latent,
    "latent_activated": lambda: activate(_latent(), cv.public("root"), cv.keypair("activator"),
                                         valid_for=600, now=NOW - 60),
    "latent_activated_wrong_key": lambda: activate(_latent(), cv.public("root"), cv.keypair("rogue"),
                                                   valid_for=600, now=NOW - 60),
    "latent_facet_pending": lambda: _pending(NOW - 60, 600, "F-1"),
    "latent_facet_complete": lambda: complete_facet(_pending(NOW - 60, 600, "F-1"), cv.public("root"),
                                                    cv.keypair("activator"), "F-1"),
    "latent_facet_wrong_completer": lambda: complete_facet(_pending(NOW - 60, 600, "F-1"), cv.public("root"),
                                                           cv.keypair("rogue"), "F-1"),
    "latent_activation_window_expired": lambda: complete_facet(_pending(NOW - 3600, 300, "F-2"), cv.public("root"),
                                                               cv.keypair("activator"), "F-2"),
    "amended_tenant": lambda: designate(_mint(), cv.public("root"), [("tenant", "acme")]),
    "amended_tenant_then_user": lambda: designate(RECIPES["amended_tenant"](), cv.public("root"), [("user", "alice")]),
    "amended_conflict": lambda: designate(RECIPES["designated_tenant"](), cv.public("root"), [("tenant", "globex")]),
    "amended_valid_for": lambda: designate(_mint(), cv.public("root"), valid_for=60, now=NOW - 61),
    "expired": lambda: _mint(time_config=TokenTime(start=PAST - 300)),
    "designated_tenant_quote": lambda: _mint(designations=[("tenant", EVIL)]),
}


def test_every_recipe_names_a_vector() -> None:
    vectors = cv.tokens()
    assert set(RECIPES) <= set(vectors)
    # every 2.x token minted by Hessra's API (not a holder's raw Datalog) has a recipe
    assert {name for name, entry in vectors.items() if entry["kind"] == "cap-2"} == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_minted_blocks_print_like_the_vectors(name: str) -> None:
    token = RECIPES[name]()
    vector = cv.tokens()[name]
    parsed = biscuit_auth.Biscuit.from_base64(token, _root_public())
    assert parsed.block_count() == len(vector["blocks"])
    for index, block in enumerate(vector["blocks"]):
        assert parsed.block_source(index) == block["source"], (name, index)
        external = parsed.block_external_key(index)
        assert (None if external is None else str(external)) == block["external_key"], (name, index)
    # URL-safe base64 with padding, like Hessra's issue()
    assert "+" not in token and "/" not in token and len(token) % 4 == 0


# -- capability_info on every vector token, against an oracle read from the printed sources --

_DESIGNATION = re.compile(r'^check if designation\("([^"]*)", "([^"]*)"\)(?: trusting (\S+))?;$')
_LATENT = re.compile(r"^check if activation\(\$a\) trusting (\S+);$")
_NAMESPACE = re.compile(r'^check if namespace\("([^"]*)"\);$')
_TIME = re.compile(r"^check if time\(\$(\w+)\), \$\1 < (\d+);$")
_ACTIVATION_FACT = re.compile(r"^activation\((\d+)\);$")
_DESIGNATION_FACT = re.compile(r'^designation\("([^"]*)", "([^"]*)"\);$')
_CAPABILITY_CHECK = "check if resource($res), operation($op), right($sub, $res, $op);"


def _oracle(vector: dict[str, Any]) -> dict[str, Any]:
    """What capability_info should say, from the printed sources (fine for
    these vectors, whose strings hold no quotes except where noted)."""
    anchor = namespace = latent = None
    designations: list[tuple[str, str, int, str, str | None]] = []
    others: list[int] = []
    limits: list[int] = []
    attestations: list[tuple[int, str, tuple[tuple[str, str], ...], int | None]] = []
    for index, block in enumerate(vector["blocks"]):
        where = "authority" if index == 0 else ("attestation" if block["external_key"] else "amendment")
        facts: list[tuple[str, str]] = []
        activation = None
        for line in block["source"].splitlines():
            if not line:
                continue
            if match := _TIME.match(line):
                limits.append(int(match.group(2)))
            elif index == 0 and line == _CAPABILITY_CHECK:
                pass
            elif match := _DESIGNATION.match(line):
                label, value, key = match.groups()
                if index == 0 and key is None and label == "anchor" and anchor is None:
                    anchor = value
                else:
                    designations.append((label, value, index, where, key))
            elif index == 0 and (match := _LATENT.match(line)):
                latent = match.group(1)
            elif index == 0 and (match := _NAMESPACE.match(line)):
                namespace = match.group(1)
            elif match := _ACTIVATION_FACT.match(line):
                activation = int(match.group(1))
            elif match := _DESIGNATION_FACT.match(line):
                facts.append((match.group(1), match.group(2)))
            elif line.startswith(("check if", "check all", "reject if")):
                others.append(index)
        if block["external_key"]:
            attestations.append((index, block["external_key"], tuple(facts), activation))
    activations = [a for a in attestations if a[1] == latent and a[3] is not None]
    vouched = {(key, *fact) for _, key, facts, _ in attestations for fact in facts}
    named = {latent} | {d[4] for d in designations}
    return {
        "capability": vector["kind"].startswith("cap-"),
        "anchor": anchor,
        "namespace": namespace,
        "latent": latent,
        "activated": None if latent is None else bool(activations),
        "activated_at": activations[0][3] if activations else None,
        "designations": [{"label": label, "value": value, "block": block, "where": where, "trusting": key,
                          "attested": None if key is None else (key, label, value) in vouched}
                         for label, value, block, where, key in designations],
        "attestations": [(block, key, facts, activation, key in named)
                         for block, key, facts, activation in attestations],
        "other_blocks": others,
        "expires_at": min(limits) if limits else None,
        "revocation_ids": vector["revocation_ids"],
    }


def _observed(info: Any) -> dict[str, Any]:
    return {
        "capability": info.capability,
        "anchor": info.anchor,
        "namespace": info.namespace,
        "latent": info.latent,
        "activated": info.activated,
        "activated_at": info.activated_at,
        "designations": [check.as_dict() for check in info.designations],
        "attestations": [(a.block, a.key, a.designations, a.activation, a.named) for a in info.attestations],
        "other_blocks": [check.block for check in info.other_checks],
        "expires_at": info.expires_at,
        "revocation_ids": list(info.revocation_ids),
    }


@pytest.mark.parametrize("name", sorted(cv.tokens()))
def test_capability_info_of_every_vector(name: str) -> None:
    vector = cv.tokens()[name]
    info = capability_info(vector["token"], cv.public("root"))
    expected = _oracle(vector)
    if name == "designated_tenant_quote":
        # The printed line reads as two designations; the structure holds one.
        assert expected["designations"] == [] and expected["other_blocks"] == [0]
        expected["designations"] = [{"label": "tenant", "value": EVIL, "block": 0, "where": "authority",
                                     "trusting": None, "attested": None}]
        expected["other_blocks"] = []
    assert info.verified is True
    assert _observed(info) == expected
    if info.capability or name.startswith("authz"):
        assert (info.subject, info.resource, info.operation) == (vector["blocks"][0]["source"].split('"')[1],
                                                                "orders", "read")


def test_spot_checks_of_capability_info() -> None:
    tokens = cv.tokens()
    complete = capability_info(tokens["latent_facet_complete"]["token"], cv.public("root"))
    assert complete.anchor == "db:main" and complete.latent == cv.public("activator")
    assert (complete.activated, complete.activated_at, complete.activation_block) == (True, NOW - 60, 1)
    assert [(d.label, d.value, d.trusting, d.attested) for d in complete.designations] == [
        ("facet", "F-1", cv.public("activator"), True)]
    assert complete.attestations[0].expires_at == NOW - 60 + 600
    wrong = capability_info(tokens["latent_activated_wrong_key"]["token"], cv.public("root"))
    assert wrong.activated is False and wrong.attestations[0].named is False
    assert wrong.attestations[0].key == cv.public("rogue") and wrong.attestations[0].activates
    assert capability_info(tokens["v1_namespace"]["token"], cv.public("root")).namespace == "db.example"
    for name in ("authz_g3", "authz_g2", "identity", "context"):
        assert capability_info(tokens[name]["token"], cv.public("root")).capability is False


@pytest.mark.parametrize("name", ["latent_facet_complete", "trusting_attested", "latent", "plain"])
def test_capability_info_without_a_root_key(name: str) -> None:
    vector = cv.tokens()[name]
    checked = capability_info(vector["token"], cv.public("root"))
    parsed = capability_info(vector["token"])
    assert parsed.verified is False
    assert parsed.activated is None
    assert all(check.attested is None for check in parsed.designations)
    assert (parsed.anchor, parsed.latent, parsed.attestations, parsed.revocation_ids) == (
        checked.anchor, checked.latent, checked.attestations, checked.revocation_ids)
    assert [(c.label, c.value, c.trusting) for c in parsed.designations] == [
        (c.label, c.value, c.trusting) for c in checked.designations]


def test_capability_info_refuses_a_wrong_root_key() -> None:
    token = cv.tokens()["plain"]["token"]
    with pytest.raises(TokenFormatError) as raised:
        capability_info(token, cv.public("rogue"))
    assert token[:40] not in str(raised.value)
    with pytest.raises(TokenFormatError):
        capability_info(token[:100])


# -- the API ---------------------------------------------------------------------

def test_values_are_parameters_never_datalog_text() -> None:
    values = [("tenant", EVIL), ('a"b', "{p0}"), ("{k0}", 'x");\ncheck if true;\n("'), ("empty", "")]
    token = _mint(designations=values, anchor='db"main')
    structure = decode(decode_token(token))
    info = capability_info(token, cv.public("root"))
    assert info.anchor == 'db"main'
    assert [(d.label, d.value) for d in info.designations] == values
    assert len(structure.blocks[0].checks) == 3 + len(values)
    # an amendment and an attestation carry them the same way
    amended = designate(token, cv.public("root"), [("user", EVIL)])
    attested = attest(amended, cv.public("root"), cv.keypair("attester"), designations=[("{p1}", EVIL)])
    info = capability_info(attested, cv.public("root"))
    assert (info.designations[-1].label, info.designations[-1].value) == ("user", EVIL)
    assert info.attestations[0].designations == (("{p1}", EVIL),)


def test_authority_order_whatever_the_arguments() -> None:
    token = _mint(latent=cv.public("activator"), trusting=[(cv.public("attester"), "facet", "F")],
                  designations=[("tenant", "acme")], anchor="db:main")
    lines = decode_source(token, 0)
    assert lines[3:] == [
        'check if designation("anchor", "db:main");',
        'check if designation("tenant", "acme");',
        f'check if designation("facet", "F") trusting {cv.public("attester")};',
        f'check if activation($a) trusting {cv.public("activator")};',
    ]


def _root_public() -> biscuit_auth.PublicKey:
    return biscuit_auth.PublicKey.from_bytes(bytes.fromhex(cv.public("root").split("/")[1]),
                                             biscuit_auth.Algorithm.Ed25519)


def decode_source(token: str, index: int) -> list[str]:
    parsed = biscuit_auth.Biscuit.from_base64(token, _root_public())
    return parsed.block_source(index).splitlines()


def test_amendment_bodies() -> None:
    token = _mint()
    narrowed = designate(token, cv.public("root"), [("tenant", "acme")],
                         trusting=[(cv.public("attester"), "user", "alice")], valid_for=60, now=NOW)
    assert decode_source(narrowed, 1) == [
        'check if designation("tenant", "acme");',
        f'check if designation("user", "alice") trusting {cv.public("attester")};',
        f"check if time($t), $t < {NOW + 60};",
    ]
    vouched = attest(token, cv.public("root"), cv.keypair("attester"), designations=[("user", "alice")],
                     constraints=[("tenant", "acme")], trusting=[(cv.public("rogue"), "x", "y")],
                     valid_for=5, now=NOW)
    assert decode_source(vouched, 1) == [
        'designation("user", "alice");',
        'check if designation("tenant", "acme");',
        f'check if designation("x", "y") trusting {cv.public("rogue")};',
        f"check if time($t), $t < {NOW + 5};",
    ]
    assert biscuit_auth.UnverifiedBiscuit.from_base64(vouched).block_count() == 2
    # an activation without a window has no time check
    woken = activate(_latent(), cv.public("root"), cv.keypair("activator"), valid_for=None, now=NOW)
    assert decode_source(woken, 1) == [f"activation({NOW});"]
    assert capability_info(woken, cv.public("root")).activated is True


def test_lifetimes() -> None:
    before = int(time.time())
    default = capability_info(mint_capability(root(), "a", "r", "o"), cv.public("root")).expires_at
    assert default is not None and before + 300 <= default <= int(time.time()) + 300
    longer = capability_info(mint_capability(root(), "a", "r", "o", valid_for=3600), cv.public("root")).expires_at
    assert longer is not None and before + 3600 <= longer <= int(time.time()) + 3600
    started = mint_capability(root(), "a", "r", "o", time_config=TokenTime(start=1000, duration=50))
    assert capability_info(started, cv.public("root")).expires_at == 1050
    started = mint_capability(root(), "a", "r", "o", time_config=TokenTime(start=1000, duration=50), valid_for=7)
    assert capability_info(started, cv.public("root")).expires_at == 1007
    # an amendment has no time check unless valid_for is given
    narrowed = designate(started, cv.public("root"), [("t", "v")])
    assert capability_info(narrowed, cv.public("root")).expires_at == 1007


def test_root_key_id_and_key_forms() -> None:
    pem_key = biscuit_auth.PublicKey.from_bytes(bytes.fromhex(cv.public("attester").split("/")[1]),
                                                biscuit_auth.Algorithm.Ed25519)
    token = mint_capability(root(), "a", "r", "o", root_key_id=7, trusting=[(pem_key, "t", "v")],
                            latent=cv.public("activator"))
    assert biscuit_auth.UnverifiedBiscuit.from_base64(token).root_key_id() == 7
    info = capability_info(token, cv.public("root"))
    assert info.designations[0].trusting == cv.public("attester") and info.latent == cv.public("activator")


@pytest.mark.parametrize("call,error", [
    (lambda: mint_capability(root(), None, "r", "o"), ArgumentError),  # type: ignore[arg-type]
    (lambda: mint_capability(root(), "", "r", "o"), ArgumentError),
    (lambda: mint_capability(root(), "s", "r", "o", designations=[("only-a-label",)]), ArgumentError),
    (lambda: mint_capability(root(), "s", "r", "o", designations=["t=v"]), ArgumentError),
    (lambda: mint_capability(root(), "s", "r", "o", designations=[{"t": "v"}]), ArgumentError),
    (lambda: mint_capability(root(), "s", "r", "o", trusting=[7]), ArgumentError),
    (lambda: mint_capability(root(), "s", "r", "o", designations=[("", "v")]), ArgumentError),
    (lambda: mint_capability(root(), "s", "r", "o", designations=[("t", 1)]), ArgumentError),
    (lambda: mint_capability(root(), "s", "r", "o", anchor=""), ArgumentError),
    (lambda: mint_capability(root(), "s", "r", "o", trusting=[("ed25519/00", "t", "v")]), KeyFormatError),
    (lambda: mint_capability(root(), "s", "r", "o", trusting=[("t", "v")]), ArgumentError),
    (lambda: mint_capability(root(), "s", "r", "o", latent="nonsense"), KeyFormatError),
    (lambda: mint_capability(root(), "s", "r", "o", valid_for=0), ArgumentError),
    (lambda: mint_capability(root(), "s", "r", "o", root_key_id=-1), ArgumentError),
    (lambda: designate(_mint(), cv.public("root"), []), ArgumentError),
    (lambda: designate(_mint(), cv.public("root"), [("t", "v")], valid_for=-5), ArgumentError),
    (lambda: designate(_mint(), cv.public("rogue"), [("t", "v")]), TokenFormatError),
    (lambda: designate("not a token", cv.public("root"), [("t", "v")]), TokenFormatError),
    (lambda: attest(_mint(), cv.public("root"), cv.keypair("attester")), ArgumentError),
    (lambda: attest(_mint(), cv.public("rogue"), cv.keypair("attester"), designations=[("t", "v")]),
     TokenFormatError),
    (lambda: activate(_latent(), cv.public("root"), cv.keypair("activator"), facet=""), ArgumentError),
    (lambda: activate(_latent(), cv.public("root"), cv.keypair("activator"), now=-1), ArgumentError),
])
def test_bad_arguments(call: Callable[[], Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        call()


def test_is_capability_reads_the_structure() -> None:
    def authority(source: str) -> bool:
        token = biscuit_auth.BiscuitBuilder(source).build(root().private_key).to_base64()
        return is_capability(decode(decode_token(token)))

    right = 'right("a", "r", "o");\n'
    assert authority(right + "check if resource($res), operation($op), right($sub, $res, $op);")
    assert authority(right + "check if right($s, $x, $y), operation($y), resource($x);")  # names and order free
    assert not authority(right + "check if resource($res), operation($op), right($res, $res, $op);")
    assert not authority(right + 'check if resource($res), operation($op), right($sub, $res, $op), $sub == "a";')
    assert not authority(right + "check if subject($sub), resource($res), operation($op), right($sub, $res, $op);")
    assert not authority(right + 'check if resource($res), operation($op), right("a", $res, $op);')
    assert not authority(right + "check if resource($res), operation($op), right($sub, $res, $op) trusting previous;")
    assert not authority(right + right.replace('"a"', '"b"')
                         + "check if resource($res), operation($op), right($sub, $res, $op);")
    assert not authority('check if resource($res), operation($op), right($sub, $res, $op);')
    # a string that spells the check is not the check
    assert not authority(right + 'check if operation("check if resource($res), operation($op), '
                                 'right($sub, $res, $op);");')
    g3 = mint_authorization(root(), "a", "r", "o")
    assert not is_capability(decode(decode_token(g3)))


def test_api_round_trip_under_the_database_policy() -> None:
    """mint -> designate -> activate -> complete, each checked with
    hessra_pg.core.capability.verify_capability."""
    keys = [RootKey(0, cv.public("root"))]

    def reason(token: str, *designations: tuple[str, str], anchor: str | None = "db:main") -> str:
        decision = verify_capability(token, keys, now=NOW, resource="orders", operation="read",
                                     designations=designations, anchor=anchor)
        return "ok" if decision.valid else decision.reason

    token = mint_capability(root(), "agent", "orders", "read", anchor="db:main", designations=[("tenant", "acme")],
                            latent=cv.public("activator"), time_config=LONG)
    narrowed = designate(token, cv.public("root"), [("user", "alice")])
    assert reason(narrowed, ("tenant", "acme"), ("user", "alice")) == "not_activated"
    pending = activate(narrowed, cv.public("root"), cv.keypair("activator"), facet="F-9", valid_for=60, now=NOW - 1)
    assert reason(pending, ("tenant", "acme"), ("user", "alice")).startswith("designation_mismatch:facet")
    complete = complete_facet(pending, cv.public("root"), cv.keypair("activator"), "F-9")
    assert reason(complete, ("tenant", "acme"), ("user", "alice")) == "ok"
    assert reason(complete, ("tenant", "acme")).startswith("designation_mismatch:user")
    assert reason(complete, ("tenant", "acme"), ("user", "alice"), anchor="db:other") == "anchor_mismatch"
    info = capability_info(complete, cv.public("root"))
    assert (info.activated, info.activated_at, [a.named for a in info.attestations]) == (True, NOW - 1, [True, True])
    with pytest.raises(ArgumentError):
        reason(complete, ("facet", "F-9"))
