"""The skinny matmuls' configs: the row buckets, the tuned table's lookup and the rule beside it."""
import json

import pytest

from microbench.kernels import gemv_configs as gc


def test_row_buckets_are_the_powers_of_two_at_or_above():
    assert [gc.row_bucket(r) for r in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, 16, 16]


def test_device_key_makes_a_file_name():
    assert gc.device_key("NVIDIA H200") == "NVIDIA_H200"
    assert gc.device_key("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3"


@pytest.fixture
def fake_table(tmp_path, monkeypatch):
    """write(configs): a tuned table for the device "Fake GPU" that choose_config reads."""
    monkeypatch.setattr(gc, "CONFIG_DIR", tmp_path)

    def write(configs):
        (tmp_path / "gemv_Fake_GPU.json").write_text(json.dumps({"configs": configs}))
        gc.load_table.cache_clear()
    yield write
    gc.load_table.cache_clear()


def test_tuned_entry_wins_for_its_shape_and_bucket_only(fake_table):
    tuned = dict(BLOCK_N=64, BLOCK_K=256, STAGES=3, num_warps=8, AHEAD=0, DOT=1, us=9.0)
    key = gc.shape_key(6144, 4096, True, 0, 2)
    fake_table({key: {"4": tuned}})
    for rows in (3, 4):   # one bucket, one config; an entry tuned before DEFER and SPLIT: 0, 1
        got = gc.choose_config(6144, 4096, rows, 2, norm=True, epi=0, device_name="Fake GPU")
        assert got == dict(BLOCK_N=64, BLOCK_K=256, STAGES=3, num_warps=8, AHEAD=0, DOT=1, DEFER=0,
                           SPLIT=1)
    # another bucket, another fusion, another device: the rule
    for args, dev in (((6144, 4096, 2, 2, True, 0), "Fake GPU"),
                      ((6144, 4096, 4, 2, False, 1), "Fake GPU"),
                      ((6144, 4096, 4, 2, True, 0), "Other GPU")):
        assert gc.choose_config(*args, device_name=dev) == gc.rule_config(*args[:4])


@pytest.mark.parametrize("k", [768, 2048, 4096, 14336])
def test_rule_keeps_the_reduction_order_per_bucket(k):
    """Every row count of a bucket gets one config (so one summation order)."""
    for lo, hi in ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16)):
        assert len({tuple(sorted(gc.rule_config(4096, k, r, 2).items())) for r in range(lo, hi + 1)}) == 1
    assert gc.rule_config(4096, k, 1, 2)["DOT"] == 0 and gc.rule_config(4096, k, 2, 2)["DOT"] == 2


def test_the_rule_splits_k_while_column_blocks_are_few():
    """Above one row: 64 weight rows per block; K split while the blocks number under 128 and
    each split keeps two 256-wide chunks at least."""
    assert gc.rule_config(128256, 4096, 4, 2)["SPLIT"] == 1        # an LM head: 2004 blocks
    assert gc.rule_config(4096, 14336, 4, 2)["SPLIT"] == 2         # 64 blocks
    assert gc.rule_config(2048, 8192, 16, 2)["SPLIT"] == 4         # 32 blocks
    assert gc.rule_config(768, 768, 16, 2)["SPLIT"] == 1           # K too short to split


def test_the_rules_wide_tiles_fit_shared_memory():
    """Three stages of a SwiGLU tile's gate and up chunks and the rows' chunk, at every element
    size, within the H100's and H200's 227 KiB of shared memory per block (an fp32 decoder once
    asked for 306 KiB)."""
    for elt in (2, 4):
        for k in (64, 768, 4096, 14336):
            c = gc.rule_config(4096, k, 4, elt)
            stage = (2 * c["BLOCK_N"] + 16) * c["BLOCK_K"] * elt
            assert c["STAGES"] * stage <= 227 * 1024, (elt, k, c)


@pytest.mark.parametrize("rows", [1, 2, 4, 8, 16])
def test_candidates_hold_the_rule_and_only_tiles_that_fit(rows):
    for k in (768, 4096):
        cands = gc.candidates(k, rows, 2)
        assert gc.rule_config(0, k, rows, 2) in cands
        assert all(set(c) == set(gc.LAUNCH_KEYS) for c in cands)
        # CUDA-core tiles hold every row in registers: never at 16 rows
        assert rows <= 8 or all(c["DOT"] in (1, 2) for c in cands)
        assert any(c["DOT"] == 2 for c in cands)
        assert len({tuple(sorted(c.items())) for c in cands}) == len(cands)


def test_tables_off_hides_every_table(fake_table):
    tuned = dict(BLOCK_N=64, BLOCK_K=256, STAGES=3, num_warps=8, AHEAD=0, DOT=0, DEFER=2, SPLIT=1)
    key = gc.shape_key(512, 256, False, 0, 2)
    fake_table({key: {"1": tuned}})
    assert gc.choose_config(512, 256, 1, 2, device_name="Fake GPU") == tuned
    with gc.tables_off():
        assert gc.choose_config(512, 256, 1, 2, device_name="Fake GPU") == gc.rule_config(512, 256, 1, 2)
    assert gc.choose_config(512, 256, 1, 2, device_name="Fake GPU") == tuned


def test_the_clis_buckets_are_the_tables():
    from microbench.cli_tune import BUCKETS
    assert BUCKETS == gc.ROW_BUCKETS


def test_table_from_binds_another_tables_entries(fake_table, tmp_path):
    """Inside table_from(path) the wrappers read that file's entries, not the device's (tune --ab
    --vary previous-table's second arm); after it, the device's again; a file rewritten between
    two blocks is read as it is now."""
    key = gc.shape_key(6144, 4096, True, 0, 2)
    device = dict(BLOCK_N=4, BLOCK_K=512, STAGES=3, num_warps=4, AHEAD=0, DOT=0, DEFER=1, SPLIT=1)
    other = dict(BLOCK_N=128, BLOCK_K=64, STAGES=6, num_warps=4, AHEAD=0, DOT=2, DEFER=0, SPLIT=1)
    fake_table({key: {"1": device}})
    f = tmp_path / "before.json"
    f.write_text(json.dumps({"device": "Fake GPU", "configs": {key: {"1": other}}}))
    pick = lambda: gc.choose_config(6144, 4096, 1, 2, norm=True, epi=0, device_name="Fake GPU")
    assert pick() == device
    with gc.table_from(f):
        assert pick() == other
        # a shape the other table lacks takes the rule, not the device's entry
        assert gc.choose_config(4096, 4096, 1, 2, device_name="Fake GPU") == gc.rule_config(4096, 4096, 1, 2)
    assert pick() == device
    f.write_text(json.dumps({"configs": {key: {"1": dict(other, BLOCK_K=128)}}}))
    with gc.table_from(f):
        assert pick()["BLOCK_K"] == 128


def test_one_row_candidates_hold_the_128_row_wide_side_tiles():
    """The tiles that win every LM head from two rows up are timed at one row too (they were
    missing there, and the one-row LM heads kept slower CUDA-core tiles)."""
    for k in (768, 2048, 4096):
        got = {(c["BLOCK_N"], c["BLOCK_K"], c["STAGES"], c["num_warps"])
               for c in gc.candidates(k, 1, 2) if c["DOT"] == 2 and c["SPLIT"] == 1}
        assert {(128, 64, 6, 4), (128, 128, 4, 8)} <= got, (k, got)


def test_every_committed_entry_is_a_candidate_of_its_bucket():
    """A table entry the tuner could not have chosen would be a hand edit."""
    for path in sorted(gc.CONFIG_DIR.glob("gemv_*.json")):
        for key, buckets in json.loads(path.read_text())["configs"].items():
            k, elt = int(key.split("K=")[1].split(",")[0]), int(key.split("elt=")[1])
            for bucket, entry in buckets.items():
                cfg = {name: entry.get(name, gc.DEFAULTS.get(name, 0)) for name in gc.LAUNCH_KEYS}
                assert cfg in gc.candidates(k, int(bucket), elt), (path.name, key, bucket, cfg)
