"""Registers per thread of the skinny matmul's configs, compiled offline (no GPU needed).

usage: python scripts/gemv_regs.py [TABLE.json] [--sm 90] [--rows 1] [--pdl early|late|off]

Compiles kernels/gemv.py's kernel for each entry of a tuned table (default: the H200's) at one
row bucket, for a target compute capability, with the ptxas that ships inside Triton, as the
JIT compiles it at a decode step's launch (16-byte-aligned pointers, and the integer arguments
divisible by 16 marked so, as the JIT's specialisation marks them; the PDL mode given), and
prints each config's registers per thread, its local-memory spill, its shared memory, and how
many of its programs fit on one SM by registers, threads and shared memory (64 K registers,
2048 threads and 228 KB per SM on SM 9.0, 1 KB of it reserved per program). It shows what a
tile costs in occupancy: a config whose programs are few per SM has few weight loads in
flight, and leaves few slots for the next kernel's programs that PDL lets in early."""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REGS_PER_SM, THREADS_PER_SM, MAX_PROGRAMS_PER_SM = 65536, 2048, 32
SHARED_PER_SM, SHARED_RESERVED = 228 * 1024, 1024
PDL = {"off": 0, "early": 1, "late": 2}


def compile_regs(n_rows_w: int, k: int, norm: bool, epi: int, cfg: dict, rows: int, sm: int,
                 pdl: int = 1) -> dict:
    """{regs: per thread, local: spilled bytes, shared: bytes, vector_loads: 16-byte global
    loads in the PTX} of the kernel for a [n_rows_w, k] weight at `rows` rows, launched with PDL
    mode `pdl` (0 off, 1 early, 2 late)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels import gemv
    kern = gemv._gemv_kernel
    sig = {name: "*bf16" for name in ("x_ptr", "nw_ptr", "w_ptr", "r_ptr", "y_ptr")}
    sig.update({name: "i32" for name in ("N", "stride_xb", "stride_wn", "stride_rb", "stride_yb")})
    sig["eps"] = "fp32"
    block_b = max(16 if cfg.get("DOT") else 1, triton.next_power_of_2(rows))
    const = dict(B=rows, K=k, NORM=int(norm), EPI=epi, BLOCK_B=block_b,
                 BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["STAGES"],
                 AHEAD=cfg.get("AHEAD", 0), DOT=cfg.get("DOT", 0), USE_PDL=pdl,
                 DOT_PRECISION="tf32", INTERPRET=False, DEFER=cfg.get("DEFER", 0))
    sig.update({name: "constexpr" for name in const})
    # what the JIT's specialisation marks at a real launch: tensors' data 16-byte aligned, and
    # each integer argument divisible by 16 where it is (N outputs, the row strides K and N)
    n_out = n_rows_w // 2 if epi == 2 else n_rows_w
    ints = dict(N=n_out, stride_xb=k, stride_wn=k, stride_rb=n_out, stride_yb=n_out)
    aligned = ["x_ptr", "nw_ptr", "w_ptr", "r_ptr", "y_ptr"] + [n for n, v in ints.items() if v % 16 == 0]
    attrs = {(kern.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(kern, sig, constexprs={(kern.arg_names.index(n),): v for n, v in const.items()},
                    attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", sm, 32),
                              options={"num_warps": cfg["num_warps"]})
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "gemv.cubin")
        Path(path).write_bytes(compiled.asm["cubin"])
        out = subprocess.run([str(tool), "--dump-resource-usage", path], capture_output=True,
                             text=True, check=True).stdout
    m = re.search(r"REG:(\d+).*LOCAL:(\d+)", out)
    if m is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {out!r}")
    return dict(regs=int(m.group(1)), local=int(m.group(2)), shared=int(compiled.metadata.shared),
                vector_loads=compiled.asm["ptx"].count("ld.global.v4"))


def programs_per_sm(regs: int, warps: int, shared: int = 0) -> int:
    """Resident programs per SM by registers (allocated per warp in units of 256), threads and
    shared memory."""
    per_warp = -(-regs * 32 // 256) * 256
    return min(MAX_PROGRAMS_PER_SM, REGS_PER_SM // (per_warp * warps),
               THREADS_PER_SM // (32 * warps), SHARED_PER_SM // (shared + SHARED_RESERVED))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", nargs="?", default=str(ROOT / "kernels/configs/gemv_NVIDIA_H200.json"))
    p.add_argument("--sm", type=int, default=90, help="compute capability x10 (default 90)")
    p.add_argument("--rows", type=int, default=1, choices=(1, 2, 4, 8, 16))
    p.add_argument("--pdl", default="early", choices=list(PDL),
                   help="the PDL mode the kernels launch with (default early)")
    a = p.parse_args(argv)
    configs = json.loads(Path(a.table).read_text())["configs"]
    print(f"{'matmul':26} {'config':44} {'regs':>4} {'spill':>5} {'smem':>6} {'progs/SM':>8}")
    for key, buckets in configs.items():
        e = buckets.get(str(a.rows))
        if e is None:
            continue
        f = dict(re.findall(r"(\w+)=(\d+)", key))
        got = compile_regs(int(f["N"]), int(f["K"]), f["norm"] == "1", int(f["epi"]), e,
                           a.rows, a.sm, PDL[a.pdl])
        regs, local, shared = got["regs"], got["local"], got["shared"]
        cfg = (f"BN={e['BLOCK_N']} BK={e['BLOCK_K']} warps={e['num_warps']} "
               f"AHEAD={e.get('AHEAD', 0)} DOT={e.get('DOT', 0)} DEFER={e.get('DEFER', 0)}")
        print(f"{e.get('matmul', key):26} {cfg:44} {regs:4d} {local:5d} {shared:6d} "
              f"{programs_per_sm(regs, e['num_warps'], shared):8d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
