"""The sweep's arms on the CPU: the torch twin shares the decoder's tensors and compiles whole."""
import torch

from microbench.bench.arms import torch_twin
from microbench.bench.inputs import step_inputs
from microbench.engine.decoder import ToyDecoder
from microbench.engine.shapes import PRESETS

TINY = PRESETS["tiny"]


def test_torch_backend_traces_as_one_graph():
    """The compile arm compiles the torch backend's step with fullgraph=True: no graph break
    (no .item(), no data-dependent Python) may hide in the references."""
    dec = ToyDecoder(TINY, backend="triton", max_batch=4, max_seq=32, dtype=torch.float32,
                     device="cpu", seed=0)
    twin = torch_twin(dec)
    assert twin.backend == "torch" and twin.k_cache is dec.k_cache and twin.embed is dec.embed
    torch._dynamo.reset()
    step = torch.compile(twin.step, fullgraph=True, dynamic=False, backend="eager")
    t, p, s = step_inputs(TINY.vocab, 2, 5, "cpu", torch.Generator().manual_seed(3), host_tokens=True)
    torch.testing.assert_close(step(t, p, s), twin.step(t, p, s))
    torch._dynamo.reset()
