"""The checkpoint's own arithmetic, exactly: which rows are finished, errored and in doubt decides what a
rerun sends (and so what is paid for twice). Found by the mutation run (benchmarks/mutation)."""

from __future__ import annotations

import random

from inferbatch.bits import Bits
from inferbatch.checkpoint import input_identity


def test_bits_set_clear_and_membership_are_exact_across_bytes() -> None:
    """A bit in the wrong place marks the wrong row finished (never sent) or unfinished (sent twice)."""
    rng = random.Random(3)
    bits = Bits()
    truth: set[int] = set()
    for _ in range(2_000):
        index = rng.randrange(0, 300)
        if rng.random() < 0.6:
            bits.set(index)
            truth.add(index)
        else:
            bits.clear(index)
            truth.discard(index)
        assert (index in bits) == (index in truth)
    assert [i for i in range(320) if i in bits] == sorted(truth)
    assert bits.count() == len(truth)


def test_clearing_a_bit_beyond_the_end_is_a_no_op_and_leaves_its_neighbours() -> None:
    bits = Bits()
    bits.set(8)
    bits.set(15)
    bits.clear(9)
    bits.clear(10_000)
    assert [i for i in range(24) if i in bits] == [8, 15]
    bits.clear(15)
    assert [i for i in range(24) if i in bits] == [8]


def test_count_and_not_counts_rows_sent_but_not_finished() -> None:
    """The in-doubt figure: sent, with no result. Rows beyond the end of the finished map count too."""
    sent, finished = Bits(), Bits()
    for index in (0, 7, 8, 16, 31):
        sent.set(index)
    finished.set(7)
    assert sent.count_and_not(finished) == 4
    assert sent.count_and_not(Bits()) == 5  # nothing finished: all in doubt
    finished.set(0)
    finished.set(8)
    assert sent.count_and_not(finished) == 2  # 16 and 31, past the finished map's last byte


def test_the_identity_of_a_large_input_changes_with_its_last_block(tmp_path) -> None:
    """The cheap part of the identity (first and last 64 KiB) is all an s3:// input gets: an edit in the
    last block of a large file must change it, an edit in the middle need not (the content hash sees it)."""
    path = tmp_path / "big.jsonl"
    data = bytearray(b"x" * 300_000)
    path.write_bytes(data)
    before = input_identity(str(path))
    data[-10] = ord("y")
    path.write_bytes(data)
    after_end = input_identity(str(path))
    assert after_end["hash"] != before["hash"] and after_end["size"] == before["size"]
    data[-10] = ord("x")
    data[150_000] = ord("y")
    path.write_bytes(data)
    middle = input_identity(str(path))
    assert middle["hash"] == before["hash"]  # the first/last blocks are the same
    assert middle["content"] != before["content"]  # the whole-content hash is not
    data[100] = ord("z")
    data[150_000] = ord("x")
    path.write_bytes(data)
    assert input_identity(str(path))["hash"] != before["hash"]


def test_the_identity_of_an_input_is_the_same_from_version_to_version(tmp_path) -> None:
    """An upgrade must not refuse every checkpoint in flight: the identity's hashes are pinned values."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"x" * 100)
    identity = input_identity(str(path))
    assert identity["size"] == 100
    assert identity["hash"] == identity["content"] == "422b600f4832a6fc772df18fba51fce1"


def test_the_cheap_identity_of_a_large_input_is_pinned_too(tmp_path) -> None:
    """The first/last-block hash (all an s3:// input gets) must not change between versions either."""
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 800)  # 200 KiB: both blocks, and a middle
    assert input_identity(str(path))["hash"] == "1afe30e10fd59c58476300b1f8acd046"


def test_clearing_a_bit_past_the_end_is_a_no_op() -> None:
    bits = Bits()
    bits.set(3)
    bits.clear(8)  # the first index of a byte the set does not have yet
    bits.clear(1_000)
    assert 3 in bits and 8 not in bits and bits.count() == 1
