"""Each row of a saved TP sweep against the model's prediction for it: eager and graph step
(each with the prediction's relative error, `off`), speedup, the speedup's error, and every rank's host time of one eager step sampled beside its
steps (the model prices the row with the slowest rank's host costs).

    python scripts/tp_model_rows.py results/h200/<run folder>
"""
import json
import sys
from pathlib import Path


def main(folder: str):
    run = json.loads((Path(folder) / "run.json").read_text())
    print("bs    eager  pred eager  off     graph  pred graph  off    speedup  pred  error  "
          "host per rank (us)")
    for w in run["rows"]:
        hosts = ", ".join(f"{h:.1f}" for h in w.get("eager_host_us_per_rank") or [])
        e, pe = w["eager_step_us"], w["predicted_eager_step_us"]
        g, pg = w["graph_step_us"], w["predicted_graph_step_us"]
        print(f"{w['bs']:>2} {e:8.1f} {pe:10.1f} {pe / e - 1:+6.1%} {g:8.1f} {pg:10.1f} "
              f"{pg / g - 1:+6.1%} {w['speedup']:7.3f} {w['predicted_speedup']:6.3f} "
              f"{w['speedup_error']:+6.1%}  {hosts}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/tp_model_rows.py RUN_FOLDER")
    main(sys.argv[1])
