"""The document of a start-up run (`microbench startup`, bench.startup): one row per process,
cold first, then the cold-against-warm line; from the run dict, live or loaded. And the run's
one-line headline for the results index (report.index)."""
from __future__ import annotations

from microbench.report.formats import Doc, Table

COLUMNS = ["cache", "process s", "import s", "build s", "graph capture s", "compile set-up s",
           "FX cache hit/miss", "AOT cache hit/miss"]


def _s(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _pair(a, b) -> str:
    return "-" if a is None and b is None else f"{a or 0}/{b or 0}"


def startup_doc(run: dict) -> Doc:
    c, env, s = run["config"], run.get("env") or {}, run.get("summary") or {}
    head = (f"GPU {env.get('gpu')} | preset {c['preset']} | {c['dtype']} | arm {c['arm']} | "
            f"bs {','.join(map(str, c['bs']))} | context {c['context']} | torch "
            f"{env.get('torch')} triton {env.get('triton')}")
    rows = [[r["cache"], _s(r["wall_s"]), _s(r.get("import_s")), _s(r.get("build_s")),
             _s(r["capture_s"]), _s(r["compile_s"]),
             _pair(r.get("fxgraph_cache_hit"), r.get("fxgraph_cache_miss")),
             _pair(r.get("autograd_cache_hit"), r.get("autograd_cache_miss"))]
            for r in run["rows"]]
    lines = []
    if "warm_compile_s" in s:
        ratio = s.get("compile_cold_over_warm")
        lines.append(f"compile set-up: {s['cold_compile_s']:.1f} s cold, {s['warm_compile_s']:.1f} "
                     f"s warm" + (f" ({ratio:.1f}x)" if ratio else "")
                     + f"; graph capture: {s['cold_capture_s']:.1f} s cold, "
                       f"{s['warm_capture_s']:.1f} s warm")
    pub = run.get("published")
    if pub:
        lines.append(f"published: {pub['cold_s']:.0f} s cold, {pub['warm_s']:.0f} s warm "
                     f"({pub['source']})")
    lines.append("cold: TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR in a new empty folder; warm: "
                 "the same folder again, in a fresh process")
    return Doc([head, Table(COLUMNS, rows, records=run["rows"], left=1), *lines])


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def startup_headline(run: dict) -> str:
    """The compile set-up and graph capture, cold and (where measured) warm, from the run's
    summary: e.g. 'compile set-up 22.1 s cold, 4.0 s warm; capture 4.9 s cold, 0.6 s warm'."""
    s = run.get("summary") if isinstance(run.get("summary"), dict) else {}
    parts = []
    for what, key in (("compile set-up", "compile_s"), ("capture", "capture_s")):
        cold, warm = _num(s.get(f"cold_{key}")), _num(s.get(f"warm_{key}"))
        if cold is not None:
            parts.append(f"{what} {cold:.1f} s cold" + (f", {warm:.1f} s warm"
                                                         if warm is not None else ""))
    return "; ".join(parts) or "no summary"
