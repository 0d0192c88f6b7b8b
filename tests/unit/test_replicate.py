"""The seed-002 replication as a command: runs offline on the organism, prints one row per
layer and writes its tables and figures."""

from __future__ import annotations

import re

import pandas as pd

from llmscope.replicate.__main__ import main


def test_seed002_command_prints_a_row_per_layer_and_writes_tables(tmp_path, capsys):
    assert main(["seed002", "--model", "grammar-2l", "--method", "grad_x_act", "--n-docs", "8",
                 "--ks", "1", "5", "--n-controls", "2", "--folds", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "key_next" in printed and "lesion test" in printed
    table = pd.read_csv(tmp_path / "table.csv")
    assert table["layer"].tolist() == [0, 1]
    # all neurons decode the current token's POS far above the majority rate (~0.25) in layer 0
    assert table.loc[0, "all_current"] > 0.9
    lesions = pd.read_csv(tmp_path / "lesions.csv")
    assert set(lesions["site"]) == {"mlp.0", "mlp.1"} and lesions["class_effect"].notna().all()
    html = (tmp_path / "accuracy_gold.html").read_text()
    assert "<script" in html and not re.search(r"<script[^>]*\bsrc=", html)  # plotly.js inlined, nothing fetched


def test_lesion_specificity_is_two_differences_with_intervals(organism):
    """Key lesions of mlp.0: specificity as class - random and class - other effects, each with a
    cluster-bootstrap interval; a ratio only where the random effect is bounded above zero; no
    inf. The DET key neurons harm every class alike while a random lesion is harmless (a ratio
    to it was inf): not specific."""
    import numpy as np

    from llmscope.analysis.key_neurons import key_neurons
    from llmscope.replicate.seed002 import lesion_test
    from llmscope.stimuli import grammar

    key = key_neurons(organism, grammar(organism, n_docs=16, seed=0), "pos_tag", "grad_x_act", units=["mlp.0"], k=10,
                      progress=False)
    out = lesion_test(organism, grammar(organism, n_docs=16, seed=1), key, "mlp.0", 10).set_index("cls")
    assert list(out.index) == ["NOUN", "DET", "VERB", "PUNCT"]
    assert np.isfinite(out.drop(columns=["site", "specific"]).fillna(0).to_numpy(float)).all()
    for name, est in (("class_minus_random", out.class_effect - out.random_effect),
                      ("class_minus_other", out.class_effect - out.other_effect), ("random", out.random_effect)):
        np.testing.assert_allclose(out[name if name != "random" else "random_effect"], est)
        assert ((out[f"{name}_low"] <= est) & (est <= out[f"{name}_high"])).all(), name
    assert out.specific.equals((out.class_minus_random_low > 0) & (out.class_minus_other_low > 0))
    assert out.specificity.notna().equals(out.random_low > 0)  # the ratio only where its denominator is above zero
    ratio = out.dropna(subset=["specificity"])
    assert len(ratio) and ((ratio.specificity_low <= ratio.specificity) & (ratio.specificity <= ratio.specificity_high)).all()
    det = out.loc["DET"]
    assert det.random_low <= 0 <= det.random_high and np.isnan(det.specificity)  # a harmless random lesion
    assert det.class_minus_other_low < 0 < det.class_minus_other_high and not det.specific
    assert out.loc["NOUN"].specific and out.loc["VERB"].specific
