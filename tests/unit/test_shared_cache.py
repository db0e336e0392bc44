"""The decision table shared by a database's backends (hessra_pg.plpython.shared_decisions)."""

import os
import stat

import pytest

from hessra_pg.plpython.shared_decisions import DIRECTORY, SLOTS, SharedDecisions


@pytest.fixture
def table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a backend's working directory is the data directory
    shared = SharedDecisions.for_database(16384)
    assert shared is not None
    return shared


def test_a_recorded_decision_holds_until_its_limit(table):
    digest = SharedDecisions.digest("7/100", "('authorization', 'alice')", b"t" * 16)
    assert table.allowed_until(digest, 1000.0) is None
    table.record(digest, 2000.0)
    assert table.allowed_until(digest, 1000.0) == 2000.0
    assert table.allowed_until(digest, 1999.9) == 2000.0
    assert table.allowed_until(digest, 2000.0) is None
    assert (table.hits, table.misses) == (2, 2)


def test_other_versions_arguments_and_tokens_miss(table):
    digest = SharedDecisions.digest("7/100", "('authorization', 'alice')", b"t" * 16)
    table.record(digest, float("inf"))
    for other in (SharedDecisions.digest("8/100", "('authorization', 'alice')", b"t" * 16),
                  SharedDecisions.digest("7/100", "('authorization', 'bob')", b"t" * 16),
                  SharedDecisions.digest("7/100", "('authorization', 'alice')", b"u" * 16)):
        assert table.allowed_until(other, 0.0) is None
    assert table.allowed_until(digest, 0.0) == float("inf")


def test_a_torn_or_corrupted_entry_reads_as_a_miss(table):
    digest = SharedDecisions.digest("7/100", "args", b"t" * 16)
    table.record(digest, 5000.0)
    offset = table._offset(digest)
    for position in (3, 17, 30):  # digest, limit, checksum
        original = table._map[offset + position]
        table._map[offset + position] = original ^ 0x01
        assert table.allowed_until(digest, 0.0) is None
        table._map[offset + position] = original
    assert table.allowed_until(digest, 0.0) == 5000.0


def test_a_newer_entry_in_the_same_slot_replaces_the_older(table):
    first = SharedDecisions.digest("v", "a", b"1" * 16)
    offset = table._offset(first)
    second = first[:8] + bytes(8)  # slots are chosen by the digest's first 8 bytes
    assert table._offset(second) == offset
    table.record(first, 10.0)
    table.record(second, 20.0)
    assert table.allowed_until(first, 0.0) is None
    assert table.allowed_until(second, 0.0) == 20.0


def test_the_file_is_private_and_fixed_in_size(table, tmp_path):
    directory = tmp_path / DIRECTORY
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    path = directory / "16384"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_size == SLOTS * 32 + 64
    for i in range(1000):
        table.record(SharedDecisions.digest("v", str(i), b"t" * 16), 1.0)
    assert path.stat().st_size == SLOTS * 32 + 64


def test_an_unusable_directory_means_no_sharing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / DIRECTORY).write_text("not a directory")
    assert SharedDecisions.for_database(1) is None


def test_two_tables_of_one_database_see_each_other(table, tmp_path):
    other = SharedDecisions(str(tmp_path / DIRECTORY / "16384"))
    digest = SharedDecisions.digest("v", "a", b"t" * 16)
    table.record(digest, 99.0)
    assert other.allowed_until(digest, 0.0) == 99.0
    assert os.path.getsize(tmp_path / DIRECTORY / "16384") == SLOTS * 32 + 64


def test_another_package_version_does_not_read_the_entries(table, monkeypatch):
    from hessra_pg.plpython import shared_decisions as shared_cache

    digest = SharedDecisions.digest("7/100", "args", b"t" * 16)
    table.record(digest, 50.0)
    monkeypatch.setattr(shared_cache, "__version__", "99.0.0")
    assert SharedDecisions.digest("7/100", "args", b"t" * 16) != digest
