"""microbench kernels: a matmul case makes one call per weight copy in its graph."""
from microbench.bench.kernel_bench import REPS, _Streamed
from microbench.bench.timing import STREAM_BYTES, WeightCycle, stream_copies


def test_a_streamed_matmul_graph_calls_every_copy():
    ws = list(range(7))
    cyc = WeightCycle(ws)
    few = _Streamed(cyc.next, copies=3)
    many = _Streamed(cyc.next, copies=REPS * 4)
    assert few.calls == REPS and many.calls == REPS * 4
    seen = [few() for _ in range(len(ws))]
    assert sorted(seen) == ws      # the calls walk every copy before repeating one


def test_stream_copies_make_the_stream_bytes():
    assert stream_copies(STREAM_BYTES * 2) == 1
    q = STREAM_BYTES // 4                                  # exact: 200 MiB is 4 * 50 MiB
    assert stream_copies(q) == 4 and stream_copies(q + 1) == 4 and stream_copies(q - 1) == 5
    assert stream_copies(1 << 20) * (1 << 20) >= STREAM_BYTES
