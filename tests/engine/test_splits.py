"""The fused attention's split rule (engine/splits.py): the table, the batch sizes a choice
covers, and what a decoder (plain and bound) passes to the kernel."""
import json

import pytest
import torch

from microbench.engine import splits
from microbench.engine.pdl import merge_per_batch, shape_key
from microbench.engine.shapes import PRESETS, max_seq_for

L1 = PRESETS["llama-1b"]
TINY = PRESETS["tiny"]


@pytest.fixture
def table_dir(tmp_path, monkeypatch):
    """A splits table folder, and a stand-in CUDA device: an H200's 132 SMs."""
    import sys
    rsa = sys.modules["microbench.kernels.rope_store_attention"]   # the module, not the function
    da = sys.modules["microbench.kernels.decode_attention"]
    monkeypatch.setattr(splits, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(rsa, "sm_count", lambda index: 132)
    monkeypatch.setattr(da, "sm_count", lambda index: 132)
    splits.load_table.cache_clear()
    yield tmp_path
    splits.load_table.cache_clear()


CUDA = torch.device("cuda")


def record(shape, modes: dict, context=512, device="Fake GPU"):
    """Entries as `tune --ab P --vary splits` writes them: each with the context it ran at and
    what the modes launched over that context's cache (max_seq_for: 576 positions for 512)."""
    path = splits.table_path(device)
    max_seq = max_seq_for(context)
    entries = {b: dict(mode=m, bs=b, context=context,
                       splits=splits.split_launches(shape, b, max_seq, CUDA, torch.bfloat16))
               for b, m in modes.items()}
    path.write_text(json.dumps(merge_per_batch(path, dict(device=device), shape_key(shape, 2), entries)))
    splits.load_table.cache_clear()


def on_cuda(shape=L1, dtype=torch.bfloat16, max_seq=576):
    return splits.resolve(None, shape, dtype, CUDA, max_seq)


def test_what_each_mode_launches(table_dir):
    """llama-1b at context 512 (five 128-key tiles): the default launches five one-tile splits
    at bs 16 where three were wanted; at context 4096 both rules give three. Half-size tiles
    (64 keys) make nine of them: the default rule then launches nine one-tile splits at bs 8,
    three at bs 16 and four at context 4096. Separate kernels take decode_attention's own rule,
    whose splits hold at least 256 keys: three two-tile splits at each of these."""
    keys = {"fill": 128, "capped": 128, "half-tile": 64, "separate": 128}
    assert splits.split_launches(L1, 16, 576, CUDA, torch.bfloat16) == {
        "fill": 5, "capped": 3, "half-tile": 3, "separate": 3, "keys": keys}
    assert splits.split_launches(L1, 24, 576, CUDA, torch.bfloat16) == {
        "fill": 3, "capped": 2, "half-tile": 3, "separate": 3, "keys": keys}
    assert splits.split_launches(L1, 8, 576, CUDA, torch.bfloat16) == {
        "fill": 5, "capped": 5, "half-tile": 9, "separate": 3, "keys": keys}
    assert splits.split_launches(L1, 16, 4104, CUDA, torch.bfloat16) == {
        "fill": 3, "capped": 3, "half-tile": 4, "separate": 3, "keys": keys}
    # llama-8b's 128-wide heads: 64-key tiles by default, 32 halved
    l8 = splits.split_launches(PRESETS["llama-8b"], 1, 576, CUDA, torch.bfloat16)
    assert l8["keys"] == {"fill": 64, "capped": 64, "half-tile": 32, "separate": 64}
    # at bs 64 its 512 (sequence, kv head) pairs fill the GPU: the fused kernel streams two
    # splits a pair, decode_attention one
    l8 = splits.split_launches(PRESETS["llama-8b"], 64, 576, CUDA, torch.bfloat16)
    assert l8["fill"] == 2 and l8["separate"] == 1


def test_a_mode_holds_at_exactly_the_measured_sizes_that_chose_it(table_dir):
    assert [on_cuda()(b) for b in (8, 16, 32)] == ["fill"] * 3      # no table: the default
    record(L1, {1: "half-tile", 8: "fill", 16: "capped", 24: "capped", 32: "fill"})
    choice = on_cuda()
    assert choice(16) == choice(24) == "capped" and choice(1) == "half-tile"
    # never between or around measured sizes: the split rule's effect is not monotone in batch
    assert all(choice(b) == "fill" for b in (2, 8, 15, 17, 20, 23, 25, 32, 40))
    assert on_cuda(dtype=torch.float32)(16) == "fill"              # float32: not measured
    assert on_cuda(PRESETS["llama-8b"])(16) == "fill"              # another shape
    assert splits.resolve(None, L1, torch.bfloat16, torch.device("cpu"), 576)(16) == "fill"
    # a longer cache gives other launches than those compared: the default there (at 584
    # positions fill and capped still launch five splits at bs 1, half-size tiles ten, not nine)
    assert on_cuda(max_seq=4104)(16) == "fill" and on_cuda(max_seq=4104)(1) == "fill"
    assert on_cuda(max_seq=584)(1) == "fill"
    # an entry without the launches compared (or with others) never applies
    path = splits.table_path("Fake GPU")
    table = json.loads(path.read_text())
    mine = table["choices"][shape_key(L1, 2)]
    del mine["16"]["splits"]
    mine["24"]["splits"] = dict(mine["24"]["splits"], capped=3)
    mine["1"]["splits"]["keys"]["half-tile"] = 32
    path.write_text(json.dumps(table))
    splits.load_table.cache_clear()
    assert on_cuda()(16) == on_cuda()(24) == on_cuda()(1) == "fill"


def test_an_entry_measured_before_half_tiles_holds_on_its_two_counts(table_dir):
    """Entries written when the table compared fill and capped only record their two split
    counts: capped holds where those still agree; a half-tile entry must record its tiles."""
    path = splits.table_path("Fake GPU")
    old = {"16": dict(mode="capped", bs=16, context=512, splits={"fill": 5, "capped": 3}),
           "24": dict(mode="capped", bs=24, context=512, splits={"fill": 5, "capped": 3}),
           "1": dict(mode="half-tile", bs=1, context=512,
                     splits={"fill": 5, "capped": 5, "half-tile": 9})}
    path.write_text(json.dumps({"choices": {shape_key(L1, 2): old}}))
    assert on_cuda()(16) == "capped"
    assert on_cuda()(24) == "fill"        # bs 24 launches 3 and 2 splits, not 5 and 3
    assert on_cuda()(1) == "fill"         # no keys per tile recorded


def test_an_entry_holds_where_its_mode_and_fill_launch_as_compared(table_dir):
    """The entry measured its mode against fill: another mode launching otherwise at this cache
    (another count of half-size tiles, say) leaves it standing; its own mode or fill doing so
    does not."""
    path = splits.table_path("Fake GPU")
    at = splits.split_launches(L1, 24, 576, CUDA, torch.bfloat16)
    assert (at["fill"], at["capped"]) == (3, 2)

    def entry(**counts):
        path.write_text(json.dumps({"choices": {shape_key(L1, 2): {"24": dict(
            mode="capped", bs=24, context=512, splits=dict(at, **counts))}}}))
        splits.load_table.cache_clear()
        return on_cuda()(24)
    assert entry() == "capped"
    assert entry(**{"half-tile": at["half-tile"] + 1, "separate": at["separate"] + 1}) == "capped"
    assert entry(capped=at["capped"] + 1) == "fill"
    assert entry(fill=at["fill"] + 1) == "fill"
    assert entry(keys=dict(at["keys"], capped=at["keys"]["capped"] // 2)) == "fill"
    assert entry(keys=dict(at["keys"], **{"half-tile": 16})) == "capped"


def test_an_entry_holds_only_over_the_cache_its_context_gives(table_dir):
    """Counts alone do not pin a launch (how many tiles a split takes follows the cache), so an
    entry applies only to a decoder with the cache its context gives: llama-1b's bs-24 fill and
    capped counts are 3 and 2 over 320 positions as over 576, yet 576 is what was measured."""
    at = lambda max_seq: splits.split_launches(L1, 24, max_seq, CUDA, torch.bfloat16)
    assert (at(320)["fill"], at(320)["capped"]) == (at(576)["fill"], at(576)["capped"])
    record(L1, {24: "capped"})
    assert on_cuda(max_seq=576)(24) == "capped"
    assert on_cuda(max_seq=320)(24) == on_cuda(max_seq=640)(24) == "fill"
    record(L1, {24: "capped"}, context=300)            # measured at 300: a 320-position cache
    assert on_cuda(max_seq=320)(24) == "capped" and on_cuda(max_seq=576)(24) == "fill"
    # an entry that does not say its context, or whose keys leave out fill's, never applies
    path = splits.table_path("Fake GPU")
    table = json.loads(path.read_text())
    entry = table["choices"][shape_key(L1, 2)]["24"]
    for bad in (dict(entry, context=None), dict(entry, context="300"),
                dict(entry, splits=dict(entry["splits"], keys={"capped": 128}))):
        table["choices"][shape_key(L1, 2)]["24"] = bad
        path.write_text(json.dumps(table))
        splits.load_table.cache_clear()
        assert on_cuda(max_seq=320)(24) == "fill"


def test_the_ab_times_decoders_with_the_sweeps_cache():
    # the split rule counts the cache's tiles: an entry records the launches at the A/B's
    # cache, which must be the sweep's for the entry to hold in the sweep's decoder
    from microbench.bench.sweep_config import max_seq_for
    from microbench.bench.tune import ab_max_seq
    assert [ab_max_seq(c) for c in (1, 512, 4096)] == [max_seq_for(c) for c in (1, 512, 4096)]


@pytest.mark.parametrize("recorded", [
    {"capped": 3},                                            # no fill count
    {"fill": 5, "half-tile": 3, "keys": {"fill": 128}},       # not its own mode's count
    {"fill": 5, "capped": 3, "keys": None},                   # keys not a mapping
    {"fill": 5, "capped": 3, "keys": [128]},
    [5, 3],                                                   # counts not a mapping
], ids=str)
def test_an_entry_that_does_not_say_what_it_compared_never_applies(recorded, table_dir):
    path = splits.table_path("Fake GPU")
    path.write_text(json.dumps({"choices": {shape_key(L1, 2): {
        "16": dict(mode="capped", bs=16, context=512, splits=recorded)}}}))
    assert on_cuda()(16) == "fill"


def test_an_explicit_mode_holds_everywhere_and_a_bad_one_is_refused():
    assert splits.resolve("capped", L1, torch.bfloat16, torch.device("cpu"), 576)(5) == "capped"
    assert splits.resolve("fill", L1, torch.bfloat16, CUDA, 576)(16) == "fill"
    assert splits.resolve("half-tile", L1, torch.bfloat16, CUDA, 576)(3) == "half-tile"
    assert splits.resolve("separate", L1, torch.bfloat16, CUDA, 576)(64) == "separate"
    with pytest.raises(ValueError, match="splits must be one of fill, capped, half-tile, separate"):
        splits.resolve("more", L1, torch.bfloat16, torch.device("cpu"), 576)


def test_a_broken_table_is_one_line_naming_the_file(table_dir):
    path = splits.table_path("Fake GPU")
    path.write_text(json.dumps({"choices": {shape_key(L1, 2): {"16": {"mode": "half"}}}}))
    with pytest.raises(ValueError, match=r"attention splits table .* bs 16 has no mode among "
                                         r"fill, capped, half-tile, separate"):
        on_cuda()


def test_only_a_mode_that_launches_otherwise_than_fill_is_recorded_as_itself():
    pair = {"fill": 5, "capped": 5, "half-tile": 9, "keys": {"fill": 128, "capped": 128,
                                                            "half-tile": 64}}
    assert splits.launches_alike(pair, "capped") and not splits.launches_alike(pair, "half-tile")
    # the same counts over other tiles launch otherwise (opt-125m at bs 32: one split either way)
    one = dict(pair, fill=1, capped=1, **{"half-tile": 1})
    assert not splits.launches_alike(one, "half-tile")
    # on a device whose tiles cannot halve (16 keys), half-tile launches as fill does
    same = dict(pair, **{"half-tile": 5, "keys": dict.fromkeys(("fill", "capped", "half-tile"), 16)})
    assert splits.launches_alike(same, "half-tile")
    # separate kernels never launch as the fused one does, whatever their split count and tiles
    sep = dict(pair, separate=5, keys=dict(pair["keys"], separate=128))
    assert not splits.launches_alike(sep, "separate")


@pytest.mark.interpreter
@pytest.mark.parametrize("mode", [None, "fill", "capped", "half-tile"])
def test_a_decoder_passes_its_choice_to_the_fused_attention_plain_and_bound(mode, monkeypatch):
    """Every fused attention call of a step asks the kernel for the decoder's choice at the
    step's batch size, in the plain step and in the launches a bound step records. None: a
    table that chose capped at 3 only."""
    from microbench import kernels
    from microbench.engine.decoder import ToyDecoder
    monkeypatch.setattr(splits, "resolve", lambda s, *a: (lambda b: s) if s else
                        (lambda b: "capped" if b == 3 else "fill"))
    # on the CPU block_n_for's tile is 16 keys, which cannot halve: half-tile asks for those 16
    # keys explicitly here, so what the test sees is the argument passed, not another tile
    monkeypatch.setattr(splits, "block_n", lambda m, *a: 16 if m == "half-tile" else None)
    dec = ToyDecoder(TINY, backend="triton", max_batch=4, max_seq=40, dtype=torch.float32,
                     device="cpu", splits=mode)
    dec.fill_cache(20)
    seen = []
    real = kernels.rope_store_attention

    def spy(*a, **kw):
        seen.append((kw["capped"], kw["block_n"]))
        return real(*a, **kw)
    monkeypatch.setattr(kernels, "rope_store_attention", spy)

    def want(b):
        m = mode or ("capped" if b == 3 else "fill")
        return m == "capped", 16 if m == "half-tile" else None
    for b in (3, 2):
        seen.clear()
        t = torch.arange(b) % TINY.vocab
        dec.step(t, torch.full((b,), 20), torch.arange(b))
        assert seen == [want(b)] * TINY.n_layers
    seen.clear()
    bound = dec.bind(3)
    assert seen == [want(3)] * TINY.n_layers and bound.launches


@pytest.mark.interpreter
def test_a_separate_size_runs_the_matmuls_plans_attention_plain_and_bound(monkeypatch):
    """At a batch size whose mode is separate a fused-attention decoder runs the MATMULS plan:
    its step (plain and bound) launches rope_store_kv where the fused kernel was, its plan says
    so, and its logits are that plan's bit for bit. Other sizes keep the fused kernel."""
    from microbench import kernels
    from microbench.engine.decoder import ToyDecoder
    from microbench.engine.plan import Fusion
    monkeypatch.setattr(splits, "resolve", lambda s, *a: lambda b: "separate" if b == 3 else "fill")
    dec = ToyDecoder(TINY, backend="triton", max_batch=4, max_seq=40, dtype=torch.float32,
                     device="cpu")
    dec.fill_cache(20)
    seen = []
    for name in ("rope_store_attention", "rope_store_kv"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name,
                            lambda *a, _n=name, _r=real, **kw: seen.append(_n) or _r(*a, **kw))
    L = TINY.n_layers
    inputs = lambda b: (torch.arange(b) % TINY.vocab, torch.full((b,), 20), torch.arange(b))
    assert dec.fusion_at(3) == Fusion.MATMULS and dec.fusion_at(2) == Fusion.ATTENTION
    got = dec.step(*inputs(3))
    assert seen == ["rope_store_kv"] * L
    names = [k.name for k in dec.plan(3, 20)]
    assert "rope_store_kv" in names and "seq_lens_cast" in names
    assert "rope_store_kv" not in [k.name for k in dec.plan(2, 20)]
    seen.clear()
    # the step writes the same new K and V again, so the MATMULS plan sees the same cache
    assert torch.equal(got, dec.with_fusion(Fusion.MATMULS).step(*inputs(3)))
    seen.clear()
    dec.step(*inputs(2))
    assert seen == ["rope_store_attention"] * L
    seen.clear()
    assert dec.bind(3).launches and seen == ["rope_store_kv"] * L


@pytest.mark.parametrize("kv_splits", [1, 4])
def test_a_separate_sizes_step_bytes_count_the_reduce_only_when_it_runs(kv_splits, monkeypatch):
    """The bytes a sweep row's MBU divides by (plan.step_bytes with the decoder's fusion and
    attention launches at that size) are those of the kernels the decoder plans there: at a
    separate size decode_attention's reduce is counted when its KV splits, and not otherwise;
    a fused size has no reduce either way."""
    import sys

    from microbench.engine.decoder import ToyDecoder
    from microbench.engine.plan import Fusion, step_bytes
    da = sys.modules["microbench.kernels.decode_attention"]
    monkeypatch.setattr(da, "num_splits_for", lambda *a, **kw: kv_splits)
    monkeypatch.setattr(splits, "resolve", lambda s, *a: lambda b: "separate" if b == 3 else "fill")
    dec = ToyDecoder(TINY, backend="triton", max_batch=4, max_seq=40, dtype=torch.float32,
                     device="cpu")
    for b in (2, 3):
        names = [k.name for k in dec.plan(b, 20)]
        got = step_bytes(TINY, b, 20, 4, fusion=dec.fusion_at(b),
                         attn_launches=dec.attention_launches(b))
        assert got == sum(k.bytes for k in dec.plan(b, 20))
        assert ("attention_reduce" in names) == (b == 3 and kv_splits > 1)
    # the count the sweep used to record (a reduce whatever the split) is more than that
    extra = step_bytes(TINY, 3, 20, 4, fusion=Fusion.MATMULS) - step_bytes(
        TINY, 3, 20, 4, fusion=Fusion.MATMULS, attn_launches=dec.attention_launches(3))
    assert (extra > 0) == (kv_splits == 1)


@pytest.mark.interpreter
def test_fused_and_separate_attention_agree_with_the_reference_at_the_gpus_tiles(monkeypatch):
    """Over long, ragged histories, with the tiles and split counts an H200 launches (132 SMs,
    16 KiB K/V tiles) forced on the interpreter: the fused kernel (fill) and separate kernels
    give the torch backend's logits within float32 rounding. The fused kernel splits the cache
    into five one-tile splits here and decode_attention into three, each with its last split
    past every history, so a wrong merge or an empty split would show."""
    import sys

    import triton

    from microbench.engine.decoder import ToyDecoder
    da = sys.modules["microbench.kernels.decode_attention"]
    rsa = sys.modules["microbench.kernels.rope_store_attention"]
    gpu_tile = lambda device, head_dim, dtype: min(max(
        da._CUDA_TILE_BYTES // (triton.next_power_of_2(head_dim) * dtype.itemsize), 32), 128)
    for m in (da, rsa):
        monkeypatch.setattr(m, "block_n_for", gpu_tile)
    monkeypatch.setattr(da, "CPU_SMS", 132)
    monkeypatch.setattr(rsa, "CPU_SMS", 132)
    ctx, bs = 500, 3
    cpu = torch.device("cpu")
    assert da.num_splits_for(bs, TINY.n_kv_heads, 576, cpu, TINY.head_dim, torch.float32) == 3
    assert rsa.fused_plan(bs, TINY.n_kv_heads, 576, cpu, TINY.head_dim, torch.float32)[0] == 5
    g = torch.Generator().manual_seed(3)
    t = torch.randint(TINY.vocab, (bs,), generator=g)
    p = torch.randint(ctx // 2, ctx, (bs,), generator=g)
    s = torch.randperm(bs, generator=g)
    outs = {}
    for name, kw in (("fill", dict(splits="fill")), ("separate", dict(splits="separate")),
                     ("torch", dict(backend="torch"))):
        dec = ToyDecoder(TINY, max_batch=16, max_seq=576, dtype=torch.float32, device="cpu", **kw)
        dec.fill_cache(ctx)
        outs[name] = dec.step(t, p, s)
    for name in ("fill", "separate"):
        torch.testing.assert_close(outs[name], outs["torch"], atol=2e-4, rtol=2e-4)


def test_the_sizes_each_split_mode_ran_are_named_from_the_decoders_choice():
    """run["decoder"]'s capped_split_rows, half_tile_rows and separate_attention_rows: the sizes
    whose attention took that mode; none when the decoder's plan does not fuse attention."""
    from types import SimpleNamespace

    from microbench.bench.sweep import split_rows
    from microbench.engine.plan import Fusion
    modes = {1: "half-tile", 4: "fill", 16: "capped", 32: "half-tile", 64: "separate"}
    dec = SimpleNamespace(fusion=Fusion.ATTENTION, split_mode=modes.get)
    assert split_rows(dec, [1, 4, 16, 32, 64], "half-tile") == [1, 32]
    assert split_rows(dec, [1, 4, 16, 32, 64], "capped") == [16]
    assert split_rows(dec, [1, 4, 16, 32, 64], "separate") == [64]
    dec.fusion = Fusion.MATMULS
    assert split_rows(dec, [1, 4, 16, 32, 64], "half-tile") == []
    assert split_rows(dec, [1, 4, 16, 32, 64], "separate") == []


@pytest.mark.parametrize("preset", ["opt-125m", "llama-1b", "llama-8b"])
def test_the_h200_table_measured_every_size_the_default_sweep_captures_and_each_entry_holds(
        preset, table_dir, monkeypatch):
    """The committed H200 table: a decoder takes a measured mode only at a measured size, and
    only where its launches are those compared, so every size the first command's sweep
    captures has an entry, and each mode other than fill holds there (on the stand-in H200's
    132 SMs, at the default sweep's cache): a change to the kernels' launch rules that left
    such an entry behind fails here
    rather than silently running fill (fill's own entries, the default's, are not checked)."""
    from microbench.bench.sweep_config import SweepConfig, max_seq_for
    from microbench.kernels.gemv_configs import CONFIG_DIR
    monkeypatch.setattr(splits, "CONFIG_DIR", CONFIG_DIR)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    splits.load_table.cache_clear()
    shape, cfg = PRESETS[preset], SweepConfig()
    raw = json.loads(splits.table_path("NVIDIA H200").read_text())["choices"][shape_key(shape, 2)]
    assert {int(b) for b in raw} >= set(cfg.ladder_sizes())
    assert {e["context"] for e in raw.values()} == {cfg.context}
    choice = on_cuda(shape, max_seq=max_seq_for(cfg.context))
    assert {b: choice(b) for b in cfg.ladder_sizes()} == {b: raw[str(b)]["mode"]
                                                          for b in cfg.ladder_sizes()}
