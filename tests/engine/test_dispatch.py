"""The padding dispatcher: the one record of which graphs exist and what each batch pads to."""
import pytest

from microbench.engine.dispatch import PaddingDispatcher
from microbench.engine.ladders import pow2_capture_sizes, vllm_capture_sizes


@pytest.mark.parametrize("bs, want", [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8),
                                      (9, 16), (16, 16), (17, None), (1000, None)])
def test_dispatcher_boundaries(bs, want):
    assert PaddingDispatcher([16, 1, 2, 4, 8]).pad(bs) == want


@pytest.mark.parametrize("bs", [0, -1, -100])
def test_dispatcher_rejects_non_positive(bs):
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        PaddingDispatcher([1, 2]).pad(bs)


def test_dispatcher_padding_and_membership():
    d = PaddingDispatcher(vllm_capture_sizes(max_num_seqs=32))
    assert d.pad(37) == 40 and d.padding(37) == 3
    assert PaddingDispatcher(pow2_capture_sizes(64)).pad(37) == 64
    assert d.padding(1000) == 0 and 40 in d and 37 not in d
    assert PaddingDispatcher([]).pad(1) is None


def test_dispatcher_exact_sizes_only():
    # SGLang's --disable-cuda-graph-padding: only a captured size runs graphed
    d = PaddingDispatcher([1, 2, 4, 8], exact=True)
    assert [d.pad(b) for b in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, None, 4, None, 8, None]
    assert d.padding(3) == 0 and "exact=True" in repr(d)
    assert PaddingDispatcher([1, 2, 4, 8]).pad(3) == 4


# ---- FULL_AND_PIECEWISE: two sets of graphs ------------------------------------------------
FULL, PIECEWISE = [1, 2, 4, 8], [1, 2, 4, 8, 16, 32]   # the full pass capped at 8


@pytest.mark.parametrize("bs, uniform, want", [
    (1, True, ("full", 1)), (3, True, ("full", 4)), (8, True, ("full", 8)),
    (9, True, ("piecewise", 16)),      # pads to 16: no full graph of 16, the piecewise one
    (32, True, ("piecewise", 32)),
    (1, False, ("piecewise", 1)), (3, False, ("piecewise", 4)),   # mixed: never a full graph
    (17, False, ("piecewise", 32)),
    (33, True, ("eager", None)), (33, False, ("eager", None))])
def test_cudagraph_dispatcher_routes_uniform_to_full_and_the_rest_to_piecewise(bs, uniform, want):
    from microbench.engine.dispatch import CudagraphDispatcher
    d = CudagraphDispatcher(FULL, PIECEWISE)
    assert d.dispatch(bs, uniform) == want
    assert d.pad(bs, uniform) == want[1]
    assert d.padding(bs, uniform) == (0 if want[1] is None else want[1] - bs)


def test_cudagraph_dispatcher_pads_once_then_picks_the_routine():
    """As vLLM pads the token count to a capture size, then looks that size up: a size only
    the full pass holds (the piecewise one ran out of memory there) serves uniform batches,
    and a mixed batch padded to it runs eagerly rather than padding further."""
    from microbench.engine.dispatch import CudagraphDispatcher
    d = CudagraphDispatcher([1, 2, 4], [1, 2, 8])
    assert d.sizes == (1, 2, 4, 8) and d.max_size == 8 and 4 in d and 3 not in d
    assert d.dispatch(3, True) == ("full", 4) and d.dispatch(3, False) == ("eager", None)
    assert d.dispatch(5, True) == ("piecewise", 8) == d.dispatch(5, False)
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        d.dispatch(0)
    empty = CudagraphDispatcher()
    assert empty.dispatch(1) == ("eager", None) and empty.max_size == 0
    assert repr(d) == "CudagraphDispatcher(full=[1, 2, 4], piecewise=[1, 2, 8])"
