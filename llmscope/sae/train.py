"""Training an SAE on a recorded site, streamed from the recording's zarr store.

Rows are read in *blocks* of consecutive tokens; each epoch visits the blocks in a seeded
random order, a *buffer* of blocks at a time (``BUFFER_ROWS`` tokens at most in memory), and
shuffles the rows of each buffer with a seed of its own before cutting it into batches. So the
order of the training rows is a function of ``seed`` alone, memory is one buffer whatever the
size of the recording, and a run can stop at a buffer's end and resume exactly there.

Inputs are scaled by one constant so that their mean norm is ``sqrt(d_in)`` (SAELens's
``expected_average_only_in``), measured on the first buffer; the scale is folded into the
weights at the end, so the saved SAE reads raw activations (``normalize_activations: "none"``).
``b_dec`` starts at the mean of that buffer; decoder rows start at norm 0.1 (SAELens), or at
norm 1 for ``topk``/``batchtopk``, which keep them at norm 1 after every step (Gao et al. 2024).

Losses (``x`` scaled, ``x_hat`` its reconstruction, ``f`` the features, per token, averaged):

==============  ===========================================================================
``topk``        ``|x - x_hat|^2``, plus AuxK: the ``d_in/2`` largest dead features reconstruct
                the residual ``x - x_hat`` (weight 1/32, scaled down while few are dead)
``batchtopk``   as topk, keeping the ``k x batch`` largest relu(z) of the whole batch; the
                threshold (a running mean of the smallest kept value) makes it a JumpReLU SAE
``relu_l1``     ``|x - x_hat|^2 + penalty * sum_i f_i |W_dec[i]|`` (penalty warmed up over 5% of steps)
``jumprelu``    ``|x - x_hat|^2 + penalty * L0``, thresholds learned through the straight-through
                estimator of Rajamanoharan et al. 2024 (rectangle kernel, bandwidth 0.001)
==============  ===========================================================================

A feature is *dead* (for AuxK) when it has not fired on any of the last ``DEAD_WINDOW`` tokens (one
epoch's rows if fewer).
Adam, learning rate warmed up over 5% of the steps and decayed to 0 over the last 20%.

Checkpoints: with a recording on disk, the run keeps its state (weights, Adam's moments, the
step and the position in the epoch) in a folder beside the store, ``<store>.sae/<run>/``,
``checkpoint.safetensors`` (one file, replaced atomically, at most every ``CHECKPOINT_SECONDS``
seconds and at each epoch's end). Calling :func:`train_sae` again with the same arguments
resumes from it; the finished SAE is saved in the same folder (``cfg.json`` +
``sae_weights.safetensors``) and a third call returns it without training. The run's folder
name holds a hash of every argument that changes the result.

Example:
    >>> import llmscope
    >>> from llmscope.sae import train_sae
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> sae = train_sae(rec, "mlp.0", width=1024, k=16, epochs=1, progress=False)
    >>> sae
    SAE(mlp.0 of grammar-2l: 512 -> 1024 features, topk, k=16, trained as 'topk')
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from llmscope import checks
from llmscope.analysis import responses
from llmscope.checks import choice, count, flag, number
from llmscope.errors import SAEError
from llmscope.progress import progress_bar
from llmscope.recording import Recording
from llmscope.sae.model import KINDS, SAE, recording_model
from llmscope.stimuli import trials

BLOCK_ROWS = 2048  # consecutive tokens read at once
BUFFER_ROWS = 32768  # tokens held in memory at once (whole blocks)
DEAD_WINDOW = 200_000  # tokens without firing after which a feature is dead for AuxK (at most one epoch's rows)
CHECKPOINT_SECONDS = 60.0  # the least time between checkpoints (0: after every buffer)
CHECKPOINT = "checkpoint.safetensors"
AUX_WEIGHT = 1 / 32  # AuxK's weight (Gao et al. 2024)
THRESHOLD_LR = 0.01  # BatchTopK's running threshold (SAELens's topk_threshold_lr)
BANDWIDTH, INIT_THRESHOLD = 0.05, 0.05  # JumpReLU's straight-through estimator, in units of the scaled input
THRESHOLD_LR_SCALE = 30.0  # JumpReLU's log-thresholds learn this much faster than the weights
PENALTY = {"relu_l1": 5.0, "jumprelu": 0.1}


# ---------------------------------------------------------------- the rows


class _Rows:
    """The training rows: a site of a recording, read a block at a time, or an array in memory.

    ``keep`` marks the rows used (BOS rows out unless asked)."""

    def __init__(self, data: Any, site: str | None, include_bos: bool):
        if isinstance(data, Recording):
            if site is None:
                raise SAEError(f"train_sae(recording, site): name the recorded site to train on, one of {data.sites}.")
            s = data.site(responses.check_site(data, site))
            if len(s.shape) != 1:
                raise SAEError(f"an SAE reads one vector per token; {s.name} has shape {s.shape} per token "
                               "(a head's values): train on mlp.L or resid.L.")
            self.recording, self.site, self.array = data, s, None
            self.n, self.d_in = len(data), s.n_units
            self.keep = trials.rows(data.tokens, include_bos)
        else:
            try:
                array = np.asarray(data, dtype=np.float32)
            except (TypeError, ValueError):
                raise SAEError.Type("train_sae trains on a Recording (with a site) or an array [n_tokens, d_in]; "
                                    f"got {type(data).__name__}.") from None
            if array.ndim != 2 or min(array.shape) < 1:
                raise SAEError(f"train_sae trains on an array [n_tokens, d_in]; got shape {array.shape}.")
            if site is not None:
                raise SAEError.Type(f"site={site!r} names a site of a recording; an array is trained on as it is.")
            checks.finite(array, "the training rows", error=SAEError, fix="give finite values")
            self.recording, self.site, self.array = None, None, array
            self.n, self.d_in = array.shape
            self.keep = np.ones(self.n, dtype=bool)
        self.n_blocks = math.ceil(self.n / BLOCK_ROWS)

    def identity(self) -> dict[str, Any]:
        """What the rows are: the recording's model, stimuli and size, or a hash of the array."""
        if self.recording is None:
            return {"array": hashlib.sha256(self.array.tobytes()).hexdigest()[:16], "shape": list(self.array.shape)}
        meta = self.recording._meta
        return {"model": meta.get("fingerprints", meta.get("model")), "stimuli": meta["stimuli"], "site": self.site.name,
                "rows": int(self.keep.sum())}

    def read(self, block: int) -> np.ndarray:
        """The kept rows of one block, float32 ``[n, d_in]``."""
        lo, hi = block * BLOCK_ROWS, min((block + 1) * BLOCK_ROWS, self.n)
        keep = self.keep[lo:hi]
        if self.array is not None:
            return self.array[lo:hi][keep]
        mask = np.zeros(self.n, dtype=bool)
        mask[lo:hi] = True
        data = self.recording.select(mask).responses(self.site.name)
        return responses.check_finite(self.recording, self.site, data, lo)[keep]

    def kept(self, block: int) -> int:
        return int(self.keep[block * BLOCK_ROWS:(block + 1) * BLOCK_ROWS].sum())


@dataclass(frozen=True)
class _Plan:
    """The order of the rows: per epoch, buffers of blocks, each cut into batches."""

    n_blocks: int
    buffer_blocks: int
    batch_size: int
    epochs: int
    seed: int

    def buffers(self, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
        return [order[i:i + self.buffer_blocks] for i in range(0, self.n_blocks, self.buffer_blocks)]

    def shuffle(self, epoch: int, buffer: int, n: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, buffer, 1]).permutation(n)

    def steps(self, rows: _Rows) -> list[list[int]]:
        """Batches per buffer, per epoch."""
        return [[math.ceil(sum(rows.kept(b) for b in buf) / self.batch_size) for buf in self.buffers(e)]
                for e in range(self.epochs)]


# ---------------------------------------------------------------- JumpReLU's straight-through estimator


def _kernel(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, threshold):
        ctx.save_for_backward(z, threshold)
        return z * (z > threshold)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        d_threshold = -(threshold / BANDWIDTH) * _kernel((z - threshold) / BANDWIDTH) * grad
        return (z > threshold) * grad, d_threshold.sum(0)


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, threshold):
        ctx.save_for_backward(z, threshold)
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        return torch.zeros_like(z), (-(1.0 / BANDWIDTH) * _kernel((z - threshold) / BANDWIDTH) * grad).sum(0)


# ---------------------------------------------------------------- the training step


def _decode(f_idx: Any, f: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``f @ W_dec`` without the bias, reading only the rows of W_dec of active features:
    ``f_idx`` is ``[n, k]`` indices (k values per row in ``f``) or ``(indices, offsets)`` of a
    ragged set (``f`` flat), so a token costs (active features) x d_in, not d_sae x d_in."""
    if isinstance(f_idx, tuple):
        return F.embedding_bag(f_idx[0], W_dec, f_idx[1], per_sample_weights=f, mode="sum")
    return _TopKDecode.apply(f_idx, f, W_dec)


class _TopKDecode(torch.autograd.Function):
    """``embedding_bag`` of k rows per token, with a backward of two GEMMs instead of PyTorch's,
    which sorts all n x k indices (on a CPU the largest cost of a step after the GEMMs)."""

    @staticmethod
    def forward(ctx, idx, vals, W):
        ctx.save_for_backward(idx, vals, W)
        return F.embedding_bag(idx, W, per_sample_weights=vals, mode="sum")

    @staticmethod
    def backward(ctx, grad):
        idx, vals, W = ctx.saved_tensors
        grad_vals = (grad @ W.T).gather(1, idx)
        dense = torch.zeros(len(idx), W.shape[0], dtype=vals.dtype).scatter_(1, idx, vals)
        return None, grad_vals, dense.T @ grad  # a GEMM beats index_add over n x k rows of d_in


def _sparse(acts: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Features as (indices, values) for :func:`_decode` when few are active, else as they are."""
    rows, cols = acts.nonzero(as_tuple=True)
    if len(cols) > 0.05 * acts.numel():
        return None, acts
    offsets = torch.searchsorted(rows, torch.arange(acts.shape[0]))
    return (cols, offsets), acts[rows, cols]


class _Trainer:
    def __init__(self, sae: SAE, kind: str, k: int | None, penalty: float, lr: float, d_in: int, dead_window: int,
                 total_steps: int):
        self.sae, self.kind, self.k, self.penalty, self.lr = sae, kind, k, penalty, lr
        self.total, self.dead_window = total_steps, dead_window
        if kind == "jumprelu":
            self.log_threshold = torch.nn.Parameter(torch.full((sae.d_sae,), math.log(INIT_THRESHOLD)))
        params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
        self.names = ["W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"][:len(params) + (kind == "jumprelu")]
        groups = [{"params": params, "scale": 1.0}]
        if kind == "jumprelu":  # Adam moves a parameter by ~lr a step: thresholds need more in a short run
            groups.append({"params": [self.log_threshold], "scale": THRESHOLD_LR_SCALE})
        self.opt = torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), fused=True)  # one pass per tensor
        self.since_fired = torch.zeros(sae.d_sae, dtype=torch.float64)
        self.threshold = torch.zeros((), dtype=torch.float64)  # batchtopk's running threshold
        self.unit_decoder = kind in ("topk", "batchtopk")

    def schedule(self, step: int) -> float:
        warm, decay = max(1, self.total // 20), max(1, self.total // 5)
        if step < warm:
            return self.lr * (0.1 + 0.9 * step / warm)
        return self.lr * min(1.0, (self.total - step) / decay)

    def step(self, x: torch.Tensor, step: int) -> dict[str, float]:
        sae = self.sae
        for group in self.opt.param_groups:
            group["lr"] = self.schedule(step) * group["scale"]
        # (x - b_dec) @ W_enc, with b_dec's gradient through a vector, not a third batch-sized GEMM
        z = x @ sae.W_enc + (sae.b_enc - sae.b_dec @ sae.W_enc)
        aux = x.new_zeros(())
        if self.kind == "topk":
            top = torch.topk(z, self.k, dim=-1)
            vals = torch.relu(top.values)
            x_hat = _decode(top.indices, vals, sae.W_dec) + sae.b_dec
            fired, l0 = top.indices[vals > 0], (vals > 0).sum(-1).float().mean()
        elif self.kind == "batchtopk":
            acts = torch.relu(z)
            flat = torch.topk(acts.flatten(), min(acts.numel(), self.k * acts.shape[0]))
            kept = torch.zeros_like(acts.flatten()).scatter(0, flat.indices, flat.values).view_as(acts)
            idx, vals = _sparse(kept)
            x_hat = (_decode(idx, vals, sae.W_dec) if idx is not None else kept @ sae.W_dec) + sae.b_dec
            positive = flat.values[flat.values > 0]
            if len(positive):
                self.threshold = (1 - THRESHOLD_LR) * self.threshold + THRESHOLD_LR * positive.min().double().detach()
            fired, l0 = kept.detach().nonzero()[:, 1], (kept > 0).sum(-1).float().mean()
        elif self.kind == "relu_l1":
            acts = torch.relu(z)
            x_hat = acts @ sae.W_dec + sae.b_dec
            warm = min(1.0, (step + 1) / max(1, self.total // 20))
            aux = warm * self.penalty * (acts * sae.W_dec.norm(dim=1)).sum(-1).mean()
            fired, l0 = (acts > 0).nonzero()[:, 1], (acts > 0).sum(-1).float().mean()
        else:
            threshold = self.log_threshold.exp()
            acts = _JumpReLU.apply(z, threshold)
            x_hat = acts @ sae.W_dec + sae.b_dec
            aux = self.penalty * _Step.apply(z, threshold).sum(-1).mean()
            fired, l0 = (acts > 0).nonzero()[:, 1], (acts > 0).sum(-1).float().mean()
        mse = (x_hat - x).pow(2).sum(-1).mean()
        if self.unit_decoder:
            aux = aux + self._auxk(x, x_hat, z)
        loss = mse + aux
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            if self.unit_decoder:
                sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
            self.since_fired += x.shape[0]
            self.since_fired[torch.bincount(fired.flatten(), minlength=sae.d_sae) > 0] = 0
        return {"mse": float(mse.detach()), "l0": float(l0), "dead": float((self.since_fired > self.dead_window).float().mean())}

    def _auxk(self, x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """AuxK (Gao et al. 2024): the largest dead pre-activations reconstruct the residual."""
        dead = self.since_fired > self.dead_window
        n_dead = int(dead.sum())
        if n_dead == 0:
            return x.new_zeros(())
        k_aux = self.sae.d_in // 2
        scale = min(n_dead / k_aux, 1.0)
        top = torch.topk(z.masked_fill(~dead, -torch.inf), min(k_aux, n_dead), dim=-1)
        recon = _decode(top.indices, torch.relu(top.values), self.sae.W_dec)
        return AUX_WEIGHT * scale * (recon - (x - x_hat).detach()).pow(2).sum(-1).mean()

    # ---- state
    def _params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.opt.param_groups for p in group["params"]]

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"param.{n}": p.detach().clone() for n, p in zip(self.names, self._params())}
        for n, p in zip(self.names, self._params()):
            st = self.opt.state.get(p)
            if st:
                out.update({f"adam.{n}.exp_avg": st["exp_avg"], f"adam.{n}.exp_avg_sq": st["exp_avg_sq"],
                            f"adam.{n}.step": torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)})
        out.update(since_fired=self.since_fired, threshold=self.threshold.reshape(1))
        return {k: v.contiguous() for k, v in out.items()}

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in zip(self.names, self._params()):
                p.copy_(tensors[f"param.{n}"])
                if f"adam.{n}.step" in tensors:
                    self.opt.state[p] = {"step": tensors[f"adam.{n}.step"].reshape(()).clone(),
                                         "exp_avg": tensors[f"adam.{n}.exp_avg"].clone(),
                                         "exp_avg_sq": tensors[f"adam.{n}.exp_avg_sq"].clone()}
        self.since_fired = tensors["since_fired"].clone()
        self.threshold = tensors["threshold"].reshape(()).clone()


# ---------------------------------------------------------------- checkpoints


def _run_folder(rows: _Rows, checkpoint: Any, settings: dict[str, Any]) -> Path | None:
    """Where the run keeps its checkpoint and result (None: nowhere)."""
    if checkpoint is False or (checkpoint is None and (rows.recording is None or rows.recording.path is None)):
        return None
    key = hashlib.sha256(json.dumps({"rows": rows.identity(), **settings}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:12]
    name = f"{settings['site'] or 'array'}.{settings['kind']}.w{settings['width']}.{key}"
    if checkpoint is None:
        store = Path(rows.recording.path)
        return store.parent / f"{store.name}.sae" / name
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise SAEError.Type(f"checkpoint is None (beside the recording), False (none) or a folder path; "
                            f"got {type(checkpoint).__name__}.")
    return Path(checkpoint).expanduser() / name


def _save_checkpoint(folder: Path, trainer: _Trainer, position: dict[str, Any]) -> None:
    """The run's state in one safetensors file (its position in the metadata), replaced atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CHECKPOINT + ".partial")
    save_file(trainer.state(), str(tmp), metadata={"position": json.dumps(position)})
    tmp.replace(folder / CHECKPOINT)


def _load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            position = json.loads(f.metadata()["position"])
            return {k: f.get_tensor(k) for k in f.keys()}, position
    except (SafetensorError, KeyError, ValueError, TypeError) as exc:
        raise SAEError(f"the checkpoint {path} is damaged ({type(exc).__name__}: {exc}); delete it to train "
                       "from the start.") from None


# ---------------------------------------------------------------- the entry point


def train_sae(recording: Recording | Any, site: str | None = None, width: int | None = None, kind: str = "topk",
              k: int | None = 32, *, penalty: float | None = None, epochs: int = 10, batch_size: int = 1024,
              lr: float = 1e-3, seed: int = 0, include_bos: bool = False, checkpoint: Any = None,
              progress: bool = True) -> SAE:
    """Train a sparse autoencoder on a recorded site (see the module docstring).

    Args:
        recording: a :class:`~llmscope.Recording` holding ``site``, or an array ``[n_tokens, d_in]``.
        site: the recorded site (``"mlp.0"``, ``"resid.15"``); None for an array.
        width: number of features (default 8 x d_in).
        kind: ``"topk"``, ``"batchtopk"``, ``"relu_l1"`` or ``"jumprelu"``.
        k: features per token (``topk``), or on average (``batchtopk``); ignored otherwise.
        penalty: the sparsity weight of ``relu_l1`` (L1) and ``jumprelu`` (L0); default ``PENALTY``.
        epochs: passes over the rows.
        batch_size: tokens per step.
        lr: Adam's peak learning rate.
        seed: seeds the initial weights and the order of the rows.
        include_bos: train on BOS rows too (left out by default: their norms are outliers).
        checkpoint: None (beside a recording on disk, nowhere otherwise), False (never), or a folder;
            a checkpoint is written at most every ``CHECKPOINT_SECONDS`` and at each epoch's end.
        progress: show a progress bar (steps; ``TQDM_DISABLE=1`` hides it).

    Memory holds one buffer of ``BUFFER_ROWS`` tokens (whole blocks of ``BLOCK_ROWS``); a feature
    counts as dead for AuxK after one epoch's rows without firing, at most ``DEAD_WINDOW``.

    Returns:
        The trained :class:`~llmscope.sae.SAE`, bound to the recording's model and site; its
        ``meta`` holds the settings, tokens seen, seconds and the last epoch's mean ``mse``/``fvu``/``l0``.

    Raises:
        SAEError: bad arguments (each named with its valid range), a site with several values
            per token, a damaged checkpoint.
        SiteError: a site the recording does not hold.
    """
    kind = choice(kind, "kind", list(KINDS), SAEError)
    rows = _Rows(recording, site, flag(include_bos, "include_bos", SAEError))
    width = 8 * rows.d_in if width is None else count(width, "width", 2, None, SAEError)
    if kind in ("topk", "batchtopk"):
        k = count(k, "k", 1, width, SAEError)
        penalty = None
    else:
        k = None
        penalty = number(PENALTY[kind] if penalty is None else penalty, "penalty", 0, None, SAEError)
    epochs = count(epochs, "epochs", error=SAEError)
    batch_size = count(batch_size, "batch_size", error=SAEError)
    lr = number(lr, "lr", error=SAEError)
    if lr <= 0:
        raise SAEError.Range(f"lr must be a finite number > 0, got {lr!r}.")
    seed = checks.seed(seed, "seed", SAEError)
    buffer_blocks = max(1, BUFFER_ROWS // BLOCK_ROWS)
    dead_window = min(DEAD_WINDOW, int(rows.keep.sum()))
    flag(progress, "progress", SAEError)
    if rows.keep.sum() < 2:
        raise SAEError(f"train_sae needs at least 2 training rows; there are {int(rows.keep.sum())}.")

    site_name = rows.site.name if rows.site else None
    settings = dict(site=site_name, width=width, kind=kind, k=k, penalty=penalty, epochs=epochs, batch_size=batch_size,
                    lr=lr, seed=seed, include_bos=include_bos, buffer_blocks=buffer_blocks, dead_window=dead_window)
    folder = _run_folder(rows, checkpoint, settings)
    if folder is not None and (folder / "cfg.json").is_file():
        return SAE.load(folder)
    plan = _Plan(rows.n_blocks, buffer_blocks, batch_size, epochs, seed)
    steps = plan.steps(rows)
    total = sum(map(sum, steps))

    model, legacy = recording_model(rows.recording) if rows.recording is not None else (None, None)
    sae = SAE(rows.d_in, width, "topk" if kind == "topk" else "jumprelu" if kind in ("batchtopk", "jumprelu")
              else "standard", k=k if kind == "topk" else None, seed=seed, site=site_name,
              hook=rows.site.hook if rows.site else None, model=model, kind=kind)
    if kind in ("topk", "batchtopk"):
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.T)
    sae.requires_grad_(True)
    trainer = _Trainer(sae, kind, k, penalty or 0.0, lr, rows.d_in, dead_window, total)

    resumed = _load_checkpoint(folder) if folder is not None else None
    if resumed is not None:
        tensors, position = resumed
        trainer.restore(tensors)
    else:
        position = {"epoch": 0, "buffer": 0, "step": 0, "scale": None, "seconds": 0.0, "stats": {}}
    started, last_save = time.perf_counter(), time.perf_counter()
    bar = progress_bar(total=total, initial=position["step"], unit="step", show=progress,
                       desc=f"train SAE {site_name or ''}".rstrip())
    with bar:
        for epoch in range(position["epoch"], epochs):
            sums = np.zeros(4)  # mse, variance, l0, batches (this epoch, for info)
            for b, blocks in enumerate(plan.buffers(epoch)):
                if epoch == position["epoch"] and b < position["buffer"]:
                    continue
                x = np.concatenate([rows.read(int(i)) for i in blocks])
                x = torch.from_numpy(x[plan.shuffle(epoch, b, len(x))])
                if position["scale"] is None:  # the first buffer sets the scale and b_dec
                    position["scale"] = float(math.sqrt(rows.d_in) / x.norm(dim=1).mean().clamp_min(1e-12))
                    with torch.no_grad():
                        sae.b_dec.copy_(x.mean(0) * position["scale"])
                x = x * position["scale"]
                variance = float((x - x.mean(0)).pow(2).sum(-1).mean())
                for lo in range(0, len(x), batch_size):
                    out = trainer.step(x[lo:lo + batch_size], position["step"])
                    position["step"] += 1
                    sums += [out["mse"], variance, out["l0"], 1]
                    bar.update(1)
                    if not bar.disable and position["step"] % 10 == 0:
                        bar.set_postfix(fvu=f"{out['mse'] / variance:.3f}", l0=f"{out['l0']:.1f}",
                                        dead=f"{out['dead']:.1%}")
                position.update(buffer=b + 1, seconds=position["seconds"] + time.perf_counter() - started)
                started = time.perf_counter()
                if folder is not None and time.perf_counter() - last_save >= CHECKPOINT_SECONDS:
                    _save_checkpoint(folder, trainer, position)
                    last_save = time.perf_counter()
            if sums[3]:
                position["stats"] = {"mse": sums[0] / sums[3], "fvu": sums[0] / sums[1], "l0": sums[2] / sums[3],
                                     "dead": float((trainer.since_fired > dead_window).float().mean())}
            position.update(epoch=epoch + 1, buffer=0)
            if folder is not None:
                _save_checkpoint(folder, trainer, position)
                last_save = time.perf_counter()
    _finish(sae, trainer, kind, position["scale"])
    sae.requires_grad_(False)
    sae.meta = {"settings": settings, "steps": position["step"], "tokens_seen": int(epochs * rows.keep.sum()),
                "seconds": round(position["seconds"], 2), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "last_epoch": position["stats"], "scale": position["scale"],
                "dataset_path": rows.recording.name if rows.recording else None, "exclude_special_tokens": not include_bos,
                "context_size": None, "recording_model": legacy}
    if folder is not None:
        sae.save(folder)
        (folder / CHECKPOINT).unlink(missing_ok=True)
    return sae


def _finish(sae: SAE, trainer: _Trainer, kind: str, scale: float) -> None:
    """Fold the input scale into the weights (the SAE then reads raw activations) and set the
    JumpReLU thresholds."""
    with torch.no_grad():
        if kind == "batchtopk":
            sae.threshold.fill_(float(trainer.threshold))
        elif kind == "jumprelu":
            sae.threshold.copy_(trainer.log_threshold.exp())
        sae.W_enc.mul_(scale)
        sae.W_dec.div_(scale)
        sae.b_dec.div_(scale)


__all__ = ["train_sae", "BLOCK_ROWS", "BUFFER_ROWS", "DEAD_WINDOW", "CHECKPOINT_SECONDS", "PENALTY"]
