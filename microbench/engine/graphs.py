"""One captured size of one routine: what it owns (GraphEntry), how its graphs are recorded
from the decoder, and how a step replays them. The graph runner (engine/runner.py) owns the
pool, the static inputs and the choice of entry; these functions take them as arguments.

Routines (engine/modes.py): "full" records the whole step as one graph (or two, split_launch);
"piecewise" records the stretches between attention calls, one graph each, and a replay runs
attention eagerly between them, as vLLM's PIECEWISE mode does. The eager attention calls are
bound when the pieces are recorded (ToyDecoder.bind_attention), as the runner's eager steps are:
a replay pays each attention kernel's launch, not the wrapper's checks and allocations.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class GraphEntry:
    """What one captured size owns: its graph(s), static outputs and captured input addresses."""
    size: int
    graphs: list
    output: torch.Tensor                 # logits [size, vocab], lives in the pool
    pieces: list = field(default_factory=list)   # piecewise: (q, residual) per layer
    attention: list = field(default_factory=list)  # piecewise: each layer's bound attention
    seq_lens: torch.Tensor | None = None
    input_ptrs: tuple = ()
    warmup_s: float = 0.0
    capture_s: float = 0.0
    pool_bytes: int = 0                  # growth of the pool(s) charged to this size
    out_views: dict = field(default_factory=dict)  # bs -> output[:bs], made once
    routine: str = "full"                # "full" or "piecewise"


def head_layers(n_layers: int) -> int:
    """Layers in the first graph of a split launch: a quarter of the model, long enough on the
    GPU to cover the host's launch of the second graph."""
    return max(1, n_layers // 4)


def record_full(entry: GraphEntry, dec, tokens, positions, slots, pool, stream, split: bool):
    """The whole step as one graph, or (split) as two: the first head_layers(L) layers and the
    rest, replayed back to back."""
    if split:
        head = torch.cuda.CUDAGraph()
        with torch.cuda.graph(head, pool=pool, stream=stream):
            state = dec.step_head(tokens, positions, slots, head_layers(dec.shape.n_layers))
        tail = torch.cuda.CUDAGraph()
        with torch.cuda.graph(tail, pool=pool if pool is not None else head.pool(), stream=stream):
            entry.output = dec.step_tail(state, tokens, positions, slots)
        entry.graphs += [head, tail]
        entry.pieces.append(state)     # the tensors the tail graph reads stay alive
        return
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=pool, stream=stream):
        entry.output = dec.step(tokens, positions, slots)
    entry.graphs.append(g)


def record_pieces(entry: GraphEntry, dec, tokens, positions, slots, attn_out, pool, stream):
    """One graph per stretch between attention calls; attention runs eagerly in between (here
    too, so each piece is recorded on the inputs it will replay with). attn_out: the attention
    output rows [size, H, D], outside the pool."""
    res = None
    for i in range(dec.n_pieces):
        g = torch.cuda.CUDAGraph()
        # Each piece after the first may share the first piece's pool: one pool per size
        # with pool="separate", one for everything with pool="shared".
        p = pool if pool is not None else (entry.graphs[0].pool() if entry.graphs else None)
        with torch.cuda.graph(g, pool=p, stream=stream):
            if i == 0:
                h, entry.seq_lens = dec.embed_inputs(tokens, positions)
                out = dec.piece(0, tokens, positions, slots, h=h)
            else:
                out = dec.piece(i, tokens, positions, slots, o=attn_out, residual=res)
        entry.graphs.append(g)
        if i == dec.n_pieces - 1:
            entry.output = out
        else:
            q, res = out
            entry.pieces.append((q, res))
            entry.attention.append(dec.bind_attention(i, q, slots, entry.seq_lens, attn_out))


def replay_pieces(entry: GraphEntry, dec, slots, attn_out):
    """Run one piecewise step: its pieces with eager attention between them (slots and
    attn_out: the static slot row and attention output, entry.size rows each). A full entry's
    replay is its graphs' replay() in order (the runner calls them itself: no extra call on
    the host's critical path)."""
    entry.graphs[0].replay()
    for layer, (q, _) in enumerate(entry.pieces):
        launches = entry.attention[layer]
        if launches is None:      # the torch backend: no bound launches
            dec.attention(layer, q, slots, entry.seq_lens, out=attn_out)
        else:
            for fn in launches:
                fn()
        entry.graphs[layer + 1].replay()


def check_addresses(entry: GraphEntry, now: tuple):
    """Raise if the buffers a replay reads outside its pool (`now`: the runner's addresses of
    them today) moved since the entry was captured."""
    if now != entry.input_ptrs:
        moved = [i for i, (a, b) in enumerate(zip(entry.input_ptrs, now)) if a != b]
        raise RuntimeError(f"buffers read by the graph of size {entry.size} moved since capture "
                           f"(positions {moved} of inputs, attention output, KV caches)")
