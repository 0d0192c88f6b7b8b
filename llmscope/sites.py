"""Sites and units: where llmscope records or intervenes, resolved and validated in one place.

A site is named the short way or the TransformerLens way:

=========  ======================================  ==========================  =========
short      hook                                    per-token shape             unit
=========  ======================================  ==========================  =========
mlp.L      ``blocks.L.mlp.hook_post``              ``(d_mlp,)``                neuron
attn.L     ``blocks.L.attn.hook_z``                ``(n_heads, d_head)``       head
resid.L    ``blocks.L.hook_resid_pre``             ``(d_model,)``              dim
=========  ======================================  ==========================  =========

``resid.L`` is the residual stream *entering* block L, so ``resid.0`` is the embedding and
``resid.{n_layers}`` (``blocks.{n_layers-1}.hook_resid_post``) is what the unembedding reads.
Any other hook name of ``model.hook_dict`` whose activation is ``[batch, pos, ...]`` is a site too.

Units — one convention everywhere
---------------------------------
A unit is one index along the first axis of the per-token shape: a neuron of ``mlp.L``, a
head of ``attn.L``, a dimension of ``resid.L``. Indices run ``0..n_units-1``; a negative
index is an error (it never wraps), so ``-1`` cannot silently mean the last neuron.

Every function that takes units (``lesion``, ``gain``, the decoders, the widgets) reads them
with :func:`resolve_units`, which accepts:

* a site and indices: ``("mlp.1", [3, 7])``, or as two arguments ``lesion("mlp.1", [3, 7])``;
  a bare site ``"attn.0"`` (or indices ``None``) means all its units;
* a list of such pairs: ``[("mlp.0", [1]), ("attn.1", [0])]``, where a bare site stands for all
  its units: ``["mlp.0", "mlp.1"]``;
* anything indexed by units, as every analysis returns them: a ``(site, unit)``
  ``MultiIndex``, a DataFrame or Series with that index (``tuning(...).top(8)``), or a
  ``Result`` whose ``.df`` has it.

Tables index units with that ``MultiIndex`` (:func:`unit_index` builds one from any of the above).

Example:
    >>> import llmscope
    >>> from llmscope import site
    >>> from llmscope.sites import unit_index
    >>> model = llmscope.load("grammar-2l")
    >>> s = site(model, "mlp.1")
    >>> s.hook, s.n_units
    ('blocks.1.mlp.hook_post', 512)
    >>> unit_index(model, [("mlp.1", [7, 3]), ("attn.0", 2)]).tolist()
    [('mlp.1', 3), ('mlp.1', 7), ('attn.0', 2)]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence, Union

import numpy as np
import pandas as pd

from llmscope import identity
from llmscope.errors import SiteError
from llmscope.identity import Fingerprint

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_SHORT = re.compile(r"^(mlp|attn|resid)\.(-?\d+)$")
_PROBE_LEN = 7  # tokens in the shape probe of a raw hook; an odd length few axes share


@dataclass(frozen=True)
class Site:
    """A resolved site of one model.

    Attributes:
        name: the short name (``"mlp.3"``) or, for a raw hook, the hook name.
        hook: the TransformerLens hook whose activation is recorded / intervened on.
        kind: ``"mlp"``, ``"attn"``, ``"resid"`` or ``"hook"``.
        layer: the block index, or None for hooks outside the blocks.
        shape: per-token activation shape; ``shape[0]`` is the number of units.
        unit: what one unit is: ``"neuron"``, ``"head"``, ``"dim"``.
        model: the fingerprint of the model it was resolved on (None if unknown); a model of
            another shape refuses it.
    """

    name: str
    hook: str
    kind: str
    layer: int | None
    shape: tuple[int, ...]
    unit: str
    model: Fingerprint | None = field(default=None, compare=False, repr=False)

    @property
    def n_units(self) -> int:
        """How many units the site has (neurons, heads or residual dimensions)."""
        return self.shape[0]

    @property
    def pattern_hook(self) -> str:
        """The attention-pattern hook of an ``attn.L`` site (``[batch, head, query, key]``)."""
        if self.kind != "attn":
            raise SiteError(f"{self.name} is not an attention site; only attn.L has a pattern.")
        return f"blocks.{self.layer}.attn.hook_pattern"

    def check_units(self, units: int | Iterable[int] | None = None) -> np.ndarray:
        """Validate unit indices and return them as an int array (``None`` = all units).

        Indices must be integers in ``0..n_units-1``; negative ones are refused, not wrapped.
        """
        if units is None:
            return np.arange(self.n_units)
        if isinstance(units, (str, bytes)):
            raise SiteError.Type(f"unit indices of {self.name} are integers, got the string {units!r}.")
        idx = np.atleast_1d(np.asarray(units, dtype=object if isinstance(units, (list, tuple)) else None))
        if idx.size == 0:
            raise SiteError(f"no units given for {self.name}; pass indices in 0..{self.n_units - 1}.")
        if idx.dtype == object and all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_))
                                       for i in idx.ravel()):
            idx = idx.astype(np.int64)
        if not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 1:
            raise SiteError.Type(f"unit indices of {self.name} must be a list of integers in 0..{self.n_units - 1}, "
                                 f"got {str(units)[:80]}.")
        bad = idx[(idx < 0) | (idx >= self.n_units)]
        if bad.size:
            raise SiteError.Range(
                f"{self.unit} {bad.tolist()} out of range for {self.name}: it has "
                f"{self.n_units} {self.unit}s, indices 0..{self.n_units - 1} (negative indices are not allowed)."
            )
        return idx.astype(np.int64)

    def unit_index(self, units: int | Iterable[int] | None = None) -> pd.MultiIndex:
        """A ``(site, unit)`` MultiIndex for the given units (all by default)."""
        idx = self.check_units(units)
        return pd.MultiIndex.from_arrays([[self.name] * idx.size, idx], names=["site", "unit"])

    def __repr__(self) -> str:
        return f"Site({self.name!r}, hook={self.hook!r}, {self.n_units} {self.unit}s, shape={self.shape})"


def _choices(model: "TransformerBridge") -> str:
    n = model.cfg.n_layers
    return (
        f"mlp.0..mlp.{n - 1}, attn.0..attn.{n - 1}, resid.0..resid.{n}, "
        "or a hook name from model.hook_dict such as 'blocks.0.mlp.hook_post'"
    )


def _short(model: "TransformerBridge", kind: str, layer: int, spec: str, fp: Fingerprint) -> Site:
    cfg = model.cfg
    top = cfg.n_layers if kind == "resid" else cfg.n_layers - 1
    if not 0 <= layer <= top:
        raise SiteError.Range(f"layer {layer} out of range in {spec!r}: valid sites are {_choices(model)}.")
    if kind == "mlp":
        return Site(spec, f"blocks.{layer}.mlp.hook_post", kind, layer, (cfg.d_mlp,), "neuron", fp)
    if kind == "attn":
        return Site(spec, f"blocks.{layer}.attn.hook_z", kind, layer, (cfg.n_heads, cfg.d_head), "head", fp)
    hook = f"blocks.{layer}.hook_resid_pre" if layer < cfg.n_layers else f"blocks.{layer - 1}.hook_resid_post"
    return Site(spec, hook, kind, layer, (cfg.d_model,), "dim", fp)


def _short_sites(model: "TransformerBridge") -> list[Site]:
    n, fp = model.cfg.n_layers, identity.fingerprint(model)
    return [_short(model, kind, layer, f"{kind}.{layer}", fp)
            for kind in ("mlp", "attn", "resid") for layer in range(n + (kind == "resid"))]


def _probe_shape(model: "TransformerBridge", hook: str) -> tuple[int, ...]:
    """Per-token shape of a raw hook, read off one tiny forward pass (cached on the model)."""
    import torch

    memo: dict[str, tuple[int, ...]] = model.__dict__.setdefault("_llmscope_shapes", {})
    if hook not in memo:
        tokens = torch.zeros((1, _PROBE_LEN), dtype=torch.long)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == hook)
        if hook not in cache:
            raise SiteError.Unknown(f"hook {hook!r} never fires in a forward pass; it cannot be recorded.")
        act = cache[hook]
        if act.ndim < 3 or act.shape[1] != _PROBE_LEN or _PROBE_LEN in act.shape[2:]:
            raise SiteError(
                f"hook {hook!r} has activations of shape [batch, {', '.join(map(str, act.shape[1:]))}] "
                "for 7 tokens, not [batch, pos, ...]; llmscope records per-token sites. "
                "For attention patterns use an attn.L site (Site.pattern_hook)."
            )
        memo[hook] = tuple(act.shape[2:])
    return memo[hook]


def _layer_of(hook: str) -> int | None:
    m = re.match(r"^blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else None


def site(model: "TransformerBridge", spec: "str | Site") -> Site:
    """Resolve a site name for ``model``; raise :class:`SiteError` listing valid choices.

    Example:
        >>> import llmscope
        >>> from llmscope import site
        >>> model = llmscope.load("grammar-2l")
        >>> site(model, "attn.0").shape
        (4, 32)
    """
    if isinstance(spec, Site):
        identity.check(spec.model, model, f"the site {spec.name}", "arch", SiteError,
                       f"Resolve it on this model: llmscope.site(model, {spec.name!r}).")
        return spec
    if not isinstance(spec, str):
        raise SiteError.Type(f"a site is a string such as 'mlp.0'; got {type(spec).__name__}.")
    m = _SHORT.match(spec.strip())
    if m:
        return _short(model, m.group(1), int(m.group(2)), spec.strip(), identity.fingerprint(model))
    if spec in model.hook_dict:
        named = {s.hook: s for s in _short_sites(model)}
        if spec in named:  # a raw name of a short site resolves to that site
            return named[spec]
        shape = _probe_shape(model, spec)
        return Site(spec, spec, "hook", _layer_of(spec), shape, "dim", identity.fingerprint(model))
    if spec.startswith("sae:"):  # features live in the SAE, not in the model: edited through it
        raise SiteError.Unknown(f"{spec!r} names an SAE's features, not a site of the model: edit them with "
                                f"llmscope.sae.lesion_features(sae, units) (or gain_features / steer_features).")
    raise SiteError.Unknown(f"unknown site {spec!r}: valid sites are {_choices(model)}.")


def sites(model: "TransformerBridge", specs: "str | Site | Sequence[str | Site]") -> list[Site]:
    """Resolve one or many sites; duplicates are dropped, order is kept."""
    if isinstance(specs, (str, Site)):
        specs = [specs]
    if not isinstance(specs, (list, tuple, pd.Index, np.ndarray)):
        raise SiteError.Type(f"sites are a site name or a list of them, such as ['mlp.0', 'attn.1']; "
                             f"got {type(specs).__name__}.")
    if len(specs) == 0:
        raise SiteError(f"no sites given; valid sites are {_choices(model)}.")
    out: dict[str, Site] = {}
    for spec in specs:
        s = site(model, spec)
        out.setdefault(s.hook, s)
    return list(out.values())


# ---------------------------------------------------------------- units

UnitsLike = Union[str, Site, tuple, Sequence[tuple], pd.Index, pd.DataFrame, pd.Series, Any]
UNITS_HELP = ("units are a site and indices ('mlp.1', [3, 7]), a list of such pairs, or a table indexed "
              "by (site, unit) such as tuning(...).top(8)")


def table_index(units: Any) -> pd.MultiIndex | None:
    """The ``(site, unit)`` index of a unit table, Series, Result or MultiIndex; None if it is none."""
    if hasattr(units, "df") and isinstance(getattr(units, "df"), pd.DataFrame):  # a Result
        units = units.df
    if isinstance(units, (pd.DataFrame, pd.Series)):
        units = units.index
    if not isinstance(units, pd.Index):
        return None
    if not (isinstance(units, pd.MultiIndex) and units.nlevels == 2):
        raise SiteError.Type(f"a unit table is indexed by (site, unit); this one's index is {list(units.names)}. {UNITS_HELP}.")
    return units


def bound_model(units: Any) -> Fingerprint | None:
    """The fingerprint of the model a unit table (or Result) was made on, if it says."""
    if hasattr(units, "meta") and isinstance(getattr(units, "meta"), dict):
        return Fingerprint.from_dict(units.meta.get("fingerprint"))
    if isinstance(units, (pd.DataFrame, pd.Series)):
        return Fingerprint.from_dict(units.attrs.get("fingerprint"))
    return None


def parse_units(units: UnitsLike, indices: Any = None) -> list[tuple[str | Site, Any]]:
    """Any accepted form of units -> ``[(site, indices or None), ...]``, one entry per site in
    first-seen order (nothing checked against a model yet)."""
    if isinstance(units, (str, Site)):
        pairs = [(units, indices)]
    elif indices is not None:
        raise SiteError.Type(f"indices are given as a second argument only after a site name such as 'mlp.1'; "
                        f"got units={units!r} and indices={indices!r}. {UNITS_HELP}.")
    elif (table := table_index(units)) is not None:
        pairs = [(s, table.get_level_values(1)[table.get_level_values(0) == s].to_numpy())
                 for s in dict.fromkeys(table.get_level_values(0))]
    elif isinstance(units, tuple) and len(units) == 2 and isinstance(units[0], (str, Site)):
        pairs = [units]
    elif isinstance(units, Iterable) and not isinstance(units, (str, bytes, dict)):
        pairs = list(units)
    else:
        raise SiteError.Type(f"{UNITS_HELP}; got {str(units)[:80]}.")
    grouped: dict[str | Site, list | None] = {}
    for pair in pairs:
        if isinstance(pair, (str, Site)):  # a bare site in a list: all its units
            pair = (pair, None)
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], (str, Site))):
            raise SiteError.Type(f"{UNITS_HELP}; got the item {str(pair)[:80]}.")
        spec, idx = pair
        if idx is None or (spec in grouped and grouped[spec] is None):
            grouped[spec] = None
        else:
            if isinstance(idx, (str, bytes)):
                raise SiteError.Type(f"unit indices of {spec!r} are integers, got the string {idx!r}.")
            grouped[spec] = grouped.get(spec, []) + np.atleast_1d(np.asarray(idx, dtype=object)).tolist()
    if not grouped:
        raise SiteError(f"no units given; {UNITS_HELP}.")
    return list(grouped.items())


def resolve_units(model: "TransformerBridge", units: UnitsLike, indices: Any = None) -> list[tuple[Site, np.ndarray]]:
    """Units resolved against ``model``: ``[(Site, sorted unique indices), ...]``; a SiteError
    names a bad site or index and the valid range, or a unit table made on a model of another shape."""
    identity.check(bound_model(units), model, "these units", "arch", SiteError,
                   "Take units from an analysis of this model.")
    out: dict[str, tuple[Site, np.ndarray]] = {}
    for spec, idx in parse_units(units, indices):
        s = site(model, spec)
        checked = s.check_units(idx)
        if s.hook in out:
            checked = np.concatenate([out[s.hook][1], checked])
        out[s.hook] = (s, np.unique(checked))
    return list(out.values())


def unit_labels(index: pd.MultiIndex) -> list[str]:
    """Categorical axis labels of a ``(site, unit)`` index: ``["mlp.0:12", "attn.1:0"]``."""
    return [f"{s}:{u}" for s, u in index]


def unit_index(model: "TransformerBridge", units: UnitsLike, indices: Any = None) -> pd.MultiIndex:
    """The ``(site, unit)`` MultiIndex of any accepted form of units (see the module docstring)."""
    resolved = resolve_units(model, units, indices)
    return pd.MultiIndex.from_tuples([(s.name, int(i)) for s, idx in resolved for i in idx], names=["site", "unit"])
