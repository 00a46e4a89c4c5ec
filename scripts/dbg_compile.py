"""Debug: the compile arm alone on opt-125m (no Triton graphs), then with them."""
import sys
import torch
from microbench.config import PRESETS
from microbench.decoder import ToyDecoder
from microbench import arms
dec = ToyDecoder(PRESETS[sys.argv[1] if len(sys.argv) > 1 else "opt-125m"], max_batch=8, max_seq=576, device="cuda")
dec.fill_cache(512)
twin = arms.torch_twin(dec)
step = arms.CompiledStep(twin)
for bs in (1, 4):
    t = torch.zeros(bs, dtype=torch.long, device="cuda"); p = torch.full((bs,), 512, device="cuda"); s = torch.arange(bs, device="cuda")
    step.prepare(t, p, s)
    out = step(t, p, s).float(); torch.cuda.synchronize()
    want = twin.step(t, p, s).float()
    print(bs, "ok", step.setup_s[bs], (out - want).abs().max().item(), "skips", step.skips, flush=True)
