"""microbench kernels: a matmul case makes one call per weight copy in its graph."""
from microbench.bench.kernel_bench import REPS, _Cycle, _Streamed


def test_a_streamed_matmul_graph_calls_every_copy():
    ws = list(range(7))
    cyc = _Cycle(ws)
    few = _Streamed(cyc.next, copies=3)
    many = _Streamed(cyc.next, copies=REPS * 4)
    assert few.calls == REPS and many.calls == REPS * 4
    seen = [few() for _ in range(len(ws))]
    assert sorted(seen) == ws      # the calls walk every copy before repeating one
