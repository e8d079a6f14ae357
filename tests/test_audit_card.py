from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from zooscope.report.audit_card import (
    AUDIT_COLUMNS, audit_table, card_blocks, summary_blocks, to_html, to_markdown,
)
from zooscope.analysis.discrimination import discrimination


def point_verdict(alpha):
    # the verdict of a point estimate without interval or p-value (docs/statistics.md)
    return "over-trained" if alpha < 2 else "under-trained" if alpha > 6 else "well-trained"


def layers(alpha, log_spectral_norm, traps=None, skipped=0, verdicts=None):
    n = len(alpha)
    frame = pd.DataFrame({
        "layer": [f"l{i}" for i in range(n)], "status": ["ok"] * n, "alpha": alpha,
        "log_spectral_norm": log_spectral_norm, "num_traps": traps or [0] * n,
        "verdict": verdicts or [point_verdict(a) for a in alpha],
    })
    extra = pd.DataFrame({"layer": [f"s{i}" for i in range(skipped)], "status": ["skipped"] * skipped})
    return pd.concat([frame, extra], ignore_index=True)


@pytest.fixture
def zoo():
    series_of = {"good": "s", "bad": "s", "solo": "alone"}
    by_model = {
        "good": layers([3.0, 3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0], skipped=2),
        # two matrices with a spectral norm a decade below the series and alpha 7 > the median 3
        "bad": layers([7.0, 7.0, 1.5, 4.0], [0.0, 0.0, 0.0, 1.0], traps=[0, 2, 0, 1]),
        # the same pattern against itself: a series of one model is never flagged
        # verdicts decided by intervals: one straddles a bound, one rejects the power law
        "solo": layers([5.0, 5.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0],
                       verdicts=["well-trained", "uncertain", "no power law", "over-trained"]),
    }
    return series_of, by_model


def test_verdict_counts_reliable_mean_and_interval(zoo):
    series_of, by_model = zoo
    audit = audit_table(series_of, by_model, {"solo": (1.5, 4.5)}).set_index("model")
    assert audit.loc["solo", ["num_well_trained", "num_over_trained", "num_under_trained", "num_uncertain",
                              "num_no_power_law", "num_reliable"]].tolist() == [1, 1, 0, 1, 1, 2]
    assert audit.loc["solo", "alpha_reliable"] == pytest.approx((5.0 + 1.0) / 2)  # the 1st and 4th matrix
    assert audit.loc["solo", "alpha"] == pytest.approx(3.0)
    assert (audit.loc["solo", "alpha_lo"], audit.loc["solo", "alpha_hi"]) == (1.5, 4.5)
    assert pd.isna(audit.loc["good", "alpha_lo"])
    text = to_markdown(card_blocks("solo", audit.reset_index(), discrimination(
        pd.DataFrame({"model": ["solo"], "series": ["alone"], "alpha": [3.0]}), {}), level=0.9))
    assert "well-trained 1, under-trained 0, over-trained 1, uncertain 1, no power law 1." in text
    assert "So 2 verdicts of 4 are reliable" in text
    assert "90% bootstrap interval" in text and "straddles a bound" in text
    assert "3.00 (90% interval 1.50 to 4.50); over its 2 reliable matrixs" not in text
    assert "3.00 (90% interval 1.50 to 4.50); over its 2 reliable matrices it is 3.00" in text


def test_audit_table_counts_and_scale_collapse(zoo):
    audit = audit_table(*zoo).set_index("model")
    assert list(audit.reset_index().columns) == list(AUDIT_COLUMNS)
    # pooled medians of series s: alpha median of (3,3,3,3,7,7,1.5,4) = 3, lsn median of (1,1,1,1,0,0,0,1) = 1
    assert audit.loc["bad", "series_median_alpha"] == 3.0
    assert audit.loc["bad", "series_median_log_spectral_norm"] == 1.0
    assert audit.loc["bad", ["num_matrices", "num_well_trained", "num_under_trained", "num_over_trained"]].tolist() \
        == [4, 1, 2, 1]
    assert audit.loc["bad", ["num_with_traps", "num_traps", "num_collapsed"]].tolist() == [2, 3, 2]
    assert bool(audit.loc["bad", "scale_collapse"]) is True  # 2 of 4 reaches the fraction 1/2
    assert audit.loc["good", ["num_matrices", "num_well_trained", "num_collapsed"]].tolist() == [4, 4, 0]
    assert bool(audit.loc["good", "scale_collapse"]) is False
    assert audit.loc["solo", "num_collapsed"] == 2 and bool(audit.loc["solo", "scale_collapse"]) is False
    assert audit.loc["bad", "alpha"] == pytest.approx((7 + 7 + 1.5 + 4) / 4)


def test_card_says_it_in_words(zoo):
    audit = audit_table(*zoo)
    table = discrimination(pd.DataFrame({"model": ["good", "bad"], "series": ["s", "s"], "alpha": [3.0, 4.875]}),
                           {"good": 0.0, "bad": 1.0})
    text = to_markdown(card_blocks("bad", audit, table, noise=1.0))
    assert text.startswith("# Audit card: bad\n")
    assert "trained with 100% of its labels shuffled." in text
    assert "well-trained 1, under-trained 2, over-trained 1, uncertain 0, no power law 0." in text
    assert "With correlation traps: 2 (" in text and "3 eigenvalues above" in text
    assert "Scale collapse: 2 of its 4 matrices" in text
    assert "ranks 2 of 2 by mean alpha" in text
    assert "rank its models exactly by noise level (|Kendall tau| = 1): `alpha` (tau = +1.00, grows with noise)" in text
    assert "| bad | 4 | 1 | 2 | 1 | 0 | 0 | 2 | 2 | yes | 4.88 | - | 4.88 |" in text
    solo = to_markdown(card_blocks("solo", audit, table))
    assert "only model of series `alone`" in solo and "No scale collapse" in solo
    assert "good-versus-bad" not in solo


def test_traps_not_checked_without_the_randomization_check():
    """Without esd.randomize (the default) layers.tsv's num_traps is empty: the audit then says
    the traps were not checked, never that there are none."""
    frame = layers([3.0, 4.0], [1.0, 1.0])
    frame["num_traps"] = np.nan
    audit = audit_table({"m": "s"}, {"m": frame})
    assert audit.loc[0, "num_with_traps"] is None and audit.loc[0, "num_traps"] is None
    text = to_markdown(card_blocks("m", audit, discrimination(pd.DataFrame({"model": ["m"], "series": ["s"],
                                                                             "alpha": [3.5]}), {})))
    assert "Correlation traps were not checked" in text and "None has correlation traps" not in text
    assert "| m | 2 | 2 | 0 | 0 | 0 | 0 | - |" in text
    # read back from audit.tsv (NaN), the same words
    reread = audit.astype({"num_with_traps": float, "num_traps": float})
    assert "Correlation traps were not checked" in to_markdown(card_blocks("m", reread, discrimination(
        pd.DataFrame({"model": ["m"], "series": ["s"], "alpha": [3.5]}), {})))


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.seen = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in ("meta",):
            self.stack.append(tag)
        self.seen.append(tag)

    def handle_endtag(self, tag):
        assert self.stack.pop() == tag


def test_summary_as_markdown_and_html(zoo):
    audit = audit_table(*zoo)
    empty = discrimination(pd.DataFrame({"model": ["good"], "series": ["s"], "alpha": [3.0]}), {})
    blocks = summary_blocks(audit, empty)
    text = to_markdown(blocks)
    assert "no metric was tested on a good-versus-bad ladder" in text
    assert "Models flagged: `bad`." in text
    # 12 fitted matrices, 2 of solo's unreliable
    assert "Over the zoo, 10 of its 12 fitted matrices have a reliable verdict (well-trained 6, over-trained 2, " \
           "under-trained 2); 1 are uncertain and 1 have no power-law tail." in text
    page = to_html(blocks, title="t <x>")
    parser = _Tags()
    parser.feed(page)
    assert parser.stack == [] and parser.seen.count("tr") == 1 + 3 and "<code>bad</code>" in page
    assert "<title>t &lt;x&gt;</title>" in page


def test_the_band_edges_and_the_caption_agree_with_the_layer_verdict():
    """The layer warning and verdict, the audit's counts and the report caption use one alpha band:
    alpha = 2 and alpha = 6 are well-trained, just outside them is not; an interval touching a
    bound from inside is decided, one crossing it is not."""
    from pathlib import Path

    from zooscope.analysis.metrics import OVER_TRAINED_BELOW as over, UNDER_TRAINED_ABOVE as under
    from zooscope.analysis.metrics import verdict_for, warning_for

    alphas = [1.999, 2.0, 6.0, 6.001]
    assert [warning_for(alpha) for alpha in alphas] == ["over-trained", "", "", "under-trained"]
    verdicts = [verdict_for(alpha) for alpha in alphas]
    assert verdicts == ["over-trained", "well-trained", "well-trained", "under-trained"]
    assert [verdict_for(3.0, 2.0, 6.0), verdict_for(2.0, 1.999, 3.0), verdict_for(6.0, 5.0, 6.001)] == [
        "well-trained", "uncertain", "uncertain"]
    audit = audit_table({"m": "s"}, {"m": layers(alphas, [1.0] * 4, verdicts=verdicts)}).iloc[0]
    assert [audit["num_over_trained"], audit["num_well_trained"], audit["num_under_trained"]] == [1, 2, 1]
    caption = (Path(__file__).resolve().parents[1] / "report" / "audit.rst").read_text()
    assert (f"(the whole bootstrap interval of alpha within [{over:g}, {under:g}], above {under:g}, below "
            f"{over:g}), uncertain (the interval\nstraddles {over:g} or {under:g})") in caption  # static text: kept in step
