"""Block keys: the store is addressed by them, so they must never change between versions."""

from __future__ import annotations

from streamcheck.connector.keys import block_hashes, layer_key


def test_the_keys_are_pinned_a_store_on_disk_is_found_by_the_next_version():
    assert block_hashes(list(range(40)), 16, "ns") == [
        "967a3e014b2cc7127202bf8ea10a52fc", "aeb40af14e0ba092eb534c652c1852e1"]
    assert block_hashes([151643, 0, 7, 2**31 - 1] * 5, 4)[-1] == "50e13c248c747fc8b52ae7e32f92ba9d"


def test_only_full_blocks_have_keys_and_each_covers_its_whole_prefix():
    assert block_hashes([1, 2, 3], 4) == []
    a = block_hashes(list(range(12)), 4)
    b = block_hashes([99, *range(1, 12)], 4)
    assert len(a) == 3 and all(x != y for x, y in zip(a, b, strict=True))  # the chain carries
    assert block_hashes(list(range(13)), 4) == a  # a partial block adds nothing
    assert block_hashes(list(range(12)), 4, "other") != a  # namespaces apart
    assert layer_key(a[0], 3) == f"{a[0]}.L3"
