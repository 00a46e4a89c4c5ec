"""The verdicts of `microbench reproduce` against the published claims, on synthetic saved
entries (no GPU): each passes on measurements that match its claim within the stated tolerance
and fails on realistic near misses (a flat speedup, a 1.05x off-stride slowdown, a pool far from
0.41 GiB once the logits are counted apart, a pool that eats the KV budget)."""
import pytest

from microbench.analysis import verdicts as vd
from microbench.analysis.model import DeviceProfile
from microbench.bench.phenomena import headroom_rows

MiB, GiB = 1 << 20, 1 << 30


def timed(us, spread=0.01, **kw):
    return dict(step_us=us, p20=us * (1 - spread / 2), p80=us * (1 + spread / 2), **kw)


# ---- speedup-fade ---------------------------------------------------------------------------
def fade(*speedups, ci=0.02, bs=(1, 4, 16, 64), profile=None, engine=None):
    """speedup-fade's entry; `engine`: the engine-eager arm's speedups (the bundle), if measured."""
    rows = []
    for i, (b, s) in enumerate(zip(bs, speedups)):
        g = 500.0
        rows.append(dict(bs=b, padded_bs=b, ran_as="full", eager_step_us=s * g, graph_step_us=g,
                         speedup=s, speedup_ci=[s * (1 - ci), s * (1 + ci)] if ci is not None else None,
                         stable=True))
        if engine:
            x = engine[i]
            rows[-1].update(engine_eager_step_us=x * g, engine_eager_speedup=x,
                            engine_eager_speedup_ci=[x * (1 - ci), x * (1 + ci)])
    return dict(rows=rows, info=dict(profile=profile) if profile else {})


@pytest.mark.parametrize("speedups, why", [
    ((1.0, 1.0, 1.0, 1.0), "reaches below 1.25x"),          # graphs change nothing
    ((0.95, 0.95, 0.95, 0.95), "slower than eager"),         # graphs slower everywhere
    ((1.3, 1.3, 1.3, 1.3), "does not fade"),                 # a gain that never fades
    ((2.5, 1.6, 1.9, 1.13), "rises with batch size"),        # a separated rise
    ((1.15, 1.1, 1.05, 1.02), "reaches below 1.25x"),        # a marginal gain
    ((1.5, 1.45, 1.42, 1.4), "the fade's depth (bs 1 over bs 64, 1.07)"),  # barely fades
    ((12.0, 6.0, 3.0, 1.2), "the fade's depth (bs 1 over bs 64, 10.00)"),  # far steeper
])
def test_speedup_fade_fails_on_shapes_that_miss_the_claim(speedups, why):
    got = vd.judge("speedup-fade", fade(*speedups))
    assert got["held"] is False and why in got["why"], got["why"]


def test_speedup_fade_holds_on_the_published_shape_and_states_its_terms():
    got = vd.judge("speedup-fade", fade(2.5, 1.6, 1.3, 1.13))
    assert got["held"] is True, got["why"]
    assert "2.5x at bs 1" in got["published"] and "1.25x" in got["pass_if"]
    assert got["notes"][0].startswith("Published: ") and got["notes"][1].startswith("Pass condition")


def test_speedup_fade_judges_on_intervals():
    # bs 4 reads higher than bs 1, inside overlapping intervals: no rise
    assert vd.judge("speedup-fade", fade(2.5, 2.55, 1.3, 1.13, ci=0.05))["held"] is True
    # the same with tight intervals that separate: a rise
    assert vd.judge("speedup-fade", fade(2.5, 2.6, 1.3, 1.13, ci=0.005))["held"] is False
    # a saved run without intervals falls back to the p20-p80 noise band (3% floors)
    got = vd.judge("speedup-fade", fade(2.5, 1.6, 1.3, 1.13, ci=None))
    assert got["held"] is True and got["derived"]["shape_check"]["basis"] == "p20-p80 noise band"


def test_speedup_fade_judges_the_bundle_where_the_engine_eager_arm_ran():
    # the graphs alone rise at bs 64 (a plan with more launches there), the bundle fades:
    # the published comparison (enforce_eager) is the bundle, so it holds, and says both
    got = vd.judge("speedup-fade", fade(2.1, 1.5, 1.1, 1.3, engine=(5.3, 3.6, 2.7, 1.7)))
    assert got["held"] is True, got["why"]
    assert got["derived"]["judged"] == "engine-eager"
    assert got["derived"]["shape_check_graphs_alone"]["held"] is False
    assert "the graphs alone (eager against graph): 2.10x at bs 1" in got["measured"]
    assert any("Toy physics: above" in n for n in got["notes"])
    assert "engine-eager against graph (the bundle): shape held" in got["pass_if"]
    # a bundle that does not fade fails, whatever the graphs alone do
    flat = vd.judge("speedup-fade", fade(2.5, 1.6, 1.3, 1.13, engine=(1.3, 1.3, 1.3, 1.3)))
    assert flat["held"] is False and "does not fade" in flat["why"]
    rises = vd.judge("speedup-fade", fade(2.5, 1.6, 1.3, 1.13, engine=(2.5, 1.6, 1.9, 1.13)))
    assert rises["held"] is False and "rises with batch size" in rises["why"]
    # no engine-eager arm (older runs): the graphs alone are judged
    assert vd.judge("speedup-fade", fade(2.5, 1.6, 1.3, 1.13))["derived"]["judged"] == "eager"


def test_speedup_fade_states_the_model_at_the_published_setting():
    prof = DeviceProfile(name="x", source="test", copy_bw=3e12, matmul_flops=7e14,
                         launch_host_us=dict(torch=20.0, cublas=20.0, triton=20.0)).to_dict()
    got = vd.judge("speedup-fade", fade(2.5, 1.6, 1.3, 1.13, profile=prof))
    assert set(got["derived"]["predicted_published"]) == {1, 8, 64}
    assert "L4 datasheet" in got["predicted"] and any("not a pass condition" in n for n in got["notes"])


# ---- ladder-collapse ------------------------------------------------------------------------
def ladder(explicit4=620.0, piecewise4=None, collapsed4=7000.0, one=600.0):
    rows = []
    for arm, b, us, ran in (("collapsed", 1, one, "full"), ("collapsed", 4, collapsed4, "eager"),
                            ("piecewise", 1, one, "full"),
                            ("piecewise", 4, piecewise4 or explicit4 * 1.185, "piecewise"),
                            ("explicit", 1, one, "full"), ("explicit", 4, explicit4, "full")):
        rows.append(dict(timed(us), arm=arm, bs=b, ran_as=ran, tok_s=b / us * 1e6,
                         tok_s_per_seq=1e6 / us))
    return dict(rows=rows, info={})


def test_ladder_collapse_against_the_published_gain():
    same = ladder()
    same["info"] = {"skinny": {"1": True, "4": True}}     # bs 1 and bs 4 on one kernel plan
    got = vd.judge("ladder-collapse", same)
    assert got["held"] is True, got["why"]
    assert "+18.5%" in got["published"] and not any("cuBLAS" in n for n in got["notes"])
    # a run whose bs 1 and bs 4 ran different kernel plans reports the per-sequence ratio
    # instead of judging it, and says why
    mixed = ladder()
    mixed["info"] = {"skinny": {"1": True, "4": False}}
    assert any("cuBLAS" in n for n in vd.judge("ladder-collapse", mixed)["notes"])
    for pw in (632.0, 1500.0):            # +2% and +142% over the piecewise fallback
        got = vd.judge("ladder-collapse", ladder(piecewise4=pw))
        assert got["held"] is False and "piecewise fallback" in got["why"]


def test_ladder_collapse_per_sequence_is_judged_only_on_one_plan(monkeypatch):
    slow4 = ladder(explicit4=1000.0, piecewise4=1185.0)    # 60% of bs 1 per sequence
    monkeypatch.setattr(vd, "FAST_ROWS", 8)                # bs 1 and 4 on the same kernels
    got = vd.judge("ladder-collapse", slow4)
    assert got["held"] is False and "under 80%" in got["why"]
    monkeypatch.setattr(vd, "FAST_ROWS", 1)                # bs 4 on cuBLAS: reported, said why
    got = vd.judge("ladder-collapse", slow4)
    assert got["held"] is True and "per-sequence" not in got["pass_if"]
    assert any("reported, not judged" in n and "60%" in n for n in got["notes"])


# ---- off-stride -----------------------------------------------------------------------------
def off_stride(slowdown, context=128):
    a = 4000.0
    rows = [dict(timed(a * 0.99), arm="before fix", bs=688, ran_as="full", ladder_max=688),
            dict(timed(a * slowdown), arm="before fix", bs=700, ran_as="eager", ladder_max=688),
            dict(timed(a), arm="after fix", bs=700, ran_as="full", ladder_max=700)]
    return dict(rows=rows, info=dict(bs=700, context=context, context_wanted=128))


@pytest.mark.parametrize("slowdown, held", [(3.0, True), (2.0, True), (1.05, False), (1.2, False),
                                            (10.0, False)])
def test_off_stride_holds_only_near_the_published_3x(slowdown, held):
    got = vd.judge("off-stride", off_stride(slowdown))
    assert got["held"] is held, got["why"]
    assert "3.1x" in got["published"] and "factor 2" in got["pass_if"]
    if not held:
        assert "not within a factor 2" in got["why"]


# ---- capture-cost ---------------------------------------------------------------------------
def capture(per_size_s=0.15, saved_us=600.0, n=46, graph_faster=True):
    sizes = [dict(size=i + 1, warmup_s=per_size_s / 2, capture_s=per_size_s / 2) for i in range(n)]
    total = per_size_s * n
    rows = []
    for b in (1, 4, 16, 64):
        s = saved_us if graph_faster or b < 64 else -10.0
        be = lambda cost: cost * 1e6 / s if s > 0 else None
        rows.append(dict(bs=b, padded_bs=b, size_capture_s=per_size_s, eager_step_us=600 + s,
                         graph_step_us=600.0, saved_us=s, break_even_steps=be(per_size_s),
                         ladder_capture_s=total, ladder_break_even_steps=be(total)))
    return dict(rows=rows, info=dict(sizes=sizes, capture_s=total, ladder=list(range(1, n + 1)),
                                     skipped=[]))


def test_capture_cost_compares_seconds_per_size_and_break_even():
    got = vd.judge("capture-cost", capture())
    assert got["held"] is True, got["why"]
    assert "7 s for 46 graphs (152 ms each)" in got["published"] and "11367 steps" in got["published"]
    got = vd.judge("capture-cost", capture(per_size_s=2.0))              # 13x the published
    assert got["held"] is False and "ms per size is over 10x" in got["why"]
    got = vd.judge("capture-cost", capture(saved_us=5.0))                # pays back after 1.4M steps
    assert got["held"] is False and "pays back at the smallest batch after over 10x" in got["why"]
    got = vd.judge("capture-cost", capture(graph_faster=False))
    assert got["held"] is False and "never pays back" in got["why"]


# ---- pool-growth ----------------------------------------------------------------------------
def pools(act_bytes, out_bytes_per_row, ladder=(1, 2, 4, 8, 16)):
    rows = []
    for n in range(1, len(ladder) + 1):
        sizes = ladder[:n]
        out = out_bytes_per_row * sum(sizes)
        rows += [dict(arm="shared, largest-first", n_sizes=n, pool_bytes=act_bytes + out),
                 dict(arm="shared, smallest-first", n_sizes=n, pool_bytes=act_bytes + out + 1),
                 dict(arm="separate", n_sizes=n, pool_bytes=n * act_bytes + out)]
    return dict(rows=rows, info=dict(ladder=list(ladder), output_bytes=out_bytes_per_row * sum(ladder)))


def test_pool_growth_counts_the_logits_apart():
    assert vd.judge("pool-growth", pools(0.4 * GiB, 1 * MiB))["held"] is True
    # 0.9 GiB in all: too far from 0.41 GiB as it stands, near it once 0.5 GiB of logits go
    big_logits = pools(0.4 * GiB, 0.5 * GiB / 31)
    got = vd.judge("pool-growth", big_logits)
    assert got["held"] is True, got["why"]
    assert got["derived"]["pool_less_logits"] == pytest.approx(0.4 * GiB, rel=0.01)
    no_logits = dict(big_logits, info=dict(big_logits["info"], output_bytes=0))
    got = vd.judge("pool-growth", no_logits)
    assert got["held"] is False and "not within a factor 2 of the published 0.41 GiB" in got["why"]
    got = vd.judge("pool-growth", pools(50 * MiB, 1 * MiB))            # a tenth of the published
    assert got["held"] is False and "pool less the logits" in got["why"]


# ---- padding-waste --------------------------------------------------------------------------
def padding(pow2_ci, stride8_ci=(0.998, 1.012), spread=0.04):
    """padding-waste's entry at bs 37: exact 760 us, stride-8 40 and pow2 64 rows, eager 1210,
    each with a wide p20-p80 spread, and the rotation's paired intervals against exact."""
    from microbench.bench.phenomena import padding_costs
    rows = []
    for arm, pad, us, ci in (("exact", 37, 760.0, None), ("stride-8", 40, 766.0, stride8_ci),
                             ("pow2", 64, 795.0, pow2_ci), ("eager", None, 1210.0, None)):
        rows.append(dict(arm=arm, bs=37, padded_bs=pad, **timed(us, spread),
                         vs_exact=us / 760.0, vs_exact_ci=list(ci) if ci else None))
    return dict(rows=padding_costs(rows), info={})


def test_padding_waste_judges_the_paired_interval():
    # pow2 +4.6%: within the arms' 4% noise bands, but the paired interval separates from 1
    assert vd.judge("padding-waste", padding((1.03, 1.06)))["held"] is True
    # the same medians with a paired interval that reaches 1: nothing measurable
    got = vd.judge("padding-waste", padding((0.99, 1.10)))
    assert got["held"] is False and "costs nothing measurable" in got["why"]
    # stride-8 (3 padded rows) wholly faster than the exact capture: fails
    got = vd.judge("padding-waste", padding((1.03, 1.06), stride8_ci=(0.90, 0.95)))
    assert got["held"] is False and "more padded rows ran faster" in got["why"]
    assert "(paired, 95%)" in got["measured"] and "pow2 / exact wholly above 1" in got["pass_if"]
    # runs timed arm by arm (no intervals) fall back to the noise bands: +4.6% within 8%
    old = padding(None, stride8_ci=None)
    got = vd.judge("padding-waste", old)
    assert got["held"] is False and "(noise bands)" in got["measured"]


# ---- memory-headroom ------------------------------------------------------------------------
def headroom(budget, pool=0.4 * GiB, per_token=36864):
    series = [dict(n_sizes=n, largest_size=n, pool_bytes=pool * n / 4) for n in (1, 2, 4)]
    return dict(rows=headroom_rows(series, int(budget), per_token),
                info=dict(budget_bytes=int(budget), budget_source="test", kv_bytes_per_token=per_token,
                          kv_formula="2 · 12 · 12 · 64 · 2 B"))


def test_memory_headroom_can_fail():
    got = vd.judge("memory-headroom", headroom(12e9))                  # the published setting
    assert got["held"] is True, got["why"]
    assert "3.7%" in got["published"] and "10%" in got["pass_if"]
    got = vd.judge("memory-headroom", headroom(2 * GiB))               # the pool takes 20%
    assert got["held"] is False and "of the KV budget, over 10%" in got["why"]


# ---- every verdict states its terms ---------------------------------------------------------
def test_every_verdict_names_its_published_figure_and_pass_condition():
    assert set(vd.JUDGES) == {"speedup-fade", "ladder-collapse", "off-stride", "padding-waste",
                              "pool-growth", "capture-cost", "piecewise-vs-full", "memory-headroom"}
    for name, entry in (("speedup-fade", fade(2.5, 1.6, 1.3, 1.13)), ("ladder-collapse", ladder()),
                        ("off-stride", off_stride(3.0)), ("capture-cost", capture()),
                        ("pool-growth", pools(0.4 * GiB, MiB)), ("memory-headroom", headroom(12e9))):
        got = vd.judge(name, entry)
        assert got["published"] and got["pass_if"], name
        assert any(n.startswith("Pass condition: ") for n in got["notes"]), name


def test_ladder_collapse_judges_the_plans_the_run_recorded(monkeypatch):
    """A run records which plan ran bs 1 and bs 4 (info.skinny, keys as JSON keeps them); the
    verdict reads that, whatever today's FAST_ROWS says."""
    slow4 = ladder(explicit4=1000.0, piecewise4=1185.0)
    monkeypatch.setattr(vd, "FAST_ROWS", 1)
    slow4["info"] = {"skinny": {"1": True, "4": True}}      # one plan at both sizes
    got = vd.judge("ladder-collapse", slow4)
    assert got["held"] is False and "under 80%" in got["why"]
    monkeypatch.setattr(vd, "FAST_ROWS", 8)
    slow4["info"] = {"skinny": {1: True, 4: False}}         # two plans: reported, not judged
    got = vd.judge("ladder-collapse", slow4)
    assert got["held"] is True and "per-sequence" not in got["pass_if"]
