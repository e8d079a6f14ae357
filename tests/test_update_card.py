"""The audit card's words on a fine-tune's update (zooscope.report.update_card) and the noise edge
ratio (zooscope.analysis.delta.noise_edge_ratio), on updates drawn here: i.i.d. noise, whose
largest eigenvalue sits at the Marchenko-Pastur edge, and low-rank updates, far above it."""
import math

import numpy as np
import pandas as pd
import pytest

from zooscope.analysis.delta import noise_edge_ratio
from zooscope.report.update_card import NOISE_EDGE_RATIO, size_word, update_blocks


def spectrum(update):
    """(lambda_max of dW^T dW, log10 ||dW||_F^2, N, M) of an update, oriented N >= M."""
    n, m = max(update.shape), min(update.shape)
    return float(np.linalg.eigvalsh(update.T @ update if update.shape[0] >= update.shape[1] else update @ update.T)[-1]), \
        math.log10(float(np.sum(update ** 2))), n, m


def test_noise_sits_at_the_random_bulk_edge_and_a_low_rank_update_far_above_it():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((400, 200)) * 0.01
    assert noise_edge_ratio(*spectrum(noise)) == pytest.approx(1.0, abs=0.08)
    low_rank = rng.standard_normal((400, 2)) @ rng.standard_normal((2, 200))
    # rank 2: lambda_max >= ||dW||_F^2 / 2, so the ratio is at least N M / (2 (sqrt N + sqrt M)^2) = 34.3
    assert noise_edge_ratio(*spectrum(low_rank)) >= 400 * 200 / (2 * (20 + math.sqrt(200)) ** 2)
    assert math.isnan(noise_edge_ratio(math.nan, 1.0, 4, 4))


def layer_row(layer, base, update, status="ok"):
    lam, log_norm, n, m = spectrum(update)
    return {"layer": layer, "slice": "", "N": n, "M": m, "delta_status": status, "delta_lambda_max": lam,
            "delta_log_norm": log_norm, "delta_relative_norm": np.linalg.norm(update) / np.linalg.norm(base)}


def test_the_card_says_how_large_the_update_is_where_and_whether_it_is_noise():
    rng = np.random.default_rng(1)
    base = {name: rng.standard_normal((300, 100)) for name in ("a", "b", "c")}
    rows = [layer_row("a", base["a"], 0.02 * rng.standard_normal((300, 100))),  # noise, 2 %
            layer_row("b", base["b"], 0.3 * rng.standard_normal((300, 1)) @ rng.standard_normal((1, 100))),  # rank 1
            {**layer_row("c", base["c"], np.zeros((300, 100)) + 1e-30), "delta_status": "unchanged",
             "delta_relative_norm": 0.0}]
    layers = pd.DataFrame(rows)
    blocks = update_blocks(layers, "base")
    assert blocks[0] == ("h2", "Its update against its base `base`")
    relative = [rows[0]["delta_relative_norm"], rows[1]["delta_relative_norm"], 0.0]
    mean = sum(relative) / 3
    size, noise = blocks[1][1], blocks[2][1]
    assert size.startswith(f"The update is {size_word(mean)}: on average the layers moved {mean:.1%} of their norm")
    assert "2 of 3 matrices changed" in size
    # the most changed first: the rank-1 update (about 30 % of its layer) before the noise (2 %)
    assert rows[1]["delta_relative_norm"] > rows[0]["delta_relative_norm"]
    assert size.endswith(f"the most: `b` by {relative[1]:.1%}, `a` by {relative[0]:.1%}.")
    assert noise.startswith(f"The update is partly noise: 1 of 2 changed matrices (`a`) stay within, the others lie "
                            f"beyond {NOISE_EDGE_RATIO:g} times the bulk edge")
    assert "the strongest, `b`," in noise


def test_words_for_an_update_that_is_all_noise_or_all_structure_and_the_size_bands():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((200, 80))
    noisy = pd.DataFrame([layer_row("x", base, 0.001 * rng.standard_normal((200, 80)))])
    assert "looks like noise: in every changed matrix" in update_blocks(noisy, "b")[2][1]
    assert "tiny" in update_blocks(noisy, "b")[1][1]
    tuned = pd.DataFrame([layer_row("x", base, rng.standard_normal((200, 3)) @ rng.standard_normal((3, 80)))])
    assert "looks like learned structure: in every changed matrix" in update_blocks(tuned, "b")[2][1]
    assert [size_word(v) for v in (0.005, 0.05, 0.2, 0.7)] == ["tiny", "small", "moderate", "large"]
