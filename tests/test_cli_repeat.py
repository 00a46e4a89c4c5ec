"""`microbench sweep --repeat K` on the CPU: each child's command line, and K fake processes
(writing synthetic runs where a child would) merged into one run."""
import json
import subprocess
from pathlib import Path

import pytest

from microbench.bench import hostcpu
from microbench.cli import sweep
from microbench.cli_repeat import child_argv, run_repeats


def params(**over):
    p = sweep.make_context("sweep", ["--bs", "1,4", "--arms", "eager,graph", "--split-launch",
                                     "--repeat", "3", "--json", "--out", "/x"])
    p.params.update(over)
    return p.params


def test_child_argv_repeats_every_option_but_its_own(tmp_path):
    # the child's --out is a directory to be; a fixed path could exist as a file on the host
    out = str(tmp_path / "p1")
    argv = child_argv(sweep, params(), out)
    assert argv[0] == "sweep" and argv[-5:] == ["--repeat", "1", "--out", out, "--quiet"]
    assert argv[argv.index("--bs") + 1] == "1,4" and "--split-launch" in argv
    assert argv[argv.index("--arms") + 1] == "eager,graph"
    assert argv.count("--repeat") == 1 and "--json" not in argv and "/x" not in argv
    assert "--no-tp1" not in argv and "--no-pin-cpu" not in argv   # unset flags stay out
    assert "--no-pin-cpu" in child_argv(sweep, params(no_pin_cpu=True), out)
    # the child's own parse gives the parent's options back
    child = sweep.make_context("sweep", argv[1:])
    for k in ("bs", "preset", "mode", "ladder", "context", "time_budget", "steps", "split_launch"):
        assert child.params[k] == params()[k], k


def fake_process(speedups, refs=None, slow=None):
    """A subprocess.run stand-in: the n-th call writes a run whose rows have speedups[n] (and,
    with refs, a host pin whose reference probe time is refs[n]; with slow, slow[n] rounds of
    its first row sampled on a slow host); `envs` keeps the host reference each child was
    given."""
    calls, envs = [], []

    def run(cmd, **kw):
        assert kw.keys() == {"stdout", "env"}
        assert kw["stdout"] == subprocess.DEVNULL          # a child's own table is not shown
        envs.append(kw["env"].get(hostcpu.REF_ENV))
        out = Path(cmd[cmd.index("--out") + 1])
        n = len(calls)
        calls.append(cmd)
        ref = None if refs is None else refs[n]
        per_row = ref if isinstance(ref, tuple) else (ref, ref)
        rows = [dict(bs=b, speedup=s, **({} if r is None else
                                         dict(host_pin=dict(checks=3, reference_us=r))))
                for b, s, r in zip((1, 4), speedups[n], per_row)]
        if slow and rows:
            rows[0]["host_pin"] = dict(checks=3, reference_us=100.0, slow_rounds=slow[n])
        if rows:
            (out / "sweep-fake").mkdir(parents=True)
            (out / "sweep-fake" / "run.json").write_text(json.dumps(dict(
                kind="sweep", rows=rows, shape_check=dict(held=True), process=n)))
        return type("Done", (), dict(returncode=0 if rows else 1))()
    run.envs = envs
    return run, calls


def test_run_repeats_merges_fresh_processes():
    run, calls = fake_process([(2.0, 1.5), (2.2, 1.5), (2.1, 1.6)])
    said = []
    merged = run_repeats(sweep, params(), 3, said.append, run=run)
    assert len(calls) == 3 and all(c[1] == "-c" and "--repeat" in c for c in calls)
    assert merged["process"] == 0                          # the first process's run
    assert merged["rows"][0]["speedup_repeats"] == [2.0, 2.2, 2.1]
    assert merged["rows"][1]["speedup_repeat_spread"] == pytest.approx(1.6 / 1.5 - 1)
    assert merged["repeats"]["k"] == 3 and said[0] == "repeat 1 of 3: a fresh process"
    # the merged run records the user's command, not a child's (those stay under repeats)
    assert "--repeat 1" not in merged["env"]["command"]
    assert len(merged["repeats"]["commands"]) == 3


def test_each_child_is_given_the_quickest_host_reference_so_far(monkeypatch):
    """The parent times the CPUs (its own reference), then each child is told the lowest
    reference seen: the parent's or an earlier child's, so a child that starts on a slow host
    waits for it rather than taking the slow host as its own reference."""
    monkeypatch.setattr(hostcpu, "HOST", hostcpu.Reference())
    monkeypatch.setattr(hostcpu, "on_quick_cpu", fake_quick_cpu(120.0))
    run, _ = fake_process([(2.0, 1.5), (2.1, 1.5), (2.0, 1.6)], refs=[110.0, 130.0, 125.0])
    run_repeats(sweep, params(), 3, run=run)
    assert run.envs == ["120.000", "110.000", "110.000"]
    # --no-pin-cpu: the parent times nothing and the children are told nothing
    monkeypatch.setattr(hostcpu, "HOST", hostcpu.Reference())
    run, _ = fake_process([(2.0, 1.5), (2.1, 1.5)])
    run_repeats(sweep, params(no_pin_cpu=True), 2, run=run)
    assert run.envs == [None, None]


def fake_quick_cpu(us, *more):
    """hostcpu.on_quick_cpu's stand-in: when enabled, its choice adds `us` to the reference,
    and each further choice of the pin it yields the next of `more` (then `us` again)."""
    from contextlib import contextmanager

    class Pin:
        def __init__(self):
            self.left = list(more)

        def choose(self):
            hostcpu.HOST.update(self.left.pop(0) if self.left else us)

    @contextmanager
    def quick(enabled=True):
        if enabled:
            hostcpu.HOST.update(us)
        yield Pin() if enabled else None
    return quick


def test_a_childs_reference_is_its_last_rows(monkeypatch):
    """A child's first row rests on one or two probes (near their luck); its last row's
    reference is the quartile of all of them, and that is what the next child is told."""
    monkeypatch.setattr(hostcpu, "HOST", hostcpu.Reference())
    monkeypatch.setattr(hostcpu, "on_quick_cpu", fake_quick_cpu(120.0))
    run, _ = fake_process([(2.0, 1.5), (2.1, 1.5)], refs=[(80.0, 100.0), (95.0, 105.0)])
    run_repeats(sweep, params(), 2, run=run)
    assert run.envs == ["120.000", "100.000"]


def test_the_parents_reference_is_the_quartile_of_its_scans(monkeypatch):
    """A first scan on a slow host does not become the children's reference: the parent scans
    PARENT_SCANS times and passes their lower quartile."""
    from microbench import cli_repeat
    assert cli_repeat.PARENT_SCANS == 5
    monkeypatch.setattr(hostcpu, "HOST", hostcpu.Reference())
    monkeypatch.setattr(hostcpu, "on_quick_cpu", fake_quick_cpu(300.0, 120.0, 118.0, 121.0, 119.0))
    run, _ = fake_process([(2.0, 1.5)], refs=[200.0])
    run_repeats(sweep, params(), 1, run=run)
    assert run.envs == ["119.000"]


def test_a_process_that_writes_nothing_is_an_error():
    run, _ = fake_process([(2.0, 1.5), ()])
    with pytest.raises(RuntimeError, match="process 2 of 2 failed"):
        run_repeats(sweep, params(), 2, run=run)


def test_a_process_that_fails_after_saving_rows_is_not_merged():
    """A process that crashed mid-sweep may have saved its partial rows: its exit status
    fails the repeat rather than letting those rows into the merge."""
    run, _ = fake_process([(2.0, 1.5), (2.1, 1.5)])

    def failing(cmd, **kw):
        done = run(cmd, **kw)
        return type("Done", (), dict(returncode=1 if "process-2" in " ".join(cmd) else done.returncode))()
    with pytest.raises(RuntimeError, match="process 2 of 2 failed .exit status 1.$"):
        run_repeats(sweep, params(), 2, run=failing)



# ---- --repeat with --tp: the TP sweep in K fresh processes ---------------------------------
def tp_process(speedups):
    """A subprocess.run stand-in for `microbench sweep --tp 2 ... --repeat 1`: the n-th call
    writes a TP run into a folder of its --out (as cli_tp's saver does) whose rows at bs 1, 4
    and 16 have speedups[n], each with its paired ratios and interval (stats.paired_ratio) and
    the fields a TP row holds (a TP row's probe loop is not timed: loop_us null), judged by
    check_shape as the TP sweep judges."""
    from microbench.stats import check_shape, paired_ratio
    calls = []

    def run(cmd, **kw):
        out = Path(cmd[cmd.index("--out") + 1])
        n = len(calls)
        calls.append(cmd)
        rows = []
        for b, s in zip((1, 4, 16), speedups[n]):
            graph = [4000.0 + b + n + i % 5 for i in range(24)]      # paired, a little noise
            eager = [g * s * (1 + 0.002 * ((i * 7) % 5 - 2)) for i, g in enumerate(graph)]
            pr = paired_ratio(eager, graph)
            rows.append(dict(bs=b, padded_bs=b, ran_as="full", eager_step_us=graph[0] * s,
                             eager_p20=graph[0] * s * 0.99, eager_p80=graph[0] * s * 1.01,
                             eager_n=24, graph_step_us=graph[0], graph_p20=graph[0] - 1,
                             graph_p80=graph[0] + 1, graph_n=24, speedup=pr["median"],
                             speedup_ci=pr["ci"], speedup_ratios=[e / g for e, g in zip(eager, graph)],
                             stable=True, max_abs_diff=0.0, eager_host_us=2000.0 + 100 * n,
                             eager_step_us_max_rank=graph[0] * s * (1.01 + 0.01 * n),
                             host_pin=dict(cpus_used=1, moves=0, checks=0, loop_us=None),
                             tp1_eager_step_us=5000.0, tp1_graph_step_us=4300.0,
                             tp_gain_graph=4300.0 / graph[0], allreduce_share_graph=0.1,
                             predicted_speedup=s * 1.02, speedup_error=0.02))
        folder = out / f"20261201-00000{n}-sweep-llama-8b-tp2-h200"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps(dict(
            kind="sweep-tp", config=dict(tp=2, preset="llama-8b", dtype="bfloat16", mode="full",
                                         ladder="vllm", context=512, bs=[1, 4, 16], steps=10,
                                         time_budget=1.0, backend="triton", compare_tp1=False),
            env=dict(gpu="NVIDIA H200", nccl="2.27.3", torch="2.11.0+cu130", triton="3.6.0",
                     command="microbench sweep"),
            ladder=[1, 2, 4, 8, 16], rows=rows, shape_check=check_shape(rows),
            capture_s_per_rank=[3.0, 3.1], pool_bytes_per_rank=[1 << 20, 1 << 20],
            tp1=dict(skipped="--no-tp1"), wall_s=60.0)))
        return type("Done", (), dict(returncode=0))()
    return run, calls


def sweep_tp_repeat(monkeypatch, tmp_path, speedups):
    """`microbench sweep --tp 2 --preset llama-8b --bs 1,4,16 --no-tp1 --repeat 3` on the CPU,
    its processes the stand-ins above; returns (exit code, output, saved run, its folder, the
    processes' commands)."""
    import functools

    from click.testing import CliRunner

    import microbench.cli_repeat as cr
    from microbench.cli import main
    fake, calls = tp_process(speedups)
    monkeypatch.setattr("microbench.cli.require_cuda", lambda name: None)
    monkeypatch.setattr(cr, "run_repeats", functools.partial(cr.run_repeats, run=fake))
    r = CliRunner().invoke(main, ["sweep", "--tp", "2", "--preset", "llama-8b", "--bs", "1,4,16",
                                  "--no-tp1", "--repeat", "3", "--out", str(tmp_path)])
    saved = sorted(tmp_path.glob("*/run.json"))
    return (r.exit_code, r.output, json.loads(saved[0].read_text()) if saved else None,
            saved[0].parent if saved else None, calls)


def test_repeat_under_tp_merges_tp_processes(monkeypatch, tmp_path):
    from microbench.report.record import load_run
    from microbench.report.render import render_run
    code, out, saved, folder, calls = sweep_tp_repeat(
        monkeypatch, tmp_path, [(1.30, 1.10, 1.02), (1.20, 1.12, 1.01), (1.25, 1.08, 1.03)])
    assert code == 0, out
    # each process is the TP sweep, tp1 comparison off as the user asked, one repeat each
    assert all(c[c.index("--tp") + 1] == "2" and "--no-tp1" in c and
               c[c.index("--repeat") + 1] == "1" for c in calls) and len(calls) == 3
    assert saved["kind"] == "sweep-tp" and "llama-8b-tp2" in folder.name
    assert [round(s, 2) for s in saved["rows"][0]["speedup_repeats"]] == [1.30, 1.20, 1.25]
    assert saved["rows"][0]["repeat_process"] == 3        # the median process at bs 1
    assert saved["repeats"]["k"] == 3 and saved["rows"][0]["speedup_repeats_ci"]
    assert saved["shape_check"]["held"] is True
    assert next(l for l in out.splitlines() if "llama-8b at TP 2" in l).startswith("2 x NVIDIA H200")
    assert "repeat spread (CI)" in out and "95% CI" in out
    assert ("--repeat 3: speedups of 3 fresh processes run one after another, worst spread 8.3%"
            in out)
    assert "probe loop" not in out                         # a TP row's is not timed
    assert "eager against graph, the graphs alone: held" in out
    # the footer's per-run lines are process 1's, as the repeat line says: its host time and
    # its slowest rank (1.0% above), though bs 1's row comes from process 3 (1.03% above)
    assert "in place): bs 1 2000 us; bs 4 2000 us; bs 16 2000 us" in out
    assert "above rank 0's by at most 1.0%" in out
    # the saved run is a valid TP run: `microbench show` prints what the sweep printed
    assert render_run(load_run(folder)) in out


def test_repeat_under_tp_judges_the_shape_on_the_merged_rows(monkeypatch, tmp_path):
    """Process 1 rises (NOT held); processes 2 and 3 fade, so the merged rows (each batch's
    median process) fade: held, though process 1's own check did not. Then every process
    rises: NOT held on the merged rows too."""
    code, out, saved, _, _ = sweep_tp_repeat(
        monkeypatch, tmp_path / "a", [(1.02, 1.10, 1.30), (1.30, 1.10, 1.02), (1.29, 1.11, 1.03)])
    assert code == 0, out
    assert saved["repeats"]["shape_held"] == [False, True, True]
    assert saved["shape_check"]["held"] is True
    assert "the graphs alone: held" in out and "shape held in 2 of 3" in out
    code, out, saved, _, _ = sweep_tp_repeat(
        monkeypatch, tmp_path / "b", [(1.02, 1.10, 1.30), (1.01, 1.12, 1.31), (1.03, 1.09, 1.29)])
    assert code == 0, out
    assert saved["shape_check"]["held"] is False
    assert "the graphs alone: NOT held" in out and "shape held in 0 of 3" in out


def test_repeat_under_torchrun_is_a_usage_error(monkeypatch):
    from click.testing import CliRunner

    from microbench.cli import main
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = CliRunner().invoke(main, ["sweep", "--tp", "2", "--preset", "llama-8b", "--repeat", "2"])
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "--repeat: not under torchrun" in lines[0]


def test_a_process_sampled_on_a_slow_host_is_replaced_by_another():
    """A child whose wait for a slow host ran out (rounds sampled on it, as in a llama-1b
    --repeat 3 on the H200, where a process that sampled 56 rounds on a slow host at bs 1 read
    1.50 at bs 4 and the others 1.07) is run again in a fresh process; the merge keeps the
    others, and says which it replaced and why."""
    from microbench.report.tables import repeat_lines
    run, calls = fake_process([(1.07, 1.07), (1.51, 1.50), (1.09, 1.06), (1.08, 1.07)],
                              slow=[0, 56, 0, 0])
    said = []
    merged = run_repeats(sweep, params(), 3, said.append, run=run)
    assert len(calls) == 4 and merged["rows"][0]["speedup_repeats"] == [1.07, 1.09, 1.08]
    assert merged["repeats"]["kept"] == [1, 3, 4]
    assert merged["repeats"]["replaced"] == [dict(process=2, slow_rows=[dict(bs=1, slow_rounds=56)])]
    assert any("process 2 sampled on a slow host" in line for line in said)
    lines = repeat_lines(dict(merged, repeats=dict(merged["repeats"], max_spread=0.02)))
    assert any(line.startswith("replaced, sampled on a slow host after its wait ran out: "
                               "process 2 (bs 1: 56 rounds); kept processes 1, 3, 4")
               for line in lines)
    # the rows name the processes as they started: the merged bs 1 row is the third kept one
    assert merged["rows"][0]["repeat_process"] == 3
    assert any("bs 1 from process 4" in line for line in lines)


def test_slow_rounds_the_quiet_rule_dropped_replace_no_process():
    """Under the quiet rule a round on a slow host is not quick around and is dropped with the
    others: a row that kept only quick rounds describes the quick host, and its process is
    kept (at 0ead4fa one such process was replaced, and its replacement ran alone, minutes
    later). A row that fell back to every round keeps the slow ones, and is replaced."""
    from microbench.cli_repeat import slow_rows
    pin = dict(checks=30, reference_us=104.8, slow_rounds=12, quiet_tol=1.04, rounds=40,
               quiet_rounds=20)
    assert slow_rows(dict(rows=[dict(bs=4, host_pin=pin)])) == []
    assert slow_rows(dict(rows=[dict(bs=4, host_pin=dict(pin, quiet_fallback=True))])) == [
        dict(bs=4, slow_rounds=12)]
    # every round counted (MICROBENCH_HOST_QUIET=0, or a run from before the rule)
    assert slow_rows(dict(rows=[dict(bs=4, host_pin=dict(pin, quiet_tol=None))])) == [
        dict(bs=4, slow_rounds=12)]
    assert slow_rows(dict(rows=[dict(bs=1), dict(bs=4, host_pin=dict(slow_rounds=3))])) == [
        dict(bs=4, slow_rounds=3)]


def test_replacements_stop_when_no_more_processes_are_left_to_reach_k():
    """With every process on a slow host, EXTRA of them are replaced and the last K kept, as
    they are: the merge still has K processes and lists the replaced."""
    from microbench import cli_repeat
    n = 3 + cli_repeat.EXTRA
    run, calls = fake_process([(2.0 + i / 10, 1.5) for i in range(n)], slow=[5] * n)
    merged = run_repeats(sweep, params(), 3, run=run)
    assert len(calls) == n and merged["repeats"]["kept"] == list(range(cli_repeat.EXTRA + 1, n + 1))
    assert [x["process"] for x in merged["repeats"]["replaced"]] == list(range(1, cli_repeat.EXTRA + 1))
    # the kept ones are flagged, in the run and in the footer
    assert [x["process"] for x in merged["repeats"]["slow_kept"]] == merged["repeats"]["kept"]
    from microbench.report.tables import repeat_lines
    lines = repeat_lines(dict(merged, repeats=dict(merged["repeats"], max_spread=0.1)))
    assert any(line.startswith("kept, no tries left, sampled on a slow host after its wait ran "
                               f"out: process {cli_repeat.EXTRA + 1} (bs 1: 5 rounds)")
               for line in lines)
    # a quick host throughout: K processes, none replaced
    run, calls = fake_process([(2.0, 1.5)] * 3, slow=[0, 0, 0])
    merged = run_repeats(sweep, params(), 3, run=run)
    assert len(calls) == 3 and merged["repeats"]["replaced"] == [] and merged["repeats"]["kept"] == [1, 2, 3]
    assert merged["repeats"]["slow_kept"] == []


# ---- --repeat-mode interleaved: the processes still needed start together -----------------
def fake_turns(run):
    """bench.turns.run_in_turns' stand-in over fake_process's `run`: each group's processes
    run (one after another here), and `groups` keeps each group's process count."""
    groups = []

    def in_turns(cmds, envs, on_turn=None):
        groups.append(len(cmds))
        for j in range(len(cmds)):
            on_turn(j, "build")
        return [run(c, stdout=subprocess.DEVNULL, env=e).returncode for c, e in zip(cmds, envs)]
    in_turns.groups = groups
    return in_turns


def test_interleaved_processes_start_together_and_replacements_after(monkeypatch):
    """Interleaved, the K processes are one group, all told the parent's host reference; one
    sampled on a slow host is replaced by a process started once they have all finished."""
    from microbench.report.tables import repeat_lines
    monkeypatch.setattr(hostcpu, "HOST", hostcpu.Reference())
    monkeypatch.setattr(hostcpu, "on_quick_cpu", fake_quick_cpu(120.0))
    run, calls = fake_process([(1.07, 1.07), (1.51, 1.50), (1.09, 1.06), (1.08, 1.07)],
                              refs=[110.0, 100.0, 105.0, 90.0], slow=[0, 56, 0, 0])
    in_turns = fake_turns(run)
    said = []
    merged = run_repeats(sweep, params(), 3, said.append, run=None, mode="interleaved",
                         in_turns=in_turns)
    assert in_turns.groups == [3, 1] and len(calls) == 4
    # the group shares the parent's reference; the replacement gets the lowest seen since
    assert run.envs == ["120.000", "120.000", "120.000", "100.000"]
    assert merged["repeats"]["kept"] == [1, 3, 4] and merged["repeats"]["mode"] == "interleaved"
    assert [x["process"] for x in merged["repeats"]["replaced"]] == [2]
    assert said[0] == "repeat: 3 fresh processes at once, taking the GPU in turns"
    assert "process 3: build" in said
    assert "repeat: a fresh process (process 4, 1 replaced)" in said
    assert merged["repeats"]["turn_wait_s"] == [None, None, None]   # the fakes record none
    lines = repeat_lines(dict(merged, repeats=dict(merged["repeats"], max_spread=0.02)))
    assert lines[0].startswith("--repeat 3: speedups of 3 fresh processes taking the GPU in "
                               "turns, worst spread 2.0%")


@pytest.mark.parametrize("slow", [[0, 0, 0, 0, 0], [5, 0, 0, 0, 0], [0, 5, 5, 0, 0],
                                  [5, 5, 5, 0, 0], [5, 5, 5, 5, 5], [0, 0, 5, 5, 0],
                                  [5, 0, 5, 0, 5]])
def test_interleaved_replaces_the_processes_sequential_would(slow):
    """Whichever processes sample on a slow host, groups started together (three, then the
    tries still needed) replace and keep the same processes as running them one after another
    does, and run as many."""
    from microbench import cli_repeat
    assert len(slow) == 3 + cli_repeat.EXTRA
    speedups = [(2.0 + i / 10, 1.5) for i in range(len(slow))]
    seq_run, seq_calls = fake_process(speedups, slow=slow)
    seq = run_repeats(sweep, params(), 3, run=seq_run)
    run, calls = fake_process(speedups, slow=slow)
    in_turns = fake_turns(run)
    inter = run_repeats(sweep, params(), 3, run=None, mode="interleaved", in_turns=in_turns)
    assert len(calls) == len(seq_calls) and sum(in_turns.groups) == len(calls)
    assert in_turns.groups[0] == 3
    for key in ("kept", "replaced", "slow_kept"):
        assert inter["repeats"][key] == seq["repeats"][key], key
    assert inter["rows"][0]["speedup_repeats"] == seq["rows"][0]["speedup_repeats"]


def test_interleaved_names_the_process_that_failed_not_those_it_stopped():
    """A process of a group that fails stops the others (their status None): the error names
    it, and nothing is merged."""
    run, _ = fake_process([(2.0, 1.5)] * 3)

    def in_turns(cmds, envs, on_turn=None):
        for c, e in zip(cmds, envs):
            run(c, stdout=subprocess.DEVNULL, env=e)
        return [None, 3, None]
    with pytest.raises(RuntimeError, match=r"process 2 of 3 failed \(exit status 3\)$"):
        run_repeats(sweep, params(), 3, run=None, mode="interleaved", in_turns=in_turns)


def test_the_cli_interleaves_at_tp1_and_says_when_it_cannot(monkeypatch, tmp_path):
    """The default at TP 1 is interleaved, --repeat-mode sequential is passed on, and
    --repeat-mode without --repeat, or interleaved with --tp, is a one-line usage error."""
    from click.testing import CliRunner

    import microbench.cli_repeat as cr
    from microbench.cli import main
    modes = []

    def fake_repeats(command, params, k, say=None, mode=None):
        modes.append(mode)
        raise RuntimeError("stop here")
    monkeypatch.setattr("microbench.cli.require_cuda", lambda name: None)
    monkeypatch.setattr(cr, "run_repeats", fake_repeats)
    base = ["sweep", "--bs", "1,4", "--out", str(tmp_path)]
    for extra in ([], ["--repeat-mode", "sequential"]):
        r = CliRunner().invoke(main, base + ["--repeat", "2"] + extra)
        assert r.exit_code == 1 and "stop here" in r.output
    # at TP 2 the default is sequential: each process starts its own ranks
    r = CliRunner().invoke(main, base + ["--tp", "2", "--preset", "llama-8b", "--repeat", "2"])
    assert r.exit_code == 1 and "stop here" in r.output
    assert modes == ["interleaved", "sequential", "sequential"]
    for argv, msg in ((["--repeat-mode", "sequential"], "--repeat-mode: only with --repeat 2"),
                      (["--tp", "2", "--preset", "llama-8b", "--repeat", "2", "--repeat-mode",
                        "interleaved"], "--repeat-mode: interleaved not with --tp")):
        r = CliRunner().invoke(main, base + argv)
        lines = [l for l in r.output.splitlines() if l.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and msg in lines[0], r.output
    # the child never gets the option back: it runs alone, at its parent's gates
    assert "--repeat-mode" not in child_argv(sweep, params(repeat_mode="interleaved"), "/p")
