"""The sparse autoencoder: a wide encoder, a sparse code, a decoder back to the site.

An SAE of a site with ``d_in`` values per token has ``d_sae`` features. With SAELens's names
and shapes (``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]``), a token's activation ``x`` is coded as

    z = (x - b_dec) @ W_enc + b_enc          (the pre-activations)
    f = activation(z)                        (the features: sparse, >= 0)
    x_hat = f @ W_dec + b_dec                (the reconstruction)

and feature ``i`` writes along its decoder row ``W_dec[i]`` (its *direction*). The activation is
one of SAELens's three inference architectures:

==============  =====================================================  ========================
architecture    f = activation(z)                                      trained here as
==============  =====================================================  ========================
``standard``    ``relu(z)``                                            ``kind="relu_l1"``
``topk``        the ``k`` largest ``z`` of each token, through relu    ``kind="topk"``
``jumprelu``    ``z`` where ``z > threshold`` (per feature), else 0     ``"jumprelu"``, ``"batchtopk"``
==============  =====================================================  ========================

(SAELens saves a BatchTopK SAE as JumpReLU with its learned global threshold; so do we.)

Every SAE knows the model and site it was trained on (:attr:`SAE.model`, a
:class:`~llmscope.identity.Fingerprint`, and :attr:`SAE.site`), and has a fingerprint of its own
weights (:attr:`SAE.fingerprint`), so features can be bound to the SAE and the model they belong to.

Example:
    >>> import torch
    >>> from llmscope.sae import SAE
    >>> sae = SAE(8, 32, "topk", k=4, seed=0)
    >>> f = sae.encode(torch.randn(5, 8))
    >>> f.shape, int((f > 0).sum(-1).max()) <= 4
    (torch.Size([5, 32]), True)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llmscope import identity
from llmscope.checks import choice, count
from llmscope.errors import SAEError
from llmscope.identity import Fingerprint

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from llmscope.recording import Recording
    from llmscope.sites import Site
    from llmscope.sae.metrics import SAEMetrics
    from llmscope.stimuli.core import Stimuli

ARCHITECTURES = ("standard", "topk", "jumprelu")
KINDS = {"relu_l1": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}
PREFIX = "sae:"  # a site of features is named "sae:<site>", e.g. "sae:mlp.0"


def recording_model(recording: "Recording") -> tuple[Fingerprint | None, dict | None]:
    """Who made a recording: its model's :class:`~llmscope.identity.Fingerprint` where the
    store keeps one (``Recording.fingerprint``), else the store's older print of the model (a
    dict of its dimensions and a hash of its embedding)."""
    fp = getattr(recording, "fingerprint", None)
    if isinstance(fp, Fingerprint):
        return fp, None
    return None, recording._meta.get("model")


def weights_hash(architecture: str, k: int | None, tensors: dict[str, torch.Tensor]) -> str:
    """A hash of an SAE's architecture and every value of its tensors (as float32)."""
    h = hashlib.sha256(f"{architecture}:{k}".encode())
    with torch.no_grad():
        for name, t in sorted(tensors.items()):
            h.update(name.encode() + np.asarray(t.shape, dtype=np.int64).tobytes())
            h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class SAE(torch.nn.Module):
    """A sparse autoencoder of one site of one model.

    Args:
        d_in: values per token at the site (``d_mlp`` for ``mlp.L``, ``d_model`` for ``resid.L``).
        width: number of features (SAELens's ``d_sae``, the attribute :attr:`d_sae`).
        architecture: ``"standard"``, ``"topk"`` or ``"jumprelu"`` (see the module docstring).
        k: features kept per token (``"topk"`` only).
        seed: seeds the initial weights (decoder rows of norm 0.1, the encoder their transpose,
            as SAELens initialises).
        site, hook: the site's short name and TransformerLens hook (None if not a model's site).
        model: the fingerprint of the model the SAE belongs to (None if unknown).
        kind: how it was trained (``"relu_l1"``, ``"topk"``, ``"batchtopk"``, ``"jumprelu"``).
        meta: provenance (training settings and statistics), kept in ``cfg.json``.

    Attributes:
        W_enc, b_enc, W_dec, b_dec, threshold: the weights (``threshold`` for ``"jumprelu"``).
    """

    def __init__(self, d_in: int, width: int, architecture: str = "topk", k: int | None = None, *,
                 seed: int = 0, site: str | None = None, hook: str | None = None,
                 model: Fingerprint | None = None, kind: str | None = None, meta: dict | None = None):
        super().__init__()
        d_in, d_sae = count(d_in, "d_in", error=SAEError), count(width, "width", error=SAEError)
        self.architecture = choice(architecture, "SAE architecture", ARCHITECTURES, SAEError)
        if (architecture == "topk") != (k is not None):
            raise SAEError(f"k (features per token) is given for architecture 'topk' and only for it; "
                           f"got architecture {architecture!r} with k={k!r}.")
        self.k = None if k is None else count(k, "k", 1, d_sae, SAEError)
        self.site, self.hook, self.model = site, hook, model
        self.kind = kind or {"standard": "relu_l1"}.get(architecture, architecture)
        self.meta = dict(meta or {})
        gen = torch.Generator().manual_seed(int(seed))
        w_dec = torch.rand(d_sae, d_in, generator=gen) * 2 - 1
        w_dec = 0.1 * w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w_dec)
        self.W_enc = torch.nn.Parameter(w_dec.T.clone().contiguous())
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        if architecture == "jumprelu":
            self.register_buffer("threshold", torch.zeros(d_sae))
        self.requires_grad_(False)  # an SAE is used, not trained, outside train_sae: outputs carry no graph

    # ---- shape
    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def name(self) -> str:
        """The features' site name, ``"sae:<site>"`` (``"sae"`` for an SAE of no model's site)."""
        return PREFIX + self.site if self.site else "sae"

    # ---- the code
    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-activations ``z = (x - b_dec) @ W_enc + b_enc``, ``[..., d_sae]``."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def _activate(self, z: torch.Tensor) -> torch.Tensor:
        """The features of pre-activations ``z`` (the architecture's activation)."""
        if self.architecture == "standard":
            return torch.relu(z)
        if self.architecture == "jumprelu":
            return torch.where(z > self.threshold, z, torch.zeros((), dtype=z.dtype))
        top = torch.topk(z, self.k, dim=-1)
        return torch.zeros_like(z).scatter_(-1, top.indices, torch.relu(top.values))

    def encode(self, activations: Any) -> torch.Tensor:
        """Features ``[..., d_sae]`` of activations ``[..., d_in]`` (a tensor or an array).

        Example:
            >>> import numpy as np
            >>> from llmscope.sae import SAE
            >>> SAE(8, 16, "standard", seed=0).encode(np.zeros((2, 8))).shape
            torch.Size([2, 16])
        """
        return self._activate(self._pre(self._input(activations)))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``features @ W_dec + b_dec`` of features ``[..., d_sae]``."""
        return features @ self.W_dec + self.b_dec

    def forward(self, activations: Any) -> torch.Tensor:
        """The reconstruction of ``activations``: ``decode(encode(activations))``."""
        return self.decode(self.encode(activations))

    def _input(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(np.asarray(x, dtype=np.float32))
            except (TypeError, ValueError):
                raise SAEError.Type(f"an SAE encodes an array [..., {self.d_in}] of numbers; "
                                    f"got {type(x).__name__}.") from None
        if x.ndim == 0 or x.shape[-1] != self.d_in:
            raise SAEError(f"this SAE reads {self.d_in} values per token (its site {self.site or '?'}); "
                           f"got an array of shape {tuple(x.shape)}.")
        return x.to(self.W_enc.dtype)

    def directions(self, indices: Any = None) -> torch.Tensor:
        """Unit decoder directions ``[n, d_in]`` of some features (all by default), detached."""
        idx = self._indices(indices)
        w = self.W_dec.detach()[torch.as_tensor(idx)]
        return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def _indices(self, indices: Any = None) -> np.ndarray:
        """Feature indices as an int array (None = all), each in ``0..d_sae-1``; a SiteError
        (``.Range``/``.Type``) otherwise, as for any unit."""
        return self.unit_site.check_units(indices)

    @property
    def unit_site(self) -> "Site":
        """The features as a :class:`~llmscope.sites.Site` named ``"sae:<site>"`` (kind ``"sae"``,
        unit ``"feature"``), as a recording of them holds it."""
        from llmscope.sites import Site

        return Site(self.name, self.hook or self.name, "sae", None, (self.d_sae,), "feature")

    # ---- identity
    @property
    def fingerprint(self) -> str:
        """A hash of the SAE's weights (its architecture, shapes and every value)."""
        return weights_hash(self.architecture, self.k, self._tensors())

    def _check_model(self, model: "TransformerBridge", error: type = SAEError) -> None:
        """Raise ``error`` unless ``model`` has the weights the SAE was trained on: by its
        :class:`~llmscope.identity.Fingerprint`, or else by the print of the model that made the
        recording it was trained on. An SAE that knows neither passes."""
        fix = "Load the model it was trained on, or train an SAE on this model's recording."
        if self.model is not None:
            identity.check(self.model, model, f"the SAE of {self.site}", "weights", error, fix)
            return
        made_by = self.meta.get("recording_model")
        if isinstance(made_by, dict):
            from llmscope import recording

            if made_by.get("fingerprint") != recording.fingerprint(model):
                raise error(f"the SAE of {self.site} was trained on a recording of {made_by.get('name')!r}; this "
                            f"model is {model.cfg.model_name!r} with other weights. {fix}")

    def _tensors(self) -> dict[str, torch.Tensor]:
        """The weights under SAELens's key names."""
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.architecture == "jumprelu":
            out["threshold"] = self.threshold
        return out

    # ---- files (SAELens's layout, see llmscope.sae.io)
    def save(self, path: str | Path, dtype: str = "float32") -> Path:
        """Write ``sae_weights.safetensors`` and ``cfg.json`` into the folder ``path`` (SAELens's layout)."""
        from llmscope.sae import io

        return io.save(self, path, dtype)

    @classmethod
    def load(cls, path: str | Path, model: "TransformerBridge | None" = None) -> "SAE":
        """An SAE saved by :meth:`save` or by SAELens (6.x, or the flat pre-6 ``cfg.json``);
        with ``model``, it must be the model the SAE was trained on."""
        from llmscope.sae import io

        sae = io.load(path)
        if model is not None:
            sae._check_model(model)
        return sae

    # ---- using it
    def evaluate(self, model: "TransformerBridge", stimuli: "Stimuli", **kwargs: Any) -> "SAEMetrics":
        """SAELens's metrics on ``stimuli`` (see :func:`llmscope.sae.metrics.evaluate`)."""
        from llmscope.sae.metrics import evaluate

        return evaluate(self, model, stimuli, **kwargs)

    def features(self, recording: "Recording", store: Any = None, progress: bool = True) -> "Recording":
        """The features as a recording of the site ``"sae:<site>"`` (see :func:`llmscope.sae.features.record_features`)."""
        from llmscope.sae.features import record_features

        return record_features(self, recording, store=store, progress=progress)

    @property
    def model_name(self) -> str | None:
        """The name of the model the SAE belongs to (None if unknown)."""
        if self.model is not None:
            return self.model.name
        made_by = self.meta.get("recording_model")
        return made_by.get("name") if isinstance(made_by, dict) else None

    def __repr__(self) -> str:
        k = f", k={self.k}" if self.k else ""
        owner = f" of {self.model_name}" if self.model_name else ""
        return (f"SAE({self.site or '?'}{owner}: {self.d_in} -> {self.d_sae} features, "
                f"{self.architecture}{k}, trained as {self.kind!r})")


__all__ = ["SAE", "ARCHITECTURES", "KINDS", "PREFIX", "recording_model"]
