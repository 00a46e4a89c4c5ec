"""The sweep's arms on the CPU: the torch twin shares the decoder's tensors and compiles whole."""
import pytest
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


def test_torch_compile_arm_registers_and_parses():
    from microbench.bench import arms
    from microbench.bench.sweep_config import SweepConfig
    assert "torch-compile" in arms.EXTRA_ARMS and "torch-compile" in arms.COMPILED_ARMS
    assert arms.key("torch-compile") == "torch_compile"
    cfg = SweepConfig(arms=arms.parse_arms("eager,graph,torch-compile".split(","))).validate()
    assert cfg.arms == ("eager", "graph", "torch-compile")
    # no graph runner needed: it makes its own graphs
    SweepConfig(mode="none", arms=("torch-compile",)).validate()
    with pytest.raises(ValueError, match="not a compiled arm"):
        arms.compiled_arm("torch-graph", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU this would run a sweep")
def test_cli_takes_the_torch_compile_arm(tmp_path):
    """The CLI parses the arm and gets as far as asking for a GPU (none here)."""
    from click.testing import CliRunner

    from microbench.cli import main
    r = CliRunner().invoke(main, ["sweep", "--arms", "eager,graph,torch-compile",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 1 and "needs a CUDA GPU" in r.output and "--arms" not in r.output


@pytest.mark.gpu
def test_torch_compile_arm_graphs_and_agrees_with_eager():
    """On a GPU: the peer under reduce-overhead launches a CUDA graph with nothing skipped, and
    its bf16 logits are within rounding of the Triton decoder's (the tiny preset's |logits|
    ~ 50: bf16 ulp 0.25)."""
    from microbench.bench import arms
    dec = ToyDecoder(TINY, backend="triton", max_batch=4, max_seq=64, dtype=torch.bfloat16,
                     device="cuda", seed=0)
    dec.fill_cache(40)
    torch._dynamo.reset()
    step = arms.compiled_arm("torch-compile", dec)
    for bs in (1, 3):
        t, p, s = step_inputs(TINY.vocab, bs, 40, "cuda", torch.Generator("cuda").manual_seed(bs))
        step.prepare(t, p, s)
        assert step.setup_s[bs] > 0
        assert arms.launched_graph(lambda: step(t, p, s))
        assert (step(t, p, s).float() - dec.step(t, p, s).float()).abs().max() < 0.5
    assert step.skips == 0
    torch._dynamo.reset()
