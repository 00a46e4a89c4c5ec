"""What the probe scripts share: a decoder for bs-1 steps at context 512 and its packed inputs."""
import torch

from microbench.engine.shapes import PRESETS
from microbench.engine.decoder import ToyDecoder
from microbench.bench.sweep import max_seq_for
from microbench.engine.plan import step_bytes

CONTEXT = 512


def bs1_decoder(preset: str, dev, max_batch: int = 1):
    """(decoder with its cache filled to CONTEXT, the packed [3, 1] inputs of a step at position
    CONTEXT in slot 0, the bytes that step must move)."""
    dec = ToyDecoder(PRESETS[preset], max_batch=max_batch, max_seq=max_seq_for(CONTEXT), device=dev)
    dec.fill_cache(CONTEXT)
    x = torch.stack([torch.zeros(1, dtype=torch.long, device=dev),
                     torch.full((1,), CONTEXT, dtype=torch.long, device=dev),
                     torch.zeros(1, dtype=torch.long, device=dev)])
    return dec, x, step_bytes(dec.shape, 1, CONTEXT)
