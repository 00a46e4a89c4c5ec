"""Published tables predicted: the fitted launch cost and the predictions pinned, so a change in
the model, the plan or a datasheet figure shows up here."""
import subprocess
import sys

import pytest

from microbench.analysis import published as pub
from microbench.cli import PUBLISHED


def test_published_figures_as_the_write_ups_give_them():
    l4, h200 = pub.TABLES["opt125m-l4"], pub.TABLES["llama8b-h200"]
    # about 2.5x, 1.6x and 1.13x at bs 1, 8 and 64 (seed 001); 29% lower bs-1 latency on the
    # H200, under 1% on the L40S, about 5% on the A100 (seed 003)
    assert [round(r.ratio, 3) for r in l4.rows] == [2.523, 1.596, 1.128]
    assert [round(r.ratio, 3) for r in h200.rows] == [1.391, 1.009, 1.053]
    assert [round(1e3 / r.eager_tok_s, 2) for r in h200.rows[:1]] == [8.10]   # ms per token
    assert [round(1e3 / r.graph_tok_s, 2) for r in h200.rows[:1]] == [5.83]


# (table, fitted launch us, predicted ratio per row); rel 1e-4 catches any change in the model's
# terms, the plan's kernels and bytes, or the datasheet figures
PINNED = [("opt125m-l4", 20.6747, [2.52331, 2.41186, 1.64913]),
          ("llama8b-h200", 13.3741, [1.39060, 1.00210, 1.01018])]


@pytest.mark.parametrize("name, launch_us, ratios", PINNED)
def test_fit_and_predictions_pinned(name, launch_us, ratios):
    res = pub.predict_table(name)
    assert res["launch_us"] == pytest.approx(launch_us, rel=1e-4)
    assert [r["predicted_ratio"] for r in res["rows"]] == pytest.approx(ratios, rel=1e-4)
    fit = res["rows"][0]
    assert fit["role"] == "fit" and fit["error"] == pytest.approx(0, abs=1e-5)
    assert res["host_per_step_us"] == pytest.approx(fit["kernels"] * launch_us, rel=1e-4)


def test_where_the_model_misses_it_names_the_term():
    l4 = pub.predict_table("opt125m-l4")["rows"]
    # the published graphed step moves more bytes per second than the L4's datasheet allows
    assert l4[0]["implied_bw"] == pytest.approx(2.535, rel=1e-3)
    # the fade needs host time both arms pay: the engine's per-step work
    assert l4[1]["both_arms_us"] == pytest.approx(1759, rel=1e-3)
    assert l4[2]["both_arms_us"] == pytest.approx(7701, rel=1e-3)
    assert "both arms" in pub.missing_term(l4[2]) and "datasheet" in pub.missing_term(l4[2])
    h = pub.predict_table("llama8b-h200")["rows"]
    # the A100's gain is more than the model's: its eager step is too cheap
    assert h[2]["eager_short_us"] == pytest.approx(332.9, rel=1e-3)
    assert "too cheap" in pub.missing_term(h[2])
    assert pub.missing_term(h[0]) == "" and pub.missing_term(h[1]) == ""   # fit; within 2%


def test_format_and_errors():
    text = pub.format_table(pub.predict_table("llama8b-h200"))
    assert "A100" in text and "+0.0%" in text and "-4.0%" in text
    with pytest.raises(ValueError, match="unknown published table"):
        pub.predict_table("nope")
    bad = pub.PublishedTable("x", "", "opt-125m", (pub.PublishedRow("L4", 1, 1.0, 100.0, 8),))
    with pytest.raises(ValueError, match="outside"):
        pub.fit_launch_us(bad)


def test_cli_names_and_no_torch():
    assert set(PUBLISHED) == {"all", *pub.TABLES}
    code = ("import sys; from microbench.cli import main\n"
            "try:\n    main(['model', '--published', 'all'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\nassert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "opt125m-l4" in out.stdout and "llama8b-h200" in out.stdout
