"""Train an organism: a GPT-2-architecture model on the toy English, on the CPU, seeded.

Run ``python -m llmscope.organisms.train grammar-2l``. It writes the HF folder
(config.json, model.safetensors, tokenizer files) and card.json into
``llmscope/organisms/<name>/``, then measures the card's facts with `verify`.

Example:
    >>> from llmscope.organisms.train import ORGANISMS
    >>> ORGANISMS["grammar-2l"].n_layer
    2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from llmscope.progress import progress_bar
from transformers import GPT2Config, GPT2LMHeadModel

from llmscope.behaviour import next_token_loss
from llmscope.organisms.facts import attention_scores, failures, verify
from llmscope.stimuli.toy_grammar import BOS_ID, PAD_ID, Grammar, predictable_repeats
from llmscope.organisms.tokenizer import word_tokenizer

HERE = Path(__file__).parent
EVAL_SEED = 99  # the held-out batch that traces training; training batches use seeds >= 10**6


@dataclass(frozen=True)
class TrainConfig:
    """Architecture and schedule of one organism. `tokens` counts positions trained on."""

    n_layer: int = 2
    d_model: int = 128
    n_head: int = 4
    d_mlp: int = 512
    n_ctx: int = 128
    grammar_seed: int = 0
    seed: int = 0
    batch_size: int = 32
    tokens: int = 10_000_000
    lr: float = 3e-3
    warmup_steps: int = 300
    weight_decay: float = 0.01
    position_scale: float = 0.1  # initial position embeddings: this x sinusoids
    eval_every: int = 100
    eval_docs: int = 64

    @property
    def steps(self) -> int:
        return math.ceil(self.tokens / (self.batch_size * self.n_ctx))


ORGANISMS = {"grammar-2l": TrainConfig()}


def sinusoids(n_ctx: int, d_model: int) -> torch.Tensor:
    """Sinusoidal position codes `[n_ctx, d_model]`, as in Vaswani et al. (2017)."""
    angle = torch.arange(n_ctx)[:, None] / n_ctx ** (torch.arange(0, d_model, 2)[None] / d_model)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)


def new_model(cfg: TrainConfig, vocab_size: int) -> GPT2LMHeadModel:
    """An untrained GPT-2 of `cfg`'s shape, without dropout. Its learned position embeddings
    start as scaled sinusoids: from GPT-2's random start, the previous-token head stayed
    blurred over three positions for the whole run (best score 0.29 at 10M tokens, against
    0.47 with this start)."""
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=vocab_size, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=cfg.d_mlp, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=BOS_ID, eos_token_id=2, pad_token_id=PAD_ID))
    with torch.no_grad():
        model.transformer.wpe.weight.copy_(cfg.position_scale * sinusoids(cfg.n_ctx, cfg.d_model))
    return model


def token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Loss of each token given its prefix, `[batch, pos - 1]` (0 at padding): the project's
    one per-token loss (:func:`llmscope.behaviour.next_token_loss`) without its empty first column."""
    return next_token_loss(logits, ids)[:, 1:] * (ids[:, 1:] != PAD_ID)


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, ids: torch.Tensor, repeat_of: np.ndarray) -> dict:
    """Held-out loss on fresh tokens and on predictable repeats, and the best head scores."""
    model.set_attn_implementation("eager")  # only eager attention returns its pattern
    out = model(ids, output_attentions=True)
    model.set_attn_implementation("sdpa")
    loss = token_losses(out.logits, ids)
    rep = torch.from_numpy(predictable_repeats(repeat_of)[:, 1:])
    fresh = (ids[:, 1:] != PAD_ID) & torch.from_numpy(repeat_of[:, 1:] < 0)
    sums, counts = zip(*(attention_scores(a, ids, repeat_of) for a in out.attentions))
    scores = np.stack(sums) / counts[0][None, :, None]  # [layer, kind, head]
    return {"loss_fresh": loss[fresh].mean().item(), "loss_repeat": loss[rep].mean().item(),
            "previous_token_score": float(scores[:, 0].max()), "induction_score": float(scores[:, 1].max())}


def induction_onset(curve: dict) -> dict:
    """When repeated spans became cheaper than fresh text: the first evaluation at which the
    gap (fresh loss - repeat loss) reached half its final size, with the losses around it."""
    gap = np.array(curve["loss_fresh"]) - np.array(curve["loss_repeat"])
    i = int(np.argmax(gap >= gap[-1] / 2))
    before = max(i - 1, 0)
    return {"tokens": curve["tokens"][i], "step": curve["step"][i],
            "repeat_loss_before": curve["loss_repeat"][before],
            "repeat_loss_at": curve["loss_repeat"][i],
            "fresh_loss_before": curve["loss_fresh"][before],
            "fresh_loss_at": curve["loss_fresh"][i], "gap_final": round(float(gap[-1]), 4)}


def train(name: str, cfg: TrainConfig, folder: Path) -> dict:
    """Train, save the HF folder and a card without facts; return the card."""
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    grammar = Grammar(cfg.grammar_seed)
    model = new_model(cfg, len(grammar.vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps)
                                              * (0.55 + 0.45 * math.cos(math.pi * s / cfg.steps)))
    eval_ids, eval_repeat_of = grammar.encode(cfg.eval_docs, seed=EVAL_SEED, max_tokens=cfg.n_ctx)
    eval_ids = torch.from_numpy(eval_ids)
    curve: dict[str, list] = {}
    recent: list[float] = []
    start = time.time()
    bar = progress_bar(range(cfg.steps), desc=f"train {name}", unit="step")
    for step in bar:
        if step % cfg.eval_every == 0 or step == cfg.steps - 1:
            point = {"step": step, "tokens": step * cfg.batch_size * cfg.n_ctx,
                     **{k: round(v, 4) for k, v in evaluate(model, eval_ids, eval_repeat_of).items()}}
            for k, v in point.items():
                curve.setdefault(k, []).append(v)
            bar.set_postfix(fresh=point["loss_fresh"], repeat=point["loss_repeat"])
        ids = torch.from_numpy(grammar.encode(cfg.batch_size, seed=10**6 + step, max_tokens=cfg.n_ctx)[0])
        loss = token_losses(model(ids).logits, ids).sum() / (ids[:, 1:] != PAD_ID).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-100:]
    wall = time.time() - start

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    word_tokenizer(grammar.vocab).save_pretrained(folder)
    card = {
        "name": name,
        "grammar": grammar.config(),
        "training": {
            "config": asdict(cfg), "steps": cfg.steps,
            "tokens_seen": cfg.steps * cfg.batch_size * cfg.n_ctx,
            "wall_time_s": round(wall, 1), "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "final_train_loss": round(float(np.mean(recent)), 4),
            "final_held_out_loss": {"fresh": curve["loss_fresh"][-1], "repeat": curve["loss_repeat"][-1]},
            "induction_onset": induction_onset(curve),
            "curve": curve,
        },
    }
    (folder / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def _passive_threads() -> None:
    """Re-run this command with OMP_WAIT_POLICY=PASSIVE unless it is set: OpenMP threads that
    spin while waiting make training several times slower on cores shared with other work,
    and the policy is read once, when torch loads (before this module runs)."""
    if "OMP_WAIT_POLICY" not in os.environ:
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        os.execve(sys.executable, [sys.executable, "-m", __spec__.name, *sys.argv[1:]], env)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        _passive_threads()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(ORGANISMS))
    parser.add_argument("--tokens", type=int, help="override the number of training tokens")
    parser.add_argument("--out", type=Path, help="folder to write (default: the package's)")
    args = parser.parse_args(argv)
    cfg = ORGANISMS[args.name]
    if args.tokens:
        cfg = replace(cfg, tokens=args.tokens)
    folder = args.out or HERE / args.name
    card = train(args.name, cfg, folder)
    facts = verify(folder)
    print(json.dumps({"wall_time_s": card["training"]["wall_time_s"], **facts}, indent=1))
    bad = failures(facts)
    for line in bad:
        print("FAILED:", line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
