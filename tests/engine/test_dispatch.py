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
