"""`microbench tune`'s CPU side: the jobs it times, the winner it keeps, the table it writes."""
import json

from microbench.bench import tune
from microbench.engine.shapes import PRESETS
from microbench.kernels import gemv_configs as gc


def test_matmuls_are_the_decoders_skinny_calls():
    s = PRESETS["llama-8b"]
    got = {m.name: (m.n, m.k, m.norm, m.epi) for m in tune.matmuls(s)}
    assert got == {"qkv_proj": (6144, 4096, True, 0), "o_proj": (4096, 4096, False, 1),
                   "gate_up_proj": (28672, 4096, True, 2), "down_proj": (4096, 14336, False, 1),
                   "lm_head": (128256, 4096, True, 0)}


def test_jobs_cover_each_distinct_shape_once_per_bucket():
    js = tune.jobs(["llama-1b", "llama-1b"], (1, 16))
    keys = {(mm.key(2), rows) for mm, rows, _ in js}
    assert len(keys) == 5 * 2
    for mm, rows, cfg in js:
        assert cfg in gc.candidates(mm.k, rows, 2)


def test_best_is_the_fastest_and_the_entry_says_what_it_measured():
    a, b = dict(BLOCK_N=4, DOT=0), dict(BLOCK_N=32, DOT=1)
    cfg, us = tune.best({json.dumps(a): 12.0, json.dumps(b): 10.0})
    assert cfg == b and us == 10.0
    mm = tune.matmuls(PRESETS["llama-1b"])[0]
    e = tune.entry(cfg, us, 14.0, 4_000_000, 4e12, mm)
    assert e["BLOCK_N"] == 32 and e["cublas_us"] == 14.0 and e["matmul"] == "llama-1b qkv_proj"
    assert abs(e["frac_of_copy"] - 0.1) < 1e-9          # 4 MB in 10 us = 0.4 TB/s of 4 TB/s


def test_merge_keeps_other_entries_and_records_each_run(tmp_path):
    path = tmp_path / "gemv_X.json"
    tune_a = {"N=1,K=2,norm=0,epi=0,elt=2": {"1": {"BLOCK_N": 1}, "2": {"BLOCK_N": 2}}}
    path.write_text(json.dumps(tune.merge_table(path, dict(device="X", command="a"), tune_a)))
    tune_b = {"N=1,K=2,norm=0,epi=0,elt=2": {"2": {"BLOCK_N": 8}},
              "N=3,K=4,norm=1,epi=0,elt=2": {"1": {"BLOCK_N": 16}}}
    got = tune.merge_table(path, dict(device="X", command="b"), tune_b)
    assert got["configs"]["N=1,K=2,norm=0,epi=0,elt=2"] == {"1": {"BLOCK_N": 1}, "2": {"BLOCK_N": 8}}
    assert [r["command"] for r in got["runs"]] == ["a", "b"] and len(got["configs"]) == 2


def test_merge_keeps_an_entry_chosen_by_whole_steps(tmp_path):
    """A tune replaces what it timed, except an entry a whole-step A/B chose (`chosen_by`)."""
    path = tmp_path / "gemv_X.json"
    key = "N=6144,K=4096,norm=1,epi=0,elt=2"
    chosen = {"BLOCK_N": 64, "DOT": 2, "chosen_by": "whole graph steps"}
    path.write_text(json.dumps({"device": "X", "runs": [],
                                "configs": {key: {"1": chosen, "2": {"BLOCK_N": 64}}}}))
    fresh = {key: {"1": {"BLOCK_N": 4}, "2": {"BLOCK_N": 32}}}
    assert tune.chosen_by_steps(json.loads(path.read_text())["configs"], fresh) == [(key, "1")]
    got = tune.merge_table(path, dict(device="X", command="tune"), fresh)
    assert got["configs"][key] == {"1": chosen, "2": {"BLOCK_N": 32}}
    # without its mark the entry is the tune's again
    path.write_text(json.dumps({"device": "X", "configs": {key: {"1": {"BLOCK_N": 64}}}}))
    assert tune.merge_table(path, dict(device="X", command="tune"), fresh)["configs"][key]["1"] == {"BLOCK_N": 4}


def test_splits_default_rows_are_the_default_sweeps_capture_sizes():
    # a decoder runs a measured attention mode only at a measured size, so --vary splits
    # measures, by default, every size the first command's sweep captures
    from microbench.bench.sweep_config import SweepConfig
    from microbench.cli_tune import SPLIT_ROWS
    assert list(SPLIT_ROWS) == SweepConfig().ladder_sizes()


def test_the_clis_vary_choices_are_the_variants():
    from microbench.cli_tune import VARY
    assert VARY == tuple(tune.VARIANTS)
    # every arm differs from the first, the default decoder (pdl: its arms are the modes, each
    # asked for explicitly; the fused arms of plan and attention keep the fused kernel at every
    # size), so ratios read "reference / variant"
    for vary, arms in tune.VARIANTS.items():
        assert len(arms) >= 2 and all(kw for _, kw in arms[1:])
        assert arms[0][1] == {"pdl": {"pdl": True}, "blas": {"blas": "cublas"},
                              "splits": {"splits": "fill"}, "plan": {"splits": "fill"},
                              "attention": {"splits": "fill"}}.get(vary, {})
    assert [kw["pdl"] for _, kw in tune.VARIANTS["pdl"]] == [True, "late", False]
    assert [kw["blas"] for _, kw in tune.VARIANTS["blas"]] == ["cublas", "cublaslt"]
    assert [kw["splits"] for _, kw in tune.VARIANTS["splits"]] == ["fill", "capped", "half-tile",
                                                                   "separate"]


def test_fastest_keeps_the_reference_unless_another_arm_is_faster_beyond_noise():
    r = {"arms": ["pdl-early", "pdl-late", "pdl-off"], "pdl-early": {"median": 5137.5},
         "pdl-late": {"median": 4883.1}, "pdl-off": {"median": 4616.1},
         "ratios": {"pdl-late": {"median": 1.052, "ci": [1.051, 1.053]},
                    "pdl-off": {"median": 1.113, "ci": [1.113, 1.113]}}}
    assert tune.fastest(r) == "pdl-off"
    # off's median is lower but its interval reaches 1: only late is faster beyond noise
    r["ratios"]["pdl-off"]["ci"] = [0.99, 1.2]
    assert tune.fastest(r) == "pdl-late"
    # every other arm slower, or within noise: the reference stays (arms that launch alike, as
    # on a GPU without PDL, keep the default)
    r["ratios"] = {"pdl-late": {"median": 0.95, "ci": [0.949, 0.951]},
                   "pdl-off": {"median": 1.001, "ci": [0.998, 1.004]}}
    assert tune.fastest(r) == "pdl-early"
    # faster beyond noise but within the A/B's floor (two arms launching the same kernels read
    # up to about 1% apart): the reference stays
    r["ratios"]["pdl-off"] = {"median": 1.005, "ci": [1.005, 1.006]}
    assert 1.006 < 1 + tune.AB_FLOOR and tune.fastest(r) == "pdl-early"
    r["ratios"]["pdl-off"] = {"median": 1.021, "ci": [1.021, 1.022]}
    assert tune.fastest(r) == "pdl-off"


def test_the_pdl_ab_records_the_fastest_mode_beyond_noise_at_each_batch_size(tmp_path, monkeypatch):
    import torch

    from microbench import cli_tune
    from microbench.engine import pdl
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")

    def result(bs, late, off):
        """A pdl A/B at bs: early at 500 us, each other arm's (median us, ratio interval)."""
        return {"bs": bs, "elt": 2, "context": 512, "rounds": 40,
                "arms": ["pdl-early", "pdl-late", "pdl-off"], "pdl-early": {"median": 500.0},
                "pdl-late": {"median": late[0]}, "pdl-off": {"median": off[0]},
                "ratios": {"pdl-late": {"median": 500.0 / late[0], "ci": late[1]},
                           "pdl-off": {"median": 500.0 / off[0], "ci": off[1]}}}
    path = tmp_path / "pdl_Fake_GPU.json"
    # bs 1: both slower; bs 4: late faster but inside the floor; bs 16: late faster beyond it
    cli_tune._record_per_batch("opt-125m", [result(1, (527.0, [0.946, 0.951]), (616.0, [0.81, 0.82])),
                                            result(4, (497.0, [1.004, 1.008]), (560.0, [0.89, 0.90])),
                                            result(16, (473.0, [1.054, 1.058]), (523.0, [0.95, 0.96]))],
                               path, "pdl")
    got = json.loads(path.read_text())["choices"][pdl.shape_key(PRESETS["opt-125m"], 2)]
    assert {b: e["mode"] for b, e in got.items()} == {"1": "early", "4": "early", "16": "late"}
    assert got["16"]["median_us"] == {"early": 500.0, "late": 473.0, "off": 523.0}
    assert got["16"]["ratios"]["pdl-early/pdl-late"] == 500.0 / 473.0
    assert got["16"]["preset"] == "opt-125m" and got["16"]["run"] == 0


def test_the_blas_ab_records_cublaslt_only_where_it_is_faster_beyond_noise(tmp_path, monkeypatch):
    import torch

    from microbench import cli_tune
    from microbench.engine import blas, pdl
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")

    def result(bs, lt_us, ci):
        return {"bs": bs, "elt": 2, "context": 512, "rounds": 40, "arms": ["cublas", "cublaslt"],
                "cublas": {"median": 6000.0}, "cublaslt": {"median": lt_us},
                "ratios": {"cublaslt": {"median": 6000.0 / lt_us, "ci": ci}}}
    path = tmp_path / "blas_Fake_GPU.json"
    # bs 32: faster, but its interval reaches 1; bs 64: faster beyond noise; bs 128: slower
    cli_tune._record_per_batch("llama-8b", [result(32, 5990.0, [0.998, 1.004]),
                                            result(64, 5800.0, [1.030, 1.038]),
                                            result(128, 6100.0, [0.981, 0.986])], path, "blas")
    got = json.loads(path.read_text())["choices"][pdl.shape_key(PRESETS["llama-8b"], 2)]
    assert {b: e["mode"] for b, e in got.items()} == {"32": "cublas", "64": "cublaslt",
                                                       "128": "cublas"}
    assert got["64"]["median_us"] == {"cublas": 6000.0, "cublaslt": 5800.0}
    assert got["64"]["preset"] == "llama-8b" and got["64"]["run"] == 0
    monkeypatch.setattr(blas, "CONFIG_DIR", tmp_path)
    blas.load_table.cache_clear()
    try:
        assert blas.lt_spans(PRESETS["llama-8b"], 2, "Fake GPU") == ((64, 64),)
    finally:
        blas.load_table.cache_clear()


def test_the_splits_ab_records_a_mode_only_where_it_is_faster_beyond_noise(tmp_path, monkeypatch):
    """As measured on the H200 for llama-1b: capped faster at bs 16, slower at 32; at bs 1 and 8
    both split rules launch five splits, so capped's ratio beyond the A/B's floor there is noise
    and never kept: fill at 8, and at 1 half-size tiles, faster beyond noise though slower than
    that copy of fill. At bs 64 separate kernels, faster beyond noise (as measured there). A
    decoder then caps at 16 alone, halves its tiles at 1 alone and runs separate kernels at 64
    alone (not between measured sizes, as the BLAS table's spans do)."""
    import torch

    from microbench import cli_tune
    from microbench.engine import pdl, splits
    import sys
    rsa = sys.modules["microbench.kernels.rope_store_attention"]   # the module, not the function
    da = sys.modules["microbench.kernels.decode_attention"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(rsa, "sm_count", lambda index: 132)
    monkeypatch.setattr(da, "sm_count", lambda index: 132)

    def result(bs, fill_us, capped_us, half_us, ci, half_ci=(0.97, 0.98)):
        return {"bs": bs, "elt": 2, "context": 512, "rounds": 40,
                "arms": ["fill", "capped", "half-tile"], "fill": {"median": fill_us},
                "capped": {"median": capped_us}, "half-tile": {"median": half_us},
                "ratios": {"capped": {"median": fill_us / capped_us, "ci": ci},
                           "half-tile": {"median": fill_us / half_us, "ci": half_ci}}}
    bs64 = result(64, 1515.8, 1517.8, 1409.6, [0.998, 1.000], [1.075, 1.076])
    bs64["arms"].append("separate")
    bs64["separate"] = {"median": 1398.7}
    bs64["ratios"]["separate"] = {"median": 1515.8 / 1398.7, "ci": [1.083, 1.084]}
    path = tmp_path / "splits_Fake_GPU.json"
    cli_tune._record_per_batch("llama-1b", [result(1, 870.0, 840.0, 846.1, [1.030, 1.040],
                                                   [1.027, 1.031]),
                                            result(8, 975.0, 960.0, 990.0, [1.012, 1.014]),
                                            result(16, 1113.1, 1081.5, 1090.0, [1.029, 1.030]),
                                            result(32, 1273.8, 1278.1, 1290.0, [0.996, 0.997]),
                                            bs64],
                               path, "splits")
    got = json.loads(path.read_text())["choices"][pdl.shape_key(PRESETS["llama-1b"], 2)]
    assert {b: e["mode"] for b, e in got.items()} == {"1": "half-tile", "8": "fill",
                                                      "16": "capped", "32": "fill",
                                                      "64": "separate"}
    keys = {"fill": 128, "capped": 128, "half-tile": 64, "separate": 128}
    assert got["16"]["splits"] == {"fill": 5, "capped": 3, "half-tile": 3, "separate": 3,
                                   "keys": keys}
    assert got["8"]["splits"] == got["1"]["splits"] == {"fill": 5, "capped": 5, "half-tile": 9,
                                                        "separate": 3, "keys": keys}
    monkeypatch.setattr(splits, "CONFIG_DIR", tmp_path)
    splits.load_table.cache_clear()
    try:
        one = splits.resolve(None, PRESETS["llama-1b"], torch.bfloat16, torch.device("cuda"), 576)
        assert {b: one(b) for b in range(1, 65) if one(b) != "fill"} == {1: "half-tile",
                                                                         16: "capped",
                                                                         64: "separate"}
        eight = splits.resolve(None, PRESETS["llama-8b"], torch.bfloat16, torch.device("cuda"), 576)
        assert all(eight(b) == "fill" for b in range(1, 65))
    finally:
        splits.load_table.cache_clear()


def test_the_splits_ab_records_the_launches_at_the_sweeps_cache(tmp_path, monkeypatch):
    """An entry records what each mode launched over the cache a sweep at its context gets,
    the one the A/B's decoders had: at llama-8b's bs 24 half-size tiles launch one split fewer
    there than over the context and a few positions, so the record tells the two apart."""
    import sys

    import torch

    from microbench import cli_tune
    from microbench.engine import pdl, splits
    from microbench.engine.shapes import max_seq_for
    rsa = sys.modules["microbench.kernels.rope_store_attention"]
    da = sys.modules["microbench.kernels.decode_attention"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(rsa, "sm_count", lambda index: 132)
    monkeypatch.setattr(da, "sm_count", lambda index: 132)
    shape, cuda = PRESETS["llama-8b"], torch.device("cuda", 0)
    at = lambda max_seq: splits.split_launches(shape, 24, max_seq, cuda, torch.bfloat16)
    assert at(max_seq_for(512)) != at(512 + 8)
    r = {"bs": 24, "elt": 2, "context": 512, "rounds": 40, "arms": ["fill", "capped"],
         "fill": {"median": 1000.0}, "capped": {"median": 950.0},
         "ratios": {"capped": {"median": 1.05, "ci": [1.04, 1.06]}}}
    path = tmp_path / "splits_Fake_GPU.json"
    cli_tune._record_per_batch("llama-8b", [r], path, "splits")
    got = json.loads(path.read_text())["choices"][pdl.shape_key(shape, 2)]["24"]
    assert got["mode"] == "capped" and got["context"] == 512
    assert got["splits"] == at(max_seq_for(512))


def test_the_splits_ab_records_fill_where_the_faster_mode_launched_as_fill(tmp_path, monkeypatch):
    """On a device whose rule already takes the smallest tile, half-tile launches as fill does:
    a ratio beyond noise there (the A/B's own floor) records fill."""
    import torch

    from microbench import cli_tune
    from microbench.engine import pdl, splits
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    same = {"fill": 5, "capped": 5, "half-tile": 5, "keys": dict.fromkeys(splits.MODES, 16)}
    monkeypatch.setattr(splits, "split_launches", lambda *a: same)
    r = {"bs": 1, "elt": 2, "context": 512, "rounds": 40, "arms": ["fill", "capped", "half-tile"],
         "fill": {"median": 870.0}, "capped": {"median": 871.0}, "half-tile": {"median": 850.0},
         "ratios": {"capped": {"median": 0.999, "ci": [0.998, 1.0]},
                    "half-tile": {"median": 1.024, "ci": [1.02, 1.03]}}}
    path = tmp_path / "splits_Fake_GPU.json"
    cli_tune._record_per_batch("llama-1b", [r], path, "splits")
    got = json.loads(path.read_text())["choices"][pdl.shape_key(PRESETS["llama-1b"], 2)]
    assert got["1"]["mode"] == "fill" and got["1"]["splits"] == same


def test_a_table_written_into_a_new_folder(tmp_path):
    from microbench import cli_tune
    path = tmp_path / "new" / "deeper" / "pdl_Fake_GPU.json"
    cli_tune._write_table(path, {"choices": {}})
    assert json.loads(path.read_text()) == {"choices": {}}
    assert not path.with_suffix(".tmp").exists()
