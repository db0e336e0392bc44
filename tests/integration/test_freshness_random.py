"""Random sequences of configuration changes (committed, rolled back, rolled
back to a savepoint, left open while others read) against a model of what
every backend must see, with the verifier's fast path on (hessra_pg.plpython.abi_0_2):
after every step, each connection's answers equal the model's."""

import random

import pytest

from hessra_pg.core.keys import generate_keypair
from hessra_pg.tokens.mint import mint_authorization
from tests.integration.conftest import scalar

KIDS = (1, 2, 3, 4)
ALL = "SELECT array_agg(hessra_authz.verify_token(t, 'alice', 'orders', 'read') ORDER BY n) " \
      "FROM unnest(%s::text[]) WITH ORDINALITY AS x(t, n)"


class Model:
    def __init__(self) -> None:
        self.active = {kid: True for kid in KIDS}
        self.revoked = {kid: False for kid in KIDS}

    def answers(self) -> list[bool]:
        return [self.active[kid] and not self.revoked[kid] for kid in KIDS]

    def after(self, kind: str, kid: int) -> "Model":
        """This model with one change applied (self untouched)."""
        changed = Model()
        changed.active, changed.revoked = dict(self.active), dict(self.revoked)
        if kind in ("retire", "restore"):
            changed.active[kid] = kind == "restore"
        else:
            changed.revoked[kid] = kind == "revoke"
        return changed


def change(conn, kind: str, kid: int, tokens: dict[int, str]) -> None:
    if kind == "retire":
        conn.execute("SELECT hessra_authz.retire_key(%s)", (kid,))
    elif kind == "restore":
        conn.execute("UPDATE hessra_authz.keys SET not_after = NULL WHERE kid = %s", (kid,))
    elif kind == "revoke":
        conn.execute("SELECT hessra_authz.revoke_token(%s)", (tokens[kid],))
    else:  # unrevoke
        conn.execute("DELETE FROM hessra_authz.revocations WHERE revocation_id = "
                     "(hessra_authz.explain(%s, 'alice', 'orders', 'read')->'revocation_ids'->>0)", (tokens[kid],))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_backend_follows_random_changes(hessra_db, admin, seed):
    rng = random.Random(seed)
    pairs = {kid: generate_keypair() for kid in KIDS}
    for kid, pair in pairs.items():
        admin.execute("SELECT hessra_authz.add_key(%s, %s)", (str(pair.public_key), kid))
    admin.execute("SELECT hessra_authz.add_key(%s, 99)", (str(generate_keypair().public_key),))  # always one active
    tokens = {kid: mint_authorization(pair, "alice", "orders", "read") for kid, pair in pairs.items()}
    listed = [tokens[kid] for kid in KIDS]
    model = Model()
    conns = [hessra_db.connect() for _ in range(3)]
    try:
        for step in range(40):
            writer = rng.choice(conns)
            kind = rng.choice(["retire", "restore", "revoke", "unrevoke"])
            kid = rng.choice(KIDS)
            ending = rng.choice(["commit", "rollback", "savepoint"])
            if ending == "savepoint":
                writer.execute("SAVEPOINT s")
                change(writer, kind, kid, tokens)
                pending = model.after(kind, kid)
                assert scalar(writer, ALL, (listed,)) == pending.answers(), (step, "inside savepoint")
                writer.execute("ROLLBACK TO SAVEPOINT s")
                assert scalar(writer, ALL, (listed,)) == model.answers(), (step, "after rollback to savepoint")
                writer.commit()
            else:
                change(writer, kind, kid, tokens)
                pending = model.after(kind, kid)
                assert scalar(writer, ALL, (listed,)) == pending.answers(), (step, "own change")
                for other in conns:
                    if other is not writer:
                        assert scalar(other, ALL, (listed,)) == model.answers(), (step, "uncommitted elsewhere")
                        other.commit()
                if ending == "rollback":
                    writer.rollback()
                else:  # commits after the others have read
                    writer.commit()
                    model = pending
            for conn in conns:
                assert scalar(conn, ALL, (listed,)) == model.answers(), (step, kind, kid, ending)
                conn.commit()
    finally:
        for conn in conns:
            conn.close()
