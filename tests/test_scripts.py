"""The helper scripts under scripts/ that run without a GPU."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _compiled_offline(*argv, timeout=120):
    """Run python with `argv` in a process without the interpreter (which this test session may
    have on), so Triton compiles for a GPU target; fails the test on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_gemv_regs_compiles_as_a_launch_specialises(tmp_path):
    """The offline compile carries the alignment the JIT marks at a real launch: the weight
    rows load 16 bytes a thread (PTX v4 loads), as the kernel does on the GPU."""
    code = (f"import sys; sys.path.insert(0, {str(SCRIPTS)!r}); import gemv_regs; "
            "cfg = dict(BLOCK_N=4, BLOCK_K=512, STAGES=3, num_warps=4, AHEAD=0, DOT=0, DEFER=1); "
            "print(gemv_regs.compile_regs(6144, 4096, True, 0, cfg, 1, 90)['vector_loads'])")
    assert int(_compiled_offline("-c", code).split()[-1]) > 0


@pytest.mark.parametrize("regs, warps, programs", [
    (219, 4, 2),    # 224 per thread allocated: 28672 registers a program
    (56, 4, 9),
    (32, 4, 16),    # 16 programs of 128 threads fill the SM's 2048 threads
    (31, 8, 8),
    (255, 8, 1),
])
def test_programs_per_sm_by_registers_and_threads(regs, warps, programs):
    assert _load("gemv_regs").programs_per_sm(regs, warps) == programs


def test_programs_per_sm_by_shared_memory():
    """A tile holding 48 KB of shared memory fits four programs an SM, whatever its registers."""
    assert _load("gemv_regs").programs_per_sm(32, 4, 48 * 1024) == 4


def test_gemv_regs_compiles_a_table_offline(tmp_path):
    """ptxas (shipped in Triton) compiles a table's entries for SM 9.0 without a GPU, in a
    process without the interpreter (which this test session may have on): a deferred-sum tile
    and a register-hungry one both compile, within the 255-register limit and without spilling."""
    key = "N=28672,K=4096,norm=1,epi=2,elt=2"
    small = dict(BLOCK_N=4, BLOCK_K=512, STAGES=3, num_warps=4, AHEAD=0, DOT=0, DEFER=1, matmul="a")
    big = dict(BLOCK_N=4, BLOCK_K=2048, STAGES=3, num_warps=4, AHEAD=0, DOT=0, DEFER=0, matmul="b")
    table = tmp_path / "gemv_test.json"
    table.write_text(json.dumps({"configs": {key: {"1": small}, key.replace("K=4096", "K=2048"): {"1": big}}}))
    out = _compiled_offline(str(SCRIPTS / "gemv_regs.py"), str(table))
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["a", "b"]
    for r in rows:
        regs, spill, smem, progs = map(int, r[-4:])
        assert 0 < regs <= 255 and spill == 0
        assert progs == _load("gemv_regs").programs_per_sm(regs, 4, smem)


def test_host_series_replay_drops_rounds_the_host_was_slow_around(tmp_path, capsys):
    """Three files whose rounds agree while the probe is quick and read 20% slower eager steps
    while it is 8% over: with no tolerance their windows spread; at 1.04 they agree."""
    hs = _load("host_series")
    paths = []
    for k in range(3):
        rounds = []
        for i in range(400):
            slow = (i // 50 + k) % 3 == 0
            rounds.append([i * 0.01, 108.0 if slow else 100.0, 720.0 if slow else 600.0, 250.0])
        p = tmp_path / f"p{k}.json"
        p.write_text(json.dumps(dict(cpu=0, probes={}, rounds=rounds)))
        paths.append(str(p))
    hs.replay(paths)
    out = capsys.readouterr().out
    none = out.split("tolerance none:")[1].split("tolerance")[0]
    tight = out.split("tolerance 1.04:")[1].split("tolerance")[0]
    assert "0.5 s windows" in none and "within 5% in 100%" not in none
    assert tight.count("within 5% in 100%") == 3


def test_eager_gap_per_kernel_beside_the_host_and_gpu_balance(tmp_path, capsys):
    """A GPU-bound row (host 600 us under a 900 us graph GPU time) whose eager step is 50 us
    over its graph step in 100 kernels reads 0.50 us a kernel; the stream gaps the run timed are
    printed beside (Triton's 2.25 queued less 1.50 as a graph node, cuBLAS's 3.00 less 2.10); a
    run without them prints '-'."""
    eg = _load("eager_gap")
    row = dict(bs=1, eager_step_us=1000.0, graph_step_us=950.0, eager_host_us=600.0,
               graph_gpu_us=900.0, eager_kernels=100, predicted_eager_step_us=960.0)
    launch = dict(gpu_us_per_kernel=dict(triton=dict(median=1.5), cublas=dict(median=2.1)),
                  gpu_us_per_kernel_queued=dict(triton=dict(median=2.25), cublas=dict(median=3.0)))
    for name, run in (("new", dict(launch=launch)), ("old", {})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(
            dict(kind="sweep", env=dict(git="abcdef123"), rows=[row], **run)))
    out = eg.table([str(tmp_path / "new"), str(tmp_path / "old")])
    assert out[2] == "| `new` | `abcdef1` | 1 | 0.67 | 0.50 | -4.0% | 0.75 | 0.90 |"
    assert out[3] == "| `old` | `abcdef1` | 1 | 0.67 | 0.50 | -4.0% | - | - |"
    with pytest.raises(SystemExit, match="not a sweep run"):
        (tmp_path / "launch").mkdir()
        (tmp_path / "launch" / "run.json").write_text(json.dumps(dict(kind="launch", rows=[])))
        eg.table([str(tmp_path / "launch")])


def test_targets_from_the_committed_runs(capsys):
    """scripts/targets.py on committed H200 runs: with the torch-compile arm each comparison is
    judged; a default sweep without it leaves that row unjudged, never 'yes'."""
    h200 = SCRIPTS.parent / "results" / "h200"
    mod = _load("targets")
    kern = h200 / "20261203-140104-kernels-llama-8b-h200"
    mod.main(h200 / "20261203-125929-sweep-opt-125m-h200",
             h200 / "20261203-130135-sweep-llama-1b-h200",
             h200 / "20261203-125620-sweep-llama-8b-h200", kern)
    out = capsys.readouterr().out
    assert "| opt-125m bs 1 graph step | <= 200 us | 267.4 us | no |" in out
    assert ("| llama-8b bs 1 graph / torch-compile | <= 0.80 | 0.779 (4292.2 / 5507.7 us) | yes |"
            in out)
    assert "| llama-8b bs 64 graph MBU | >= 0.78 | 0.804 | yes |" in out
    assert "| llama-1b bs 16 / bs 1 | <= 1.15 | 1.239 | no |" in out
    # the same code before its bs-64 attention ran as separate kernels, another process
    mod.main(h200 / "20261203-125929-sweep-opt-125m-h200",
             h200 / "20261202-181706-sweep-llama-1b-h200",
             h200 / "20261202-180700-sweep-llama-8b-h200", kern)
    assert "| llama-8b bs 64 graph MBU | >= 0.78 | 0.776 | no |" in capsys.readouterr().out
    mod.main(h200 / "20261202-165137-sweep-opt-125m-h200",
             h200 / "20261202-165707-sweep-llama-1b-h200",
             h200 / "20261202-170133-sweep-llama-8b-h200", kern)
    out = capsys.readouterr().out
    assert ("| opt-125m bs 1 graph / torch-compile | <= 0.80 | no torch-compile arm in this run "
            "| - |") in out
    assert "| llama-8b bs 4 / bs 1 | <= 1.05 |" in out


def _trace(path, kernels, corr=7, launches=1):
    """A profiler trace with `launches` cudaGraphLaunch events (the last at correlation corr),
    the graph's kernels (name, start, duration) under corr, and an eager kernel under another."""
    ev = [{"name": "cudaGraphLaunch", "ph": "X", "cat": "cuda_runtime", "ts": 1000 * i, "dur": 5,
           "args": {"correlation": corr - launches + 1 + i}} for i in range(launches)]
    ev += [{"name": n, "ph": "X", "cat": "kernel", "ts": t, "dur": d, "args": {"correlation": corr}}
           for n, t, d in kernels]
    ev.append({"name": "eager_kernel", "ph": "X", "cat": "kernel", "ts": 0, "dur": 50,
               "args": {"correlation": 3}})
    path.write_text(json.dumps({"traceEvents": ev}))
    return str(path)


def test_trace_marginal_charges_each_kernel_from_the_previous_end(tmp_path, capsys):
    """Overlapping kernels (PDL): each is charged from the previous kernel's end to its own, the
    charges sum to the replay's span, each one's lead is how long it had started before the
    previous end, and kernels of other launches are left out."""
    tm = _load("trace_marginal")
    # embed, then two layers of (matmul, attention) overlapping, then the LM head
    ks = [("_embed_kernel", 100, 2), ("_gemv_kernel", 101, 6), ("_rope_attend_kernel", 105, 5),
          ("_gemv_kernel", 109, 4), ("_rope_attend_kernel", 112, 6), ("_gemv_kernel", 116, 20)]
    f = _trace(tmp_path / "t.json", ks)
    rows = tm.marginal(tm.graph_kernels(json.loads(Path(f).read_text())["traceEvents"]))
    assert [round(m, 6) for _, m, _ in rows] == [2, 5, 3, 3, 5, 18]
    assert sum(m for _, m, _ in rows) == 136 - 100
    kernels = tm.graph_kernels(json.loads(Path(f).read_text())["traceEvents"])
    assert [round(x, 6) for x in tm.leads(kernels)] == [0, 1, 2, 1, 1, 2]
    tm.main([f, "--layer", "2"])
    out = capsys.readouterr().out
    assert "graph replay of 6 kernels, 36.0 us" in out and "eager_kernel" not in out
    # per position: marginal, lead and duration medians over the two layers
    assert "  0:    4.00    1.00    5.00  _gemv_kernel" in out
    assert "  1:    4.00    1.50    5.50  _rope_attend_kernel" in out
    # a kernel that starts after a gap leads by a negative time
    g = _trace(tmp_path / "g.json", [("a", 0, 4), ("b", 7, 2)])
    gk = tm.graph_kernels(json.loads(Path(g).read_text())["traceEvents"])
    assert tm.leads(gk) == [0.0, -3]
    # taken in order of their ends, as marginal() takes them: b ends inside a, which began first
    o = _trace(tmp_path / "o.json", [("a", 0, 10), ("b", 2, 3), ("c", 9, 4)])
    ok = tm.graph_kernels(json.loads(Path(o).read_text())["traceEvents"])
    assert [n for n, _, _ in tm.marginal(ok)] == ["b", "a", "c"] and tm.leads(ok) == [0.0, 5, 1]


def test_trace_marginal_takes_the_latest_graph_launch_and_refuses_what_it_cannot_read(tmp_path):
    tm = _load("trace_marginal")
    f = _trace(tmp_path / "t.json", [("_gemv_kernel", 5000, 3)], corr=9, launches=3)
    assert [n for n, _, _ in tm.marginal(tm.graph_kernels(json.loads(Path(f).read_text())["traceEvents"]))] == ["_gemv_kernel"]
    for bad in (tmp_path / "missing.json", tmp_path / "broken.json"):
        if bad.name == "broken.json":
            bad.write_text("{")
        with pytest.raises(SystemExit, match="not a readable profiler trace"):
            tm.main([str(bad)])
    nolaunch = tmp_path / "n.json"
    nolaunch.write_text(json.dumps({"traceEvents": [{"name": "k", "ph": "X", "cat": "kernel",
                                                     "ts": 0, "dur": 1, "args": {}}]}))
    with pytest.raises(SystemExit, match="no cudaGraphLaunch"):
        tm.main([str(nolaunch)])
    f = _trace(tmp_path / "t3.json", [("a", 0, 1), ("b", 1, 1), ("c", 2, 1)])
    with pytest.raises(SystemExit, match="not whole layers"):
        tm.main([f, "--layer", "2", "--skip", "0", "--tail", "0"])


def test_trace_marginal_names_the_kernels_by_the_step_plan(tmp_path, capsys):
    """With the sweep's preset and batch size each kernel takes its op's name in launch order,
    and each op's bytes from the plan over its marginal time give its rate on the path; a plan
    of another length is not this trace's step."""
    from microbench.engine.plan import Fusion, step_kernels
    from microbench.engine.shapes import PRESETS
    tm = _load("trace_marginal")
    plan = step_kernels(PRESETS["tiny"], 1, 512)
    ks = [(f"k{i}", 10 * i, 10) for i in range(len(plan))]      # back to back, 10 us each
    f = _trace(tmp_path / "t.json", ks)
    tm.main([f, "--preset", "tiny", "--bs", "1", "--layer", "5"])
    out = capsys.readouterr().out
    assert "  0:   10.00    0.00   10.00  qkv_proj:skinny" in out
    assert "  1:   10.00    0.00   10.00  decode_attention" in out
    lm = next(k for k in plan if k.name.startswith("lm_head"))
    line = next(l for l in out.splitlines() if l.startswith(lm.name))
    assert line.split()[-1] == f"{lm.bytes / 10e-6 / 1e9:.0f}"          # bytes / 10 us, GB/s
    with pytest.raises(SystemExit, match="not this sweep's step"):
        tm.main([f, "--preset", "tiny", "--bs", "64"])
    # a size whose attention ran as separate kernels: the MATMULS plan, reduce or not
    for n in (2, 1):
        sep = step_kernels(PRESETS["tiny"], 4, 512, attn_launches=n, fusion=Fusion.MATMULS)
        f = _trace(tmp_path / f"s{n}.json", [(f"k{i}", 10 * i, 10) for i in range(len(sep))])
        ks = tm.graph_kernels(json.loads(open(f).read())["traceEvents"])
        assert tm.name_by_plan(ks, "tiny", 4, 512) == {k.name: k.bytes for k in sep}
        assert [e["op"] for e in ks] == [k.name for k in sep]


def test_step_probe_arms_and_the_plan_they_force(tmp_path):
    import click
    import torch
    probe = _load("step_probe")
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"configs": {"N=8,K=8,norm=0,epi=0,elt=2": {"1": {}}}}))
    (tmp_path / "empty.json").write_text(json.dumps({"configs": {}}))
    (tmp_path / "bad.json").write_text("{not json")
    assert probe.parse_arm("default") == {}
    assert probe.parse_arm(f"splits=3,block_n=32,table={table}") == dict(
        splits=3, block_n=32, table=str(table))
    assert probe.parse_arm("block_n=64,stream") == dict(block_n=64, stream=True)
    assert probe.parse_arm("warps=8,chunk=2") == dict(warps=8, chunk=2)
    for bad in ("splits=0", "splits=x", "splits=\u00b2", "block_n=48", "pdl=off",
                "splits=2,splits=3", "splits", "stream,stream", "stream=1", "warps=3", "chunk=16",
                "warps=8,warps=4", f"table={tmp_path / 'missing.json'}",
                f"table={tmp_path / 'empty.json'}", f"table={tmp_path / 'bad.json'}"):
        with pytest.raises(click.BadParameter):
            probe.parse_arm(bad)
    cpu = torch.device("cpu")
    # nothing forced: the decoder's own plan; forced: the arm's split count and tile
    assert probe._forced_plan(1, 8, 520, cpu, 128, torch.bfloat16) == probe._fused_plan(
        1, 8, 520, cpu, 128, torch.bfloat16)
    assert probe._forced_block_n(cpu, 128, torch.bfloat16) == probe._block_n_for(
        cpu, 128, torch.bfloat16)
    # (two kv heads at one row do not fill the CPU's stand-in SMs: no streaming by default)
    assert probe._forced_plan(1, 2, 520, cpu, 128, torch.bfloat16)[1] is False
    probe._FORCED.update(splits=3, block_n=32, stream=True)
    try:
        assert probe._forced_plan(1, 2, 520, cpu, 128, torch.bfloat16) == (3, True)
        assert probe._forced_block_n(cpu, 128, torch.bfloat16) == 32
        # a count the caller passes is kept (the kernel's own num_splits argument)
        assert probe._forced_plan(1, 8, 520, cpu, 128, torch.bfloat16, 2)[0] == 2
    finally:
        probe._FORCED.update(dict.fromkeys(probe._FORCED))


def test_step_probe_forces_the_attention_launchs_warps_and_merge_chunk(monkeypatch):
    probe = _load("step_probe")
    got = []
    monkeypatch.setattr(probe, "_launch", lambda record, kernel, grid, *a, **kw: got.append(kw))
    kw = dict(num_warps=4, S_CHUNK=4, BLOCK_S=4, USE_PDL=1)
    probe._forced_launch(None, "k", (1,), **kw)
    try:
        for warps, chunk in ((8, 2), (2, 8)):
            probe._FORCED.update(warps=warps, chunk=chunk)
            probe._forced_launch(None, "k", (1,), **kw)
    finally:
        probe._FORCED.update(dict.fromkeys(probe._FORCED))
    # nothing forced: as asked; forced: the warps, and the chunk capped at the splits' BLOCK_S
    assert got == [kw, dict(kw, num_warps=8, S_CHUNK=2), dict(kw, num_warps=2, S_CHUNK=4)]


@pytest.mark.interpreter
def test_step_probe_settings_reach_the_fused_attention_launch(monkeypatch):
    """Through the patched module, rope_store_attention launches with the arm's split count,
    streaming launch, warps and merge chunk, and still computes the reference's attention."""
    import torch

    from microbench.kernels import rope_store_attention_ref
    from tests.utils import attention_inputs, fused_qkv, gen
    probe = _load("step_probe")
    monkeypatch.setattr(probe.RSA, "fused_plan", probe._forced_plan)
    monkeypatch.setattr(probe.RSA, "launch", probe._forced_launch)
    q, kc, vc, slots, seq_lens = attention_inputs(2, 4, 2, 16, 40, 3, torch.float32, "cpu", seed=3)
    _, _, k, v = fused_qkv(2, 4, 2, 16, gen(4), torch.float32, "cpu")
    kr, vr = kc.clone(), vc.clone()
    want = rope_store_attention_ref(q, k, v, kr, vr, slots, seq_lens, 0.25)
    rec = []
    probe._FORCED.update(splits=3, stream=True, warps=2, chunk=2)
    try:
        out = probe.RSA.rope_store_attention(q, k, v, kc, vc, slots, seq_lens, 0.25, record=rec)
    finally:
        probe._FORCED.update(dict.fromkeys(probe._FORCED))
    kw = rec[0].kwargs
    assert (rec[0].grid[2], kw["STREAM"], kw["num_warps"], kw["S_CHUNK"]) == (3, 1, 2, 2)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)


def test_step_probe_builds_each_arm_with_its_settings_and_puts_everything_back(tmp_path,
                                                                               monkeypatch):
    import torch

    from microbench.bench import tune
    probe = _load("step_probe")
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"configs": {"N=8,K=8,norm=0,epi=0,elt=2": {"1": {}}}}))
    cpu = torch.device("cpu")
    seen = []

    def fake_build(preset, bs, context, table_file=None, splits=None):
        # what rope_store_attention would read from its module while this arm's graph is
        # captured, and the decoder's split mode (an arm's tile replaces the splits table's)
        mode = splits
        splits, stream = probe.RSA.fused_plan(bs, 2, 520, cpu, 128, torch.bfloat16)
        seen.append(dict(splits=splits, stream=stream, mode=mode,
                         warps=probe._FORCED["warps"] if probe.RSA.launch is probe._forced_launch
                         else "not patched",
                         block_n=probe.RSA.block_n_for(cpu, 128, torch.bfloat16),
                         table=os.environ.get(table_file) if table_file else None))
        return "runner", "step"

    monkeypatch.setattr(tune, "_graphed_step", fake_build)
    settings = {"default": {}, f"splits=3,block_n=32,stream,warps=8,table={table}": dict(
        splits=3, block_n=32, stream=True, warps=8, table=str(table)),
        "block_n=32": dict(block_n=32), "splits=2": dict(splits=2), "warps=2": dict(warps=2)}
    with probe.arms_patched(settings) as patched:
        assert [name for name, _ in patched.VARIANTS["probe"]] == list(settings)
        for name, kw in patched.VARIANTS["probe"]:
            assert patched._graphed_step("tiny", 1, 512, **kw) == ("runner", "step")
        # between arms nothing is forced
        assert set(probe._FORCED.values()) == {None}
    default = probe._fused_plan(1, 2, 520, cpu, 128, torch.bfloat16)[0]
    assert seen == [dict(splits=default, stream=False, mode=None, warps=None,
                         block_n=probe._block_n_for(cpu, 128, torch.bfloat16), table=None),
                    dict(splits=3, stream=True, mode="fill", warps=8, block_n=32,
                         table=str(table)),
                    # an arm forcing the tile or the count alone builds on fill too
                    dict(splits=probe._fused_plan(1, 2, 520, cpu, 128, torch.bfloat16,
                                                  block_n=32)[0],
                         stream=False, mode="fill", warps=None, block_n=32, table=None),
                    dict(splits=2, stream=False, mode="fill", warps=None,
                         block_n=probe._block_n_for(cpu, 128, torch.bfloat16), table=None),
                    # and so does any other setting of the fused kernel (a separate size in the
                    # table would not launch it)
                    dict(splits=default, stream=False, mode="fill", warps=2,
                         block_n=probe._block_n_for(cpu, 128, torch.bfloat16), table=None)]
    assert tune._graphed_step is fake_build and "probe" not in tune.VARIANTS
    assert probe.RSA.fused_plan is probe._fused_plan
    assert probe.RSA.block_n_for is probe._block_n_for
    assert probe.RSA.launch is probe._launch


def test_attention_timeline_kernel_compiles_with_its_timer_reads():
    """The timed copy of the fused attention compiles for SM 9.0 without a GPU (ptxas ships in
    Triton; a process without the interpreter): the record's pointer follows sem_ptr, and the
    PTX reads the global timer three times and the SM's number once."""
    code = (f"import sys; sys.path.insert(0, {str(SCRIPTS)!r}); import attention_timeline as at\n"
            "import triton\n"
            "from triton.backends.compiler import GPUTarget\n"
            "from triton.compiler import ASTSource\n"
            "k = at.timed_kernel()\n"
            "const = dict(GROUP=4, HEAD_DIM=128, HALF=64, BLOCK_H=16, BLOCK_N=64, BLOCK_D=128,\n"
            "             BLOCK_S=16, S_CHUNK=8, SINGLE=0, DOT_PRECISION='tf32', INTERPRET=False,\n"
            "             TILES_PER_SPLIT=1, STREAM=0, USE_PDL=1)\n"
            "ptr = dict(slots_ptr='*i32', seq_lens_ptr='*i32', o_part_ptr='*fp32', m_part_ptr='*fp32',\n"
            "           l_part_ptr='*fp32', sem_ptr='*i32', times_ptr='*i64')\n"
            "sig = {n: 'constexpr' if n in const else ptr.get(n, '*bf16') if n.endswith('_ptr')\n"
            "       else 'fp32' if n in ('qk_scale', 'theta') else 'i32' for n in k.arg_names}\n"
            "src = ASTSource(k, sig, constexprs={(k.arg_names.index(n),): v for n, v in const.items()})\n"
            "ptx = triton.compile(src, target=GPUTarget('cuda', 90, 32),\n"
            "                     options={'num_warps': 4, 'num_stages': 1}).asm['ptx']\n"
            "i = k.arg_names.index('sem_ptr')\n"
            "print(k.arg_names[i + 1], ptx.count('%globaltimer'), ptx.count('%smid'))\n")
    assert _compiled_offline("-c", code, timeout=180).split() == ["times_ptr", "3", "1"]


def test_attention_timeline_refuses_a_kernel_its_patches_do_not_fit():
    at = _load("attention_timeline")
    src = at.kernel_source()
    assert at.timed_source(src).count("globaltimer()") == 3
    for anchor, _ in at.PATCHES:   # an anchor gone, or twice: the copy would time the wrong place
        for bad in (src.replace(anchor, ""), src.replace(anchor, anchor + anchor)):
            with pytest.raises(RuntimeError, match="update PATCHES"):
                at.timed_source(bad)


def test_attention_timeline_metrics_of_one_layer_and_their_medians():
    """Four programs: three started before the release (6000 ns), one after it."""
    import numpy as np
    at = _load("attention_timeline")
    rec = np.array([[1000, 6000, 8000, 3], [2000, 6000, 9000, 3], [3000, 6200, 8500, 7],
                    [10000, 10500, 13000, 9]], dtype=np.int64)
    m = at.layer_metrics(rec)
    assert m == pytest.approx(dict(lead=5.0, late=1, last=4.0, passed=4.5, work=2.4, span=7.0))
    later = rec + np.array([0, 0, 2000, 0])          # every program ends 2 us later
    s = at.summarise([[rec, rec], [later, later]])
    assert s["span"] == pytest.approx(8.0) and s["work"] == pytest.approx(3.4)
    assert (s["programs"], s["sms"], s["late"]) == (4, 3, 1)
    assert s["tick"] == pytest.approx(0.2)           # 6000 -> 6200, the closest distinct times
    with pytest.raises(ValueError, match="no attention launch"):
        at.summarise([[]])
    # a row left zero (a program that never wrote it) or out of order is refused, not averaged
    for bad in (np.zeros(4, dtype=np.int64), np.array([5000, 4000, 9000, 1])):
        broken = rec.copy()
        broken[2] = bad
        with pytest.raises(ValueError, match="missing or out of order"):
            at.layer_metrics(broken)


def test_attention_timeline_launches_the_timed_copy_with_a_record_per_layer(monkeypatch):
    """Other kernels launch untouched; the attention launches the copy, with the layer's record
    (grid x 4 int64) inserted after sem_ptr and kept for the next launch of the same layer."""
    import torch
    at = _load("attention_timeline")
    sent = []
    monkeypatch.setattr(at, "_launch", lambda record, kernel, grid, *args, **kw: sent.append(
        (kernel, grid, args, kw)))
    rec = at.Recorder()
    other = object()
    rec.launch(None, other, (3,), "x", BLOCK=4)
    assert sent[-1] == (other, (3,), ("x",), {"BLOCK": 4})
    q = torch.zeros(1)
    layer0, layer1 = torch.zeros(2), torch.zeros(2)
    args = (q, "k", "v", layer0, "vc", "slots", "lens", "out", "o", "m", "l", "sem", 7, 8)
    rec.launch([], at.RSA._rope_attend_kernel, (1, 8, 9), *args, GROUP=4)
    kernel, grid, got, kw = sent[-1]
    assert kernel is rec.kernel and kw == {"GROUP": 4} and grid == (1, 8, 9)
    assert got[:12] == args[:12] and got[13:] == (7, 8)
    assert got[12].dtype == torch.int64 and got[12].numel() == 72 * at.FIELDS
    rec.launch([], at.RSA._rope_attend_kernel, (1, 8, 9), *args[:3], layer1, *args[4:])
    rec.launch([], at.RSA._rope_attend_kernel, (1, 8, 9), *args)
    assert sent[-1][2][12] is got[12] and len(rec.records) == 2
    assert [r.shape for r in rec.snapshot()] == [(72, at.FIELDS)] * 2
    got[12].fill_(7)
    rec.reset()                                      # before each replay: every record zeroed
    assert all((r == 0).all() for r in rec.snapshot())


def test_attention_timeline_refuses_a_table_without_entries(tmp_path):
    from click.testing import CliRunner
    at = _load("attention_timeline")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"configs": {}}))
    out = CliRunner().invoke(at.main, ["--preset", "llama-8b", "--table", str(empty)])
    assert out.exit_code == 2 and "--table" in out.output and "Traceback" not in out.output


def test_attention_timeline_says_it_needs_a_gpu():
    import torch
    from click.testing import CliRunner
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the script would run")
    out = CliRunner().invoke(_load("attention_timeline").main, ["--preset", "llama-8b"])
    assert out.exit_code == 2 and "CUDA GPU" in out.output


@pytest.mark.gpu
def test_attention_timeline_runs_on_a_gpu():
    """On a PDL GPU the timed copy compiles, every program writes its row (the script refuses
    otherwise), and the metrics print."""
    import torch
    from click.testing import CliRunner
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability 9.0 or newer")
    out = CliRunner().invoke(_load("attention_timeline").main,
                             ["--preset", "tiny", "--context", "64", "--replays", "2"])
    assert out.exit_code == 0, out.output
    assert "span" in out.output and "timer step" in out.output


@pytest.mark.interpreter
@pytest.mark.parametrize("mode", ["stream", "flag", "flag-late", "flag-nap"])
def test_boundary_probe_chain_matches_its_reference(mode):
    """The relay chain of an odd number of programs, each streaming several weight chunks with
    a ragged last one, equals its float32 reference at every kernel; in the flag modes every
    kernel's counter ends at its program count (each program released once) and no spin gave
    up. (The interpreter runs one program after another, so this checks the counting, not the
    ordering: the gpu test below does that.)"""
    bp = _load("boundary_probe")
    chain = bp.Chain(5, 7, 0.3, torch.device("cpu"))
    assert chain.nchunk > 1 and chain.share % chain.chunk
    for _ in range(2):      # a second step starts from zeroed counters, as each replay does
        chain.step(bp.MODES[mode])
        assert chain.problem(bp.MODES[mode], bp.reference(chain.w, 5, 7)) is None
        assert chain.cnt[:5].tolist() == ([7] * 5 if mode.startswith("flag") else [0] * 5)


def test_boundary_probe_check_catches_an_early_read_anywhere_in_the_chain():
    """A second kernel of 64 that read zeros (its input not yet written) is caught, though the
    chain halves its error at every kernel after it; so are a counter short of its programs and
    a spin that gave up."""
    bp = _load("boundary_probe")
    w = torch.randn(64 * 9 * 128, dtype=torch.bfloat16)
    want = bp.reference(w, 64, 9)
    wsum, pid = w.float().view(64, 9, -1).sum(dim=2), torch.arange(9, dtype=torch.float32)
    early, x = want.clone(), torch.zeros(9)
    for i in range(1, 64):
        x = x.sum() * 0.5 / 9 + 1.0 + wsum[i] * 1e-4 + pid * 1e-3
        early[i] = x
    assert bp.off_reference(early, want) is not None
    assert bp.off_reference(want + 1e-7, want) is None

    chain = bp.Chain(64, 9, 0, torch.device("cpu"))
    chain.w = w
    chain.bufs[1:] = want
    chain.cnt[:64] = 9
    assert chain.problem(bp.MODES["flag"], want) is None
    chain.bufs[1:] = early
    assert "off the reference" in chain.problem(bp.MODES["flag"], want)
    chain.bufs[1:] = want
    chain.cnt[2] = 8
    assert "counters" in chain.problem(bp.MODES["flag"], want)
    assert chain.problem(bp.MODES["stream"], want) is None      # no counters without flags
    chain.cnt[2], chain.cnt[64] = 9, 1
    assert "gave up" in chain.problem(bp.MODES["flag"], want)


@pytest.mark.interpreter
@pytest.mark.parametrize("mode", ["flag", "flag-late"])
def test_boundary_probe_a_spin_that_runs_out_counts_itself(mode):
    """A kernel whose kernel before never counted its programs polls MAX_POLLS times, goes on,
    and counts each program that gave up; the probe then names that, not the wrong outputs."""
    import triton.language as tl
    bp = _load("boundary_probe")
    bp.MAX_POLLS = tl.constexpr(5)
    chain = bp.Chain(2, 5, 0, torch.device("cpu"))
    cnt = chain.cnt
    bp._relay[(5,)](chain.bufs[0], chain.bufs[1], chain.w, cnt[0:], cnt[1:], cnt[2:], 5,
                    MODE=bp.MODES[mode], FIRST=False, SHARE=chain.share, CHUNK=chain.chunk,
                    NCHUNK=chain.nchunk, READ_N=8, GDC=False)
    assert chain.gave_up() == 5
    assert "5 spins gave up" in chain.problem(bp.MODES[mode], bp.reference(chain.w, 2, 5))


@pytest.mark.parametrize("mib, programs", [(2, 1056), (3, 528), (6, 1056), (8, 132), (0.3, 7)])
def test_boundary_probe_weight_share_is_the_size_asked_for(mib, programs):
    """A kernel streams the MiB asked for, to within 32 elements a program, in shares of a
    multiple of 64 elements (aligned loads) and power-of-two chunks of at most 4096 elements
    that cover the share."""
    share, chunk, nchunk = _load("boundary_probe").weight_share(mib, programs)
    assert share % 64 == 0
    assert abs(2 * programs * share - mib * 2**20) <= 2 * programs * 32
    assert chunk & (chunk - 1) == 0 and chunk <= 4096
    assert chunk * (nchunk - 1) < share <= chunk * nchunk


def test_boundary_probe_modes_compile_to_their_waits():
    """Offline for SM 9.0: only `pdl` waits with griddepcontrol.wait; the flag modes poll with
    acquire loads (one thread, or every thread for flag-all) and release with an atomic add;
    only flag-nap sleeps, and only flag-late lets the next kernel launch after its spin; every
    mode loads its weight share as 16-byte vectors, and the flag modes store before they
    release."""
    code = (f"import sys; sys.path.insert(0, {str(SCRIPTS)!r}); import boundary_probe as bp\n"
            "from triton.backends.compiler import GPUTarget\n"
            "from triton.compiler import ASTSource\n"
            "import re\n"
            "import triton\n"
            "k = bp._relay\n"
            "for mode in (0, 1, 2, 3, 4, 5):\n"
            "    sig = dict(src_ptr='*fp32', dst_ptr='*fp32', w_ptr='*bf16', prev_cnt_ptr='*i32',\n"
            "               cnt_ptr='*i32', gave_up_ptr='*i32', P='i32')\n"
            "    const = dict(MODE=mode, FIRST=False, SHARE=8000, CHUNK=4096, NCHUNK=2, READ_N=1024,\n"
            "                 GDC=True)\n"
            "    sig.update({n: 'constexpr' for n in const})\n"
            "    attrs = {(k.arg_names.index('w_ptr'),): [['tt.divisibility', 16]]}\n"
            "    src = ASTSource(k, sig, constexprs={(k.arg_names.index(n),): v for n, v in const.items()},\n"
            "                    attrs=attrs)\n"
            "    ptx = triton.compile(src, target=GPUTarget('cuda', 90, 32), options={'num_warps': 4}).asm['ptx']\n"
            "    # the release add: an atom (Triton 3.6) or, its result unused, a red (3.9)\n"
            "    rel = list(re.finditer(r'(atom|red)\\.global\\.gpu\\.release\\.add', ptx))\n"
            "    print(mode, ptx.count('griddepcontrol.wait'), ptx.count('griddepcontrol.launch_dependents'),\n"
            "          ptx.count('ld.global.gpu.acquire'), ptx.count('ld.acquire.gpu'),\n"
            "          len(rel), ptx.count('nanosleep'),\n"
            "          int(ptx.find('griddepcontrol.launch_dependents') > ptx.find('.acquire')),\n"
            "          ptx.count('ld.global.v4'),\n"
            "          int(0 <= ptx.rfind('st.global') < (rel[-1].start() if rel else -1)))\n")
    rows = {int(r.split()[0]): [int(v) for v in r.split()[1:]]
            for r in _compiled_offline("-c", code).splitlines()}
    assert rows[0][:6] == [0, 0, 0, 0, 0, 0]
    assert rows[1][:6] == [1, 1, 0, 0, 0, 0]
    for mode in (2, 3, 4, 5):       # (plus the gave-up count's atomic, which is not a release)
        assert rows[mode][4] == 1
    for mode in (2, 4, 5):
        assert rows[mode][:2] == [0, 1] and rows[mode][2] > 0 and rows[mode][3:5] == [0, 1]
    assert rows[3][:3] == [0, 1, 0] and rows[3][3] > 0 and rows[3][4] == 1
    assert [rows[m][5] for m in (2, 3, 4)] == [0, 0, 0] and rows[5][5] > 0
    # flag-late lets the next kernel launch after its spin, the others before
    assert [rows[m][6] for m in (2, 3, 4, 5)] == [0, 0, 1, 0]
    # a share of a multiple of 64 elements loads its weights as 16-byte vectors in every mode
    assert all(rows[m][7] == 8 for m in rows)     # 4 a thread before the wait, 4 in the loop
    # the flag modes store the output before the release that counts it
    assert all(rows[m][8] for m in (2, 3, 4, 5))


@pytest.mark.parametrize("args, says", [
    (["--modes", "pdl,bogus"], "unknown 'bogus'; modes are stream, pdl, flag, flag-all, flag-late, flag-nap"),
    (["--modes", "pdl,"], "unknown ''"),
    (["--programs", "0"], "each must be from 1 to 8192"),
    (["--programs", "132,9000"], "each must be from 1 to 8192"),
    (["--modes", "pdl,pdl"], "give each mode once"),
    (["--programs", "1.5"], "give comma-separated whole numbers"),
    (["--mib", "x"], "give comma-separated numbers from 0 up to 1e6"),
    (["--mib", "nan"], "give comma-separated numbers from 0 up to 1e6"),
    (["--mib", "inf"], "give comma-separated numbers from 0 up to 1e6"),
    (["--mib", "-8"], "give comma-separated numbers from 0 up to 1e6"),
])
def test_boundary_probe_rejects_bad_input(args, says):
    from click.testing import CliRunner
    out = CliRunner().invoke(_load("boundary_probe").main, args)
    assert out.exit_code == 2 and says in out.output and out.exception.__class__ is SystemExit


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_boundary_probe_says_it_needs_a_gpu():
    from click.testing import CliRunner
    out = CliRunner().invoke(_load("boundary_probe").main, [])
    assert out.exit_code != 0 and "needs a CUDA GPU" in str(out.exception) + out.output


@pytest.mark.gpu
def test_boundary_probe_runs_every_mode_against_its_reference():
    """On a GPU of SM 9.0 or newer every mode's chain, graphed, equals its float32 reference
    (the probe exits non-zero if one does not) and prints a row per mode and size."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the PDL and flag modes need SM 9.0")
    from click.testing import CliRunner
    bp = _load("boundary_probe")
    out = CliRunner().invoke(bp.main, ["--programs", "33,264", "--mib", "0,1", "--layers", "6",
                                       "--rounds", "5"])
    assert out.exit_code == 0, out.output
    rows = [line.split() for line in out.output.splitlines() if line.split()[:1] in (["33"], ["264"])]
    assert len(rows) == 2 * 2 * len(bp.MODES)
    assert {r[2] for r in rows} == set(bp.MODES)


def _repeat_run(folder, rows, pins=True):
    """A --repeat run folder as the sweep writes it, with the fields repeat_targets reads."""
    folder.mkdir()
    out = []
    for bs, speedups in rows:
        row = dict(bs=bs, speedup_repeats=speedups,
                   speedup_repeat_spread=max(speedups) / min(speedups) - 1)
        if pins:
            row["host_pin_repeats"] = [dict(waited_s=15.0 if i == 0 else 0.5, slow_rounds=27 * (i == 0),
                                            quiet_rounds=12, rounds=132, loop_us=109.2 - i)
                                       for i in range(len(speedups))]
        out.append(row)
    run = dict(env=dict(git="abcdef123456"), rows=out,
               repeats=dict(k=3, max_spread=max(r["speedup_repeat_spread"] for r in out),
                            shape_held=[True, False, True], engine_shape_held=[True] * 3))
    (folder / "run.json").write_text(json.dumps(run))
    return str(folder)


def test_repeat_targets_prints_each_processs_host_record_beside_its_speedup(tmp_path, capsys):
    """The third table: each process's median speedup at a row with the seconds its pin waited
    for a slow host, the rounds sampled on one after that, the rounds counted and its probe
    loop; a run without per-process host records adds no such table."""
    rt = _load("repeat_targets")
    new = _repeat_run(tmp_path / "new", [(1, [2.445, 2.176, 2.217]), (4, [1.695, 1.61, 1.668])])
    rt.main([new])
    out = capsys.readouterr().out
    assert ("| `new` | 1 | 2.445 (waited 15.0 s, 27 slow, 12/132 counted, loop 109 us) / "
            "2.176 (waited 0.5 s, 0 slow, 12/132 counted, loop 108 us) / ") in out
    assert "| 12.4% (2.445/2.176/2.217) |" in out and "| 12.4% | no |" in out
    old = _repeat_run(tmp_path / "old", [(1, [2.3, 2.31, 2.29]), (4, [1.7, 1.71, 1.69])], pins=False)
    rt.main([old])
    out = capsys.readouterr().out
    assert "waited" not in out and "| 1.2% | yes | 3 of 3 | 2 of 3 |" in out
    with pytest.raises(SystemExit, match="cannot read"):
        rt.main([str(tmp_path / "missing")])


def _mlp_chain(bs, **shape):
    import dataclasses
    from microbench.engine.shapes import PRESETS
    mp = _load("mlp_probe")
    s = dataclasses.replace(PRESETS["tiny"], **shape)
    return mp, mp.Chain(s, bs, torch.device("cpu"))


@pytest.mark.interpreter
@pytest.mark.parametrize("bs", [1, 3])
def test_mlp_probe_arms_match_the_reference(bs):
    """On a shape whose F is no multiple of C and whose hidden size is no multiple of the
    chunks (or is smaller than one), every arm's last layer equals the chain's float32 reference (the interpreter runs
    the fused kernel as its two phases: programs run one after another there, so a barrier
    would wait for programs that have not started)."""
    mp, chain = _mlp_chain(bs, hidden=80, ffn=200)
    want = mp.reference(chain.h0, chain.layers, chain.shape.norm_eps)
    arms = [("two", {}), ("fused", dict(mp.DEFAULTS, C=16, BK=32, BO=16, DT=0)),
            ("fused", dict(mp.DEFAULTS, C=16, BK=32, BO=32, DT=1)),
            # a down chunk wider than the row: its arithmetic (the interpreter does not flag a
            # read past W_down, so the first load's bound is not what this checks)
            ("fused", dict(mp.DEFAULTS, C=16, BK=32, BO=128, DT=1)),
            ("split", dict(mp.DEFAULTS, C=32, BK=64, BO=32, W=2, DT=0))]
    outs = []
    for kind, cfg in arms:
        out = chain.step(kind, cfg)
        assert chain.problem(out, want) is None, (kind, cfg)
        outs.append(out.float().clone())
    assert all((o - outs[0]).abs().max() < 0.05 for o in outs[1:])


@pytest.mark.interpreter
def test_mlp_probe_check_catches_a_partial_read_before_it_was_stored():
    """A reduction that read one program's partial before that program stored it (a NaN, as the
    checked replay leaves the partials) is caught, and an output 1% off the reference (within
    the tolerance a chain of bf16 layers needs) is not mistaken for one; a spin that gave up
    is named."""
    mp, chain = _mlp_chain(1, n_layers=1, hidden=80, ffn=200)
    cfg = dict(mp.DEFAULTS, C=16, BK=32, BO=16, DT=0)
    want = mp.reference(chain.h0, chain.layers, chain.shape.norm_eps)
    P = chain.grid(cfg)[0]
    for phase in (1, 2):
        if phase == 2:
            chain.parts[P][0, 5].fill_(float("nan"))
        args, kw = chain.ffn_args(0, cfg, phase, 0)
        mp._ffn[(P,)](*args, **kw)
    assert "before it was stored" in chain.problem(chain.hs[0], want)
    assert chain.problem((want * 1.01).to(torch.bfloat16), want) is None
    assert "off the reference" in chain.problem((want * 1.1).to(torch.bfloat16), want)
    out = chain.step("fused", cfg)
    assert chain.problem(out, want) is None
    chain.cnt[-1] = 2
    assert "2 spins gave up" in chain.problem(out, want)


def test_mlp_probe_arm_settings():
    """Arms parse with their defaults filled in; a setting that is not a power of two, an
    unknown key or DT other than 0 or 1 is refused with a one-line message."""
    import click
    mp = _load("mlp_probe")
    assert mp.parse_arm("two") == ("two", {})
    assert mp.parse_arm("fused:C=32,DT=1") == ("fused", dict(mp.DEFAULTS, C=32, DT=1))
    assert mp.parse_arm("split") == ("split", mp.DEFAULTS)
    assert mp.parse_arm("partials:W=8") == ("partials", dict(mp.DEFAULTS, W=8))
    for bad in ("fused:C=48", "fused:Q=4", "fused:DT=2", "two:C=64", "three"):
        with pytest.raises(click.BadParameter):
            mp.parse_arm(bad)


def test_mlp_probe_fused_kernel_compiles_to_its_barrier():
    """Offline for SM 9.0, the one-launch kernel waits once with griddepcontrol.wait, stores
    its partials, then passes a block barrier (every thread's stores done) before the release
    add that counts it, polls with acquire, and loads its weights as 16-byte vectors; the
    two-launch form's first phase has no counter at all."""
    code = (f"import sys; sys.path.insert(0, {str(SCRIPTS)!r}); import mlp_probe as mp\n"
            "import re\n"
            "from microbench.engine.shapes import PRESETS\n"
            "cfg = dict(mp.DEFAULTS, C=64, BK=128, BO=256, W=8, DT=1)\n"
            "for phase in (0, 1):\n"
            "    ptx = mp.compile_offline(PRESETS['llama-1b'], 1, cfg, phase).asm['ptx']\n"
            "    rel = [m.start() for m in re.finditer(r'(atom|red)\\.global\\.gpu\\.release', ptx)]\n"
            "    acq = ptx.count('ld.global.gpu.acquire')\n"
            "    st = ptx.rfind('st.global', 0, rel[0]) if rel else -1\n"
            "    fenced = int(st >= 0 and 'bar.sync' in ptx[st:rel[0]])\n"
            "    print(phase, ptx.count('griddepcontrol.wait'), len(rel), acq,\n"
            "          int(st >= 0), ptx.count('ld.global.v4'), fenced)\n")
    rows = {int(r.split()[0]): [int(v) for v in r.split()[1:]]
            for r in _compiled_offline("-c", code).splitlines()}
    assert rows[0][:4] == [1, 1, 2, 1] and rows[0][4] > 0 and rows[0][5] == 1
    assert rows[1][:3] == [1, 0, 0] and rows[1][4] > 0


@pytest.mark.gpu
def test_mlp_probe_runs_its_arms_on_the_gpu():
    """On the GPU the one-launch kernel's barrier holds (its checked replay finds no partial
    read before it was stored and no spin that gave up) and every arm is timed."""
    from click.testing import CliRunner
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability 9.0 or newer")
    out = CliRunner().invoke(_load("mlp_probe").main,
                             ["--preset", "tiny", "--arm", "two", "--arm", "fused:C=16,BK=64",
                              "--arm", "split:C=16,DT=1", "--rounds", "5"])
    assert out.exit_code == 0, out.output
    assert all(arm in out.output for arm in ("two", "fused:C=16,BK=64", "split:C=16,DT=1"))
    assert "weight GB/s" in out.output


@pytest.mark.parametrize("text,sizes", [("1,16,64", [1, 16, 64]), ("7", [7]), ("512,1", [512, 1])])
def test_queued_step_batch_sizes(text, sizes):
    assert _load("queued_step").parse_batches(text) == sizes


@pytest.mark.parametrize("args,says", [
    (["--bs", "0"], "list of distinct batch sizes in 1..512"),
    (["--bs", "1,1"], "list of distinct batch sizes in 1..512"),
    (["--bs", "513"], "list of distinct batch sizes in 1..512"),
    (["--bs", "a"], "list of distinct batch sizes in 1..512"),
    (["--bs", "1,,4"], "list of distinct batch sizes in 1..512"),
    (["--rounds", "2"], "Invalid value for '--rounds'"),
    (["--preset", "gpt-5"], "Invalid value for '--preset'")])
def test_queued_step_rejects_bad_input(args, says):
    from click.testing import CliRunner
    out = CliRunner().invoke(_load("queued_step").main, args)
    assert out.exit_code == 2 and out.exception.__class__ is SystemExit
    errors = [line for line in out.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and says in errors[0] and args[0] in errors[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_queued_step_says_it_needs_a_gpu():
    from click.testing import CliRunner
    out = CliRunner().invoke(_load("queued_step").main, ["--bs", "1"])
    assert out.exit_code != 0 and "on a CUDA GPU; none is visible" in out.output


def test_queued_step_a_host_too_slow_for_the_sleep_is_a_one_line_error(monkeypatch):
    import contextlib

    from click.testing import CliRunner

    from microbench.bench import hostcpu
    qs = _load("queued_step")

    def too_slow(*args):
        raise RuntimeError("the host took 2000000 us to enqueue 1 calls, longer than the "
                           "longest sleep kernel tried")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hostcpu, "on_quick_cpu", contextlib.nullcontext)
    monkeypatch.setattr(qs, "build", lambda *a: (None, None))
    monkeypatch.setattr(qs, "tiny_gap_us", lambda: (1.5, 0.75))
    monkeypatch.setattr(qs, "measure", too_slow)
    out = CliRunner().invoke(qs.main, ["--bs", "4"])
    assert out.exit_code == 1 and out.exception.__class__ is SystemExit
    assert out.output.splitlines() == ["Error: bs 4: the host took 2000000 us to enqueue 1 calls, "
                                       "longer than the longest sleep kernel tried"]


def test_queued_step_logits_check_catches_a_step_that_is_not_the_graphs():
    qs = _load("queued_step")
    g = torch.Generator().manual_seed(3)
    graph = (torch.randn(3, 37, generator=g) * 4).to(torch.bfloat16)
    assert qs.logits_match(graph, graph.clone()) is None
    # a bf16 rounding's worth apart still matches; one row from another step does not
    assert qs.logits_match(graph, (graph.float() * (1 + 2 ** -8)).to(torch.bfloat16)) is None
    other = graph.clone()
    other[1] = (torch.randn(37, generator=g) * 4).to(torch.bfloat16)
    assert "logits differ by" in qs.logits_match(graph, other)
    assert "shape (2, 37)" in qs.logits_match(graph, graph[:2])
    nan = graph.clone()
    nan[2, 5] = float("nan")
    assert qs.logits_match(graph, nan) == "logits not finite"


def test_queued_step_report_takes_the_paired_differences_per_kernel():
    qs = _load("queued_step")
    # the graph arm drifts from round to round; every round's queued step takes 100 us more but
    # the first, 700 more: paired, the median difference is 100 us, where the arms' medians
    # (1350 and 1550 us) are 200 apart
    graph = [1000.0 + 100.0 * i for i in range(8)]
    queued = [g + (700.0 if i == 0 else 100.0) for i, g in enumerate(graph)]
    paced = [q + 200.0 for q in queued]
    r = dict(kernels=100, graph=graph, queued=queued, paced=paced, host_us=[300.0] * 8)
    lines = qs.report("llama-8b", 64, 512, r, (2.0, 1.25))
    text = "\n".join(lines)
    assert lines[0].startswith("llama-8b bs 64: 100 kernels a step, context 512, 8 rounds")
    assert "queued - graph: 100.0 us" in text and "1.00 us a kernel" in text
    assert "paced - queued: 200.0 us" in text and "2.00 us a kernel" in text
    assert "gap 0.75 us a kernel" in text


@pytest.mark.gpu
def test_queued_step_runs_on_a_gpu():
    """On a GPU the tiny preset's bound steps give their graphs' logits (the script stops
    otherwise), and each arm is timed: the queued eager step takes the GPU longer than its
    graph, and the step paced by the host longer still."""
    from click.testing import CliRunner
    out = CliRunner().invoke(_load("queued_step").main, ["--preset", "tiny", "--bs", "1,3",
                                                         "--rounds", "6"])
    assert out.exit_code == 0, out.output
    assert out.output.count("the bound step's logits are the graph's") == 2
    for block in out.output.split("tiny bs ")[1:]:
        n = int(block.split(":")[1].split()[0])
        us = {line.split()[0]: float(line.split()[1]) for line in block.splitlines()[1:4]}
        assert set(us) == {"graph", "queued", "paced"}
        # a stream launch costs the GPU more than a graph node; the host's pacing adds to that
        assert us["paced"] > us["queued"] > us["graph"] > 0, (n, us)
