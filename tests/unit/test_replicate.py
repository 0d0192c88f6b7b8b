"""The seed-002 replication as a command: runs offline on the organism, prints one row per
layer and writes its tables and figures."""

from __future__ import annotations

import re

import pandas as pd

from llmscope.replicate.__main__ import main


def test_seed002_command_prints_a_row_per_layer_and_writes_tables(tmp_path, capsys):
    assert main(["seed002", "--model", "grammar-2l", "--method", "grad_x_act", "--n-docs", "8",
                 "--ks", "1", "5", "--n-random", "2", "--folds", "2", "--out", str(tmp_path)]) == 0
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


def test_specificity_counts_a_harmless_random_lesion_as_harmless():
    import numpy as np

    from llmscope.replicate.seed002 import _specificity

    out = _specificity(np.array([1.0, 1.0, 1.0, -0.5]), np.array([0.5, 0.0, -0.2, 0.5]))
    assert out[0] == 2.0 and np.isinf(out[1]) and np.isinf(out[2]) and out[3] == -1.0
