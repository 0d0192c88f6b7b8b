"""Routes: the short cuts of :mod:`~llmscope.engine.passes`, each checked once per model.

A route gives what a plain forward pass gives, with less work. Before an experiment takes one on
a model, it is checked against the plain pass on a probe of random tokens (:func:`probe`); the
verdict is kept in the per-model cache (:func:`llmscope.engine.cache.memo`) until the model's
weights change. A route that fails its check is not taken: a warning says so, once, and the
engine takes the plain way (slower; the same numbers).

* :func:`readout` — passes stop at ``ln_final``'s input and unembed only the rows read;
* :func:`resumes` — a pass starts at block L from the residual entering it;
* :func:`activations` — transformers' Python tanh GELUs run as torch's fused one;
* :func:`rank_one` — logits of copies of the last residual, each less one direction, in closed form;
* :func:`closed_form` — a lesion of an MLP site's neurons, computed up to the residual leaving
  its block without running it (their writes subtracted: :func:`out_weights`).

Example:
    >>> import llmscope
    >>> from llmscope.engine.routes import closed_form, readout, resumes
    >>> model = llmscope.load("grammar-2l")
    >>> resumes(model, 1), readout(model) is not None, closed_form(model, llmscope.site(model, "mlp.0")).shape
    (True, True, torch.Size([512, 128]))
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Callable

import torch

from llmscope.engine import passes
from llmscope.engine.cache import memo
from llmscope.sites import Site

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

PROBE_LEN = 8  # tokens of the probe every route is checked on
TOL = 1e-4  # relative to the largest logit: float32 rounding of a reordered sum, not a wrong route


def probe(model: "TransformerBridge", length: int = PROBE_LEN) -> torch.Tensor:
    """The probe: ``[1, length]`` token ids drawn at random with a fixed seed."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, model.cfg.d_vocab, (1, length), generator=gen)


def same(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether a route's output is the plain pass's, up to float32 rounding (:data:`TOL`)."""
    return torch.allclose(got.float(), want.float(), rtol=TOL, atol=TOL * max(1.0, want.abs().max().item()))


def _verdict(model: "TransformerBridge", key: Any, what: str, check: Callable[[], bool]) -> bool:
    """The kept verdict of one route on ``model``, checked on first use; a failed check warns once."""
    kept = memo(model, "routes")
    if key not in kept:
        with torch.no_grad():
            try:
                ok = bool(check())
            except (NotImplementedError, ValueError, KeyError):  # the route's hook or argument is not there
                ok = False
        kept[key] = ok
        if not ok:
            warnings.warn(f"{what} does not reproduce a plain forward pass of {model.cfg.model_name!r}; "
                          "experiments on it take the plain way there (slower, the same results).", stacklevel=3)
    return kept[key]


def readout(model: "TransformerBridge") -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Residual entering ``ln_final`` -> logits (:func:`~llmscope.engine.passes.readout`) where
    passes stopped there and read out give the plain logits; else None (passes return logits)."""
    def check() -> bool:
        read, ids = passes.readout(model), probe(model)
        return read is not None and same(read(passes.run_from(model, ids, 0, [], True)), model(ids))

    return passes.readout(model) if _verdict(model, "readout", "stopping at ln_final and unembedding rows",
                                             check) else None


def resumes(model: "TransformerBridge", layer: int) -> bool:
    """Whether a pass started at block ``layer`` (``0 <= layer < n_layers``) from the residual
    entering it gives the plain logits (block 0 is the plain pass)."""
    def check() -> bool:
        if passes.layer_list(model) is None:
            return False
        ids, name = probe(model), f"blocks.{layer}.hook_resid_pre"
        logits, cache = model.run_with_cache(ids, names_filter=name)
        return same(passes.run_from(model, cache[name], layer, [], False), logits)

    return layer == 0 or _verdict(model, ("resumes", layer), f"a pass resumed at block {layer}", check)


def activations(model: "TransformerBridge") -> AbstractContextManager:
    """A context in which the model's tanh GELUs run fused
    (:func:`~llmscope.engine.passes.fused_activations`) where that gives the plain logits; else
    one that changes nothing."""
    def check() -> bool:
        ids = probe(model)
        plain = model(ids)
        with passes.fused_activations(model):
            return same(model(ids), plain)

    return passes.fused_activations(model) if _verdict(model, "fused", "fused GELUs", check) else nullcontext()


def rank_one(model: "TransformerBridge") -> Callable | None:
    """:func:`~llmscope.engine.passes.rank_one_readout` of ``model`` where it gives what reading
    out each copy gives (checked on the probe's last residual); else None."""
    def check() -> bool:
        prepare, read = passes.rank_one_readout(model), readout(model)
        if prepare is None or read is None:
            return False
        ids, name = probe(model), f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        _, cache = model.run_with_cache(ids, names_filter=name)
        r = cache[name][0]
        gen = torch.Generator().manual_seed(1)
        w = torch.randn(2, r.shape[-1], generator=gen) * r.norm(dim=-1).mean() / r.shape[-1] ** 0.5
        a = torch.randn(2, len(r), generator=gen)
        want = torch.stack([read(r - a[j][:, None] * w[j]) for j in range(2)])
        return same(prepare(cache[name])((0, torch.arange(len(r))), a, w), want)

    return passes.rank_one_readout(model) if _verdict(model, "rank_one", "the closed-form readout of the last "
                                                      "residual less one direction", check) else None


def out_weights(model: "TransformerBridge", site: Site) -> torch.Tensor | None:
    """``[n_units, d_model]``: what each neuron of an MLP site adds to the residual stream per unit
    of activation, read off the MLP's output projection by applying it to the identity; None when
    the site is not the input of an output projection."""
    out = getattr(model.blocks[site.layer].mlp, "out", None) if site.kind == "mlp" else None
    if out is None or model.hook_dict.get(site.hook) is not getattr(out, "hook_in", None):
        return None
    with torch.no_grad():
        return out(torch.eye(site.n_units)) - out(torch.zeros(1, site.n_units))


def closed_form(model: "TransformerBridge", site: Site) -> torch.Tensor | None:
    """The output weights (:func:`out_weights`) with which a lesion of neurons of the MLP site
    ``site`` (block L) is computed in closed form: the residual leaving block L less what the
    neurons wrote into it, a pass resumed at block L + 1 and read out. None where that does not
    give a plain lesioned pass's logits (checked once per site on the probe, two neurons zeroed);
    then the engine runs those lesions through the blocks."""
    def check() -> bool:
        weights, read, L = out_weights(model, site), readout(model), site.layer
        if weights is None or read is None or (L + 1 < model.cfg.n_layers and not resumes(model, L + 1)):
            return False
        ids, idx = probe(model), torch.arange(min(2, site.n_units))

        def zero(act: torch.Tensor, hook: Any) -> torch.Tensor:
            act = act.clone()
            act[..., idx] = 0.0
            return act

        want = model.run_with_hooks(ids, fwd_hooks=[(site.hook, zero)])
        _, cache = model.run_with_cache(ids, names_filter=[site.hook, f"blocks.{L}.hook_resid_post"])
        resid = cache[f"blocks.{L}.hook_resid_post"] - cache[site.hook][..., idx] @ weights[idx]
        return same(read(passes.run_from(model, resid, L + 1, [], True)), want)

    if site.kind != "mlp" or site.layer is None:
        return None
    ok = _verdict(model, ("closed_form", site.hook), f"lesions of {site.name} in closed form", check)
    return out_weights(model, site) if ok else None


__all__ = ["probe", "same", "readout", "resumes", "activations", "rank_one", "out_weights", "closed_form",
           "PROBE_LEN", "TOL"]
