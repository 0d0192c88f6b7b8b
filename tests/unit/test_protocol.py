"""The house rules, checked on every public function: one vocabulary, one Result protocol,
layers that only point down.

* every parameter of every public function and method is in :data:`llmscope.vocabulary.VOCABULARY`;
* every analysis, experiment and behaviour measure returns a typed :class:`~llmscope.Result`
  subclass, exported, whose ``kind`` names the function, whose ``plot()`` draws a figure with data,
  whose controls sit in ``<column>_control`` columns, whose ``.data`` is an xarray Dataset or None,
  and whose ``top()`` (where rows are units) passes straight to ``lesion`` and ``unit_index``;
* no module imports from a layer above it.
"""

from __future__ import annotations

import ast
import inspect
import pathlib

import pytest
import xarray as xr

import llmscope as ls
from llmscope import analysis, sae
from llmscope.analysis.attribution import screen
from llmscope.result import Result
from llmscope.stimuli import agreement, grammar, induction
from llmscope.vocabulary import VOCABULARY

PACKAGE = pathlib.Path(ls.__file__).parent


def public_callables():
    """Every public function and class of llmscope, llmscope.analysis, llmscope.stimuli and
    llmscope.sae, and the public methods of the public classes (their own, not inherited from
    outside llmscope)."""
    seen = {}
    for module in (ls, analysis, ls.stimuli, sae):
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not callable(obj):
                continue
            seen.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
            if inspect.isclass(obj):
                for meth_name, meth in vars(obj).items():
                    if not meth_name.startswith("_") and callable(meth):
                        seen.setdefault(f"{obj.__module__}.{obj.__qualname__}.{meth_name}", meth)
    return seen


@pytest.mark.parametrize("name, obj", sorted(public_callables().items()))
def test_every_parameter_is_in_the_vocabulary(name, obj):
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return
    unknown = [p for p in params if p not in ("self", "cls", "args", "kwargs") and p not in VOCABULARY]
    assert not unknown, f"{name} has parameters outside the vocabulary: {unknown}"


def test_old_names_still_work_for_one_release_with_a_warning(organism):
    rec = ls.record(organism, grammar(organism, n_docs=3), ["mlp.0"], progress=False)
    with pytest.warns(FutureWarning, match="n_perm"):
        old = ls.tuning(rec, "mlp.0", "pos_tag", n_perm=2, progress=False)
    new = ls.tuning(rec, "mlp.0", "pos_tag", n_controls=2, progress=False)
    assert old.df.equals(new.df)


# ---------------------------------------------------------------- the Result protocol


@pytest.fixture(scope="module")
def lab(organism):
    stim = grammar(organism, n_docs=4, seed=0)
    rec = ls.record(organism, stim, ["mlp.0", "mlp.1", "attn.1", "resid.1"], progress=False)
    return dict(m=organism, stim=stim, rec=rec, ind=induction(organism, 4, 8),
                pair=agreement(organism, n=8, corrupt=True), fp=ls.field_potential(rec, ["mlp.0", "mlp.1"],
                                                                                     progress=False))


CALLS = {
    "tuning": lambda e: ls.tuning(e["rec"], "mlp.0", "pos_tag", progress=False),
    "top_examples": lambda e: ls.top_examples(e["rec"], ("mlp.0", 3)),
    "spikes": lambda e: ls.spikes(e["rec"], "mlp.0", progress=False),
    "psth": lambda e: ls.psth(ls.spikes(e["rec"], "mlp.0", progress=False), "is_repeat", progress=False),
    "decode": lambda e: ls.decode(e["rec"], "mlp.0", "pos_tag", folds=2, n_controls=2, progress=False),
    "decode_curve": lambda e: ls.decode_curve(e["rec"], "mlp.0", "pos_tag", ks=(1, 4), folds=2, n_controls=2,
                                              progress=False),
    "pca": lambda e: ls.pca(e["rec"], "mlp.0", "pos_tag"),
    "rdm": lambda e: ls.rdm(e["rec"], ["mlp.0", "mlp.1"]),
    "rsa": lambda e: ls.rsa(ls.rdm(e["rec"], ["mlp.0", "mlp.1"]), n_controls=20),
    "cka": lambda e: ls.cka(e["rec"], ["mlp.0", "mlp.1"], n_controls=2, progress=False),
    "sparsity": lambda e: ls.sparsity(e["rec"], "mlp.0", progress=False),
    "behaviour_correlates": lambda e: ls.behaviour_correlates(e["m"], e["rec"], units=("mlp.0", [1, 2]),
                                                              n_controls=5, progress=False),
    "field_potential": lambda e: e["fp"],
    "lfp_spectrum": lambda e: ls.lfp_spectrum(e["fp"], n_controls=5, nperseg=8, progress=False),
    "event_average": lambda e: ls.event_average(e["fp"], "is_repeat", window=(2, 2), n_controls=5, progress=False),
    "granger": lambda e: ls.granger(e["fp"], progress=False),
    "effect": lambda e: ls.effect(e["m"], e["stim"], ls.lesion("attn.1", [0]), n_boot=50),
    "patching": lambda e: ls.patching(e["m"], e["pair"], e["pair"].corrupt, "logit_diff", sites=["resid.1"],
                                      progress=False),
    "lesion_atlas": lambda e: ls.lesion_atlas(e["m"], ls.battery(e["m"], n_docs=2, n_pairs=8), "attn.1",
                                              n_controls=2, n_boot=50, progress=False),
    "localize_heads": lambda e: ls.localize_heads(e["m"], e["ind"], progress=False),
    "lesion_test": lambda e: analysis.lesion_test(e["m"], ls.battery(e["m"], n_docs=2, n_pairs=8), ("attn.1", [0]),
                                                  n_controls=2, n_boot=50, progress=False),
    "screen": lambda e: screen(e["m"], ls.battery(e["m"], n_docs=2, n_pairs=8), "attn.1", progress=False),
    "confirm": lambda e: ls.lesion_atlas(e["m"], ls.battery(e["m"], n_docs=2, n_pairs=8), "attn.1", screen="atp",
                                         confirm=1, n_sample=2, n_controls=2, n_boot=50, progress=False),
    "patching_screen": lambda e: ls.patching(e["m"], e["pair"], metric="logit_diff", sites=["resid.1"], method="atp",
                                             progress=False),
    "confirm_patching": lambda e: ls.patching(e["m"], e["pair"], metric="logit_diff", sites=["resid.1"],
                                              method="atp", confirm=2, progress=False),
    "attributions": lambda e: analysis.attributions(e["m"], e["stim"], "mlp.1", "grad_x_act", progress=False),
    "confirm_by_lesion": lambda e: ls.confirm_by_lesion(e["m"], e["ind"], ("attn.1", [0]), n_controls=2,
                                                        progress=False),
    "logit_lens": lambda e: ls.logit_lens(e["m"], e["stim"], progress=False),
    "surprise": lambda e: ls.surprise(e["m"], agreement(e["m"], n=8), progress=False),
    "key_neurons": lambda e: ls.key_neurons(e["m"], e["stim"], method="grad_x_act", k=5, progress=False),
    "metric": lambda e: ls.metric(e["m"], e["stim"], "loss", by="pos_tag"),
    "evaluate": lambda e: ls.evaluate(e["m"], e["stim"], "loss"),
    "token_loss": lambda e: ls.token_loss(e["m"], e["stim"]),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_every_analysis_returns_a_typed_exported_result(lab, name):
    result = CALLS[name](lab)
    cls = type(result)
    assert isinstance(result, Result) and cls is not Result, f"{name} returns a bare {cls.__name__}"
    assert cls.__name__ in analysis.__all__ and getattr(analysis, cls.__name__) is cls, f"{cls.__name__} not exported"
    assert result.kind == name, f"{cls.__name__}.kind is {result.kind!r}, not {name!r}"
    assert "plot" in vars(cls) or any("plot" in vars(base) for base in cls.__mro__[1:-2] if base is not Result), \
        f"{cls.__name__} draws no figure of its own"
    fig = result.plot()
    assert fig.data and any(getattr(trace, axis, None) is not None and len(getattr(trace, axis)) > 0
                            for trace in fig.data for axis in ("x", "y", "z", "values"))
    assert result.data is None or isinstance(result.data, xr.Dataset)
    for column in result.df.columns:
        assert not str(column).endswith(("_shuffled", "_null", "_random", "_permuted")), \
            f"{name}: control column {column!r} should be named <column>_control"
    if result.has_units:
        top = result.top(3)
        assert len(top) >= 1 and list(top.index.names) == ["site", "unit"]
        ls.sites.unit_index(lab["m"], top)
        with ls.intervene(lab["m"], ls.lesion(top)):
            lab["m"](lab["stim"].ids[:1])


def test_a_builder_returns_one_type(organism):
    clean = agreement(organism, n=8, corrupt=True)
    assert isinstance(clean, ls.Stimuli) and isinstance(clean.corrupt, ls.Stimuli)
    assert isinstance(agreement(organism, n=8), ls.Stimuli)


def test_the_top_level_api_is_small():
    assert len(ls.__all__) <= 60


# ---------------------------------------------------------------- layers point down

LAYERS = ["errors", "checks", "identity", "vocabulary", "progress", "models", "tokens", "sites", "result", "stimuli",
          "behaviour", "recording", "interventions", "passes", "engine", "analysis", "sae", "organisms", "replicate",
          "widgets"]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "llmscope" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if "static" not in p.parts))
def test_no_module_imports_from_a_layer_above_it(path):
    here = _layer("llmscope." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    if here is None:
        return
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            if isinstance(node, ast.ImportFrom) and name == "llmscope":
                name = "llmscope." + node.names[0].name
            there = _layer(name)
            assert there is None or there <= here, f"{path.name} ({LAYERS[here]}) imports {name} ({LAYERS[there]})"
