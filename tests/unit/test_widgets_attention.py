"""AttentionMap without a browser: what the page is sent, what it may ask, and the model left as it was."""

from __future__ import annotations

import contextlib
import gc
import json
import threading
import time
import weakref
import zlib
from typing import Iterator

import numpy as np
import pytest
import torch

import llmscope
from llmscope.analysis.heads import localize_heads
from llmscope.errors import AnalysisError, SiteError, WidgetError
from llmscope.widgets import AttentionMap, attention, wire
from tests.unit.widget_pages import ask, opened

REPEATED = "the dog runs . the dog runs ."
HOSTILE = "<img src=x onerror=alert(1)>"


def codes(p: torch.Tensor) -> np.ndarray:
    """Attention as byte codes, computed apart from the kernel: floor(p * 255 + 0.5) in float32, clamped."""
    x = p.float().numpy() * np.float32(255) + np.float32(0.5)
    return np.clip(np.floor(np.nan_to_num(x, nan=0.0)), 0, 255).astype(np.uint8)


def pooled(c: np.ndarray, t: int) -> np.ndarray:
    """The max over the cells of each of t x t pixels, cell i of n in pixel i * t // n."""
    starts = np.searchsorted(np.arange(c.shape[-1]) * t // c.shape[-1], np.arange(t))
    return np.maximum.reduceat(np.maximum.reduceat(c, starts, axis=-2), starts, axis=-1)


def settle(amap: AttentionMap) -> None:
    """Wait for the prompt running in the background, if any."""
    run = amap._pending
    if run is not None and run.thread is not None:
        run.thread.join(timeout=120)
        assert not run.thread.is_alive(), "the background run did not end"


def true_patterns(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's ``[head, query, key]`` pattern, from TransformerLens's own cache."""
    _, cache = model.run_with_cache(ids)
    return [cache[f"blocks.{L}.attn.hook_pattern"][0] for L in range(model.cfg.n_layers)]


def hooks_left(model) -> int:
    return sum(len(hp._forward_hooks) for hp in model.hook_dict.values())


@pytest.fixture(scope="module")
def amap(organism) -> AttentionMap:
    return AttentionMap(organism, REPEATED)


def test_a_prompt_is_shown_with_its_best_induction_head_in_focus(amap: AttentionMap) -> None:
    assert amap.prompt == REPEATED
    assert amap.focus == (1, 0)  # the organism's induction head (card.json)
    assert amap.unit == ("attn.1", 0)
    assert llmscope.sites.unit_index(amap._model, amap.unit).tolist() == [("attn.1", 0)]  # ready for lesion()


def test_the_overview_sends_thumbnails_scores_and_tokens(amap: AttentionMap, organism) -> None:
    reply, buffers = ask(amap, "_overview")
    data = opened(reply, buffers)
    stim = llmscope.stimuli.from_texts(organism, REPEATED, tag=False)
    assert data["tokens"] == stim.tokens["text"].tolist() and data["n_bos"] == 1
    assert data["version"] == amap.version and data["model"] == "grammar-2l"
    n = len(data["tokens"])
    thumbs = data["thumbs"]
    assert thumbs.dtype == np.uint8 and thumbs.shape == (2, 4, n, n)  # 9 tokens: no pooling below THUMB
    patterns = true_patterns(organism, stim.ids)
    for layer in range(2):
        np.testing.assert_array_equal(thumbs[layer], codes(patterns[layer]))
    scores = localize_heads(organism, stim, progress=False).df
    assert data["score_names"] == ["previous_token", "induction"]
    assert data["scores"].dtype == np.float16 and data["scores"].shape == (2, 4, 2)
    np.testing.assert_array_equal(data["scores"].reshape(8, 2),
                                  scores[["previous_token", "induction"]].to_numpy().astype(np.float16))
    assert reply["buffer_paths"] == [["thumbs", "buffer"], ["scores", "buffer"]]


def test_thumbnails_of_a_long_prompt_are_max_pooled_in_the_kernel(organism) -> None:
    stim = llmscope.stimuli.grammar(organism, n_docs=1, seed=0)
    amap = AttentionMap(organism, stim)
    data = opened(*ask(amap, "_overview"))
    t = attention.THUMB
    assert data["thumbs"].shape == (2, 4, t, t)
    patterns = true_patterns(organism, stim.ids)
    for layer in range(2):  # each pixel the strongest attention of its block of 127 / 24 cells
        np.testing.assert_array_equal(data["thumbs"][layer], pooled(codes(patterns[layer]), t))
    # the previous-token head shows its diagonal even pooled from 127 to 24 cells
    prev = data["thumbs"][0, 2]
    assert np.diag(prev).mean() > 3 * np.tril(prev, -2).mean()


def test_a_focused_head_is_its_pattern_as_byte_codes_of_the_lower_triangle(amap: AttentionMap, organism) -> None:
    reply, buffers = ask(amap, "_head", layer=0, head=2)
    data = opened(reply, buffers)
    assert (data["layer"], data["head"], data["version"]) == (0, 2, amap.version)
    pattern = data["pattern"]
    true = true_patterns(organism, amap._view.ids)[0][2].numpy()
    assert pattern.dtype == np.uint8 and pattern.shape == true.shape
    assert np.abs(pattern / 255 - true).max() <= 1 / 510 + 1e-6
    assert not np.triu(pattern, 1).any()
    meta = reply["data"]["pattern"]
    assert (meta["layout"], meta["compression"]) == ("tril", "deflate")
    n = true.shape[0]
    assert len(zlib.decompress(bytes(buffers[0]))) == n * (n + 1) // 2


def test_a_head_out_of_range_is_a_widget_range_error_in_the_page(amap: AttentionMap) -> None:
    reply, buffers = ask(amap, "_head", layer=2, head=0)
    assert reply["ok"] is False and buffers == []
    assert reply["error"]["type"] == "WidgetError.Range"
    assert "head (2, 0) is not a head of this model: layers 0..1, heads 0..3" in reply["error"]["message"]
    assert ask(amap, "_head", layer=0, head=-1)[0]["error"]["type"] == "WidgetError.Range"
    assert ask(amap, "_cancel", run="1")[0]["error"]["type"] == "WidgetError.Type"


@pytest.mark.parametrize("fields", [{"layer": "0", "head": 1}, {"layer": 0}, {"layer": 0, "head": 1, "x": 2}])
def test_a_malformed_head_request_is_answered_not_raised(amap: AttentionMap, fields: dict) -> None:
    reply, _ = ask(amap, "_head", seq=9, **fields)
    assert reply["seq"] == 9 and reply["ok"] is False
    assert reply["error"]["type"].startswith("WidgetError") and "malformed message" in reply["error"]["message"]


def test_a_new_prompt_runs_in_the_background_and_bumps_the_version(organism) -> None:
    amap = AttentionMap(organism, "the dog runs .")
    version, first = amap.version, amap._view.run
    states = []
    amap.observe(lambda change: states.append((change["new"]["state"], change["new"]["done"])), names="_progress")
    reply, _ = ask(amap, "_run", prompt=REPEATED)
    assert reply["ok"] and reply["data"] == {"run": first + 1, "n_tokens": 9, "started": True}
    settle(amap)
    assert amap.prompt == REPEATED and amap.version == version + 1
    assert states == [("running", 0), ("running", 1), ("running", 2), ("done", 2)]  # a report a layer
    data = opened(*ask(amap, "_overview"))
    assert data["tokens"][-4:] == ["the", "dog", "runs", "."] and data["run"] == first + 1 and data["complete"]
    same, _ = ask(amap, "_run", prompt=REPEATED)
    assert same["data"] == {"run": first + 1, "n_tokens": 9, "started": False}  # the same prompt does not run again
    assert amap.version == version + 1


@pytest.mark.parametrize("prompt, message", [
    ("", "empty prompt"),
    ("   \n", "empty prompt"),
    ("the dog runs . " * 40, "the prompt is 161 tokens but grammar-2l reads at most 128: shorten it."),
])
def test_an_empty_or_too_long_prompt_is_refused_and_nothing_changes(organism, prompt: str, message: str) -> None:
    amap = AttentionMap(organism, REPEATED)
    before = (amap.prompt, amap.version, amap._view, amap.focus)
    reply, _ = ask(amap, "_run", prompt=prompt)
    assert reply["ok"] is False and reply["error"]["type"] == "PromptError"
    assert message in reply["error"]["message"]
    assert (amap.prompt, amap.version, amap._view, amap.focus) == before
    assert amap.last_error.startswith("PromptError: ")
    with pytest.raises(llmscope.errors.PromptError, match="empty prompt"):
        amap.prompt = ""  # the same rule from Python


def test_focus_is_python_state_set_by_the_page_or_by_python(organism) -> None:
    amap = AttentionMap(organism, REPEATED)
    amap.set_state({"focus": [0, 2]})  # what the page's click sends
    assert amap.focus == (0, 2) and amap.unit == ("attn.0", 2)
    amap.focus = (1, 3)
    assert json.loads(json.dumps(amap.get_state("focus"))) == {"focus": [1, 3]}  # what the page receives
    for bad in [(2, 0), (0, 4), (-1, 0)]:
        with pytest.raises(SiteError, match=r"is not a head of this model: layers 0..1, heads 0..3"):
            amap.focus = bad
    assert amap.focus == (1, 3)


def test_stimuli_show_one_sequence_with_their_token_text(organism) -> None:
    stim = llmscope.stimuli.grammar(organism, n_docs=3, seed=1)
    amap = AttentionMap(organism, stim, seq=2)
    seq = stim.tokens[stim.tokens["seq"] == 2]
    data = opened(*ask(amap, "_overview"))
    assert data["tokens"] == seq["text"].tolist() and data["n_bos"] == int(seq["is_bos"].sum())
    assert amap.prompt.split() == seq["text"].tolist()[1:]  # the decoded text, BOS left out


def test_hostile_token_text_is_sent_as_data_and_escaped_in_the_figure(organism) -> None:
    stim = llmscope.Stimuli.from_ids(organism, [[1, 973, 4, 973, 4]], name="hostile", n_bos=1)
    stim.tokens["text"] = ["<bos>", HOSTILE, "<script>alert(2)</script>", "the", "dog"]
    amap = AttentionMap(organism, stim)
    data = opened(*ask(amap, "_overview"))
    assert data["tokens"][1] == HOSTILE  # unchanged text: the page writes it with textContent
    ticks = [t for axis in ("xaxis", "yaxis") for t in amap.figure().layout[axis].ticktext]
    assert "1 &lt;img src=x onerror=alert(1)&gt;" in ticks
    assert not any("<img" in t or "<script" in t for t in ticks)
    reply, _ = ask(amap, "_run", prompt=HOSTILE + " the dog")
    settle(amap)
    assert reply["ok"] and amap.prompt == HOSTILE + " the dog"  # a prompt is only text, whatever it says


def test_the_figure_is_the_current_view(amap: AttentionMap) -> None:
    amap.focus = (0, 2)
    fig = amap.figure()
    assert fig.layout.title.text == "attn.0 head 2 on 9 tokens of grammar-2l"
    pattern, prev_grid, _, ind_grid, _ = fig.data
    z = np.array(pattern.z, dtype=float)
    assert z.shape == (9, 9) and np.isnan(z[0, 1]) and np.nansum(z, axis=1) == pytest.approx(1, abs=0.02)
    assert np.array(prev_grid.z).shape == (2, 4) and list(prev_grid.y) == ["attn.0", "attn.1"]
    assert fig.data[2].x == ("2",) and fig.data[2].y == ("attn.0",)  # the focus is marked
    assert fig.layout.xaxis2.type == "category"
    amap.focus = (1, 0)


@pytest.fixture(scope="module")
def head_screen(organism):
    from llmscope.analysis.attribution import screen

    bat = llmscope.battery(organism, n_docs=2, n_pairs=8, behaviours=["copying", "agreement"])
    return screen(organism, bat, ["attn.0", "attn.1"], progress=False)


def test_heads_are_coloured_by_a_screen_s_attribution_in_the_widget_state(organism, head_screen) -> None:
    amap = AttentionMap(organism, REPEATED)
    assert amap._attribution == {}
    assert amap.colour_by(head_screen, "copying") is amap
    state = json.loads(json.dumps(amap._attribution, allow_nan=False))  # what the page gets: plain JSON
    grid = head_screen.heads("copying").to_numpy()
    assert state == {"behaviour": "copying", "label": "AtP score", "signed": False, "values": grid.tolist()}
    assert np.nanargmax(grid) == 4  # attn.1:0, the induction head, first for copying
    signed = amap.colour_by(head_screen, "agreement", measure="estimate")._attribution
    np.testing.assert_array_equal(signed["values"], head_screen.heads("agreement", "estimate").to_numpy())
    assert signed["signed"] and signed["label"] == "AtP estimate"
    partial = head_screen.heads("copying")
    partial.loc["attn.0"] = np.nan  # a head not screened travels as null
    amap.colour_by(partial, "copying")
    assert amap._attribution["values"][0] == [None] * 4 and amap._attribution["label"] == "score"
    assert amap._attribution["values"][1] == grid[1].tolist()
    amap.prompt = "the cat runs . the cat runs ."  # the screen ran on its battery: the marks stay
    assert amap._attribution["values"][1] == grid[1].tolist()
    fig = amap.figure()  # the static view shows the grid too, as each head's share of the largest
    assert fig.layout.annotations[-1].text == "score copying / largest"
    np.testing.assert_allclose(np.array(fig.data[-2].z, dtype=float), partial.to_numpy() / np.nanmax(grid[1]))
    assert amap.colour_by(None)._attribution == {} and len(amap.figure().data) == 5


def test_colouring_by_another_model_s_screen_or_a_grid_of_another_shape_is_refused(organism, tiny, head_screen) -> None:
    from llmscope.analysis.attribution import screen

    amap = AttentionMap(tiny, "w1 w2 w3 w1 w2 w3")  # 2 layers x 4 heads, as the organism
    with pytest.raises(WidgetError, match="the screen was made for grammar-2l; this model is"):
        amap.colour_by(head_screen, "copying")
    for bad, match in [(np.zeros((2, 3)), r"is \[2, 3\] but .* has 2 layers x 4 heads"),
                       (np.full((2, 4), np.inf), "infinite value"), (np.full((2, 4), np.nan), "no number")]:
        with pytest.raises(WidgetError, match=match):
            amap.colour_by(bad)
    with pytest.raises(WidgetError.Type, match="ScreenResult or a .layers x heads. grid of numbers; got str"):
        amap.colour_by("copying")
    own = AttentionMap(organism, REPEATED)
    with pytest.raises(KeyError, match="no behaviour 'loss_NOUN'"):
        own.colour_by(head_screen, "loss_NOUN")
    with pytest.raises(WidgetError.Unknown, match="unknown measure 'rank'"):
        own.colour_by(head_screen, "copying", measure="rank")
    neurons = screen(organism, llmscope.battery(organism, n_docs=2, behaviours=["copying"]), ("mlp.1", [0, 1]),
                     progress=False)
    with pytest.raises(WidgetError, match="no attention heads"):
        own.colour_by(neurons)
    assert amap._attribution == {} and own._attribution == {}  # a refusal changes nothing


def test_a_focus_change_costs_no_model_run(organism, monkeypatch) -> None:
    amap = AttentionMap(organism, llmscope.stimuli.grammar(organism, n_docs=1, seed=0))
    monkeypatch.setattr(organism, "run_with_hooks", lambda *a, **k: pytest.fail("the model ran for a focus change"))
    for layer in range(2):
        for head in range(4):
            assert opened(*ask(amap, "_head", layer=layer, head=head))["pattern"].shape == (127, 127)


@pytest.mark.parametrize("prompt, scored", [(REPEATED, True), ("dog", False)])  # one token: nothing to score
def test_a_prompt_costs_one_forward_pass_for_patterns_and_scores(organism, prompt: str, scored: bool) -> None:
    passes = []
    with organism.hooks(fwd_hooks=[("hook_embed", lambda x, hook: passes.append(x.shape))]):
        amap = AttentionMap(organism, prompt)
    n = len(amap._view.tokens)
    assert passes == [torch.Size([1, n, organism.cfg.d_model])]
    assert np.isfinite(amap._view.scores).any() == scored
    assert opened(*ask(amap, "_head", layer=0, head=2))["pattern"].shape == (n, n)
    assert hooks_left(organism) == 0


def test_the_model_is_left_as_it_was(organism) -> None:
    ids = organism.to_tokens(REPEATED)
    before = organism(ids)
    amap = AttentionMap(organism, REPEATED)
    ask(amap, "_overview")
    ask(amap, "_head", layer=1, head=0)
    ask(amap, "_run", prompt="")
    ask(amap, "_run", prompt="the cat runs .")
    settle(amap)
    amap.figure()
    assert hooks_left(organism) == 0
    assert torch.equal(organism(ids), before)


def test_bad_arguments_are_refused_before_any_work(organism, tiny) -> None:
    with pytest.raises(AnalysisError, match="shows a TransformerBridge .* got str"):
        AttentionMap("grammar-2l", REPEATED)
    with pytest.raises(AnalysisError, match="a prompt .str. or Stimuli; got int"):
        AttentionMap(organism, 5)
    stim = llmscope.stimuli.grammar(organism, n_docs=2, seed=0)
    with pytest.raises(AnalysisError, match="seq=2 is out of range: these stimuli have sequences 0..1"):
        AttentionMap(organism, stim, seq=2)
    with pytest.raises(AnalysisError, match="seq=1 picks a sequence of Stimuli"):
        AttentionMap(organism, REPEATED, seq=1)
    with pytest.raises(AnalysisError, match="an int; got True"):
        AttentionMap(organism, stim, seq=True)
    with pytest.raises(llmscope.errors.PromptError, match="empty prompt"):
        AttentionMap(organism, "")
    with pytest.raises(llmscope.errors.PromptError, match="made for grammar-2l; this model is .*another vocabulary"):
        AttentionMap(tiny, stim)  # the organism's stimuli, shown to another model


def test_the_tiny_gpt2_works_too(tiny) -> None:
    amap = AttentionMap(tiny, "w1 w2 w3 w1 w2 w3")
    data = opened(*ask(amap, "_overview"))
    assert data["thumbs"].shape == (2, 4, 7, 7) and len(data["tokens"]) == 7
    head = opened(*ask(amap, "_head", layer=1, head=3))["pattern"]
    assert head.shape == (7, 7) and np.abs(head.sum(1) / 255 - 1).max() < 0.02


@pytest.mark.smollm2
def test_smollm2_all_270_heads_at_128_tokens(smol, record_property) -> None:
    """Grouped-query attention (3 key-value heads) still gives one pattern per query head (9)."""
    text = " ".join(["The quick brown fox jumps over the lazy dog, and then it runs away."] * 9)
    ids = smol.to_tokens(text)[:, :128]
    prompt = smol.tokenizer.decode(ids[0, 1:])
    start = time.perf_counter()
    amap = AttentionMap(smol, prompt)
    first_run = time.perf_counter() - start
    n = len(amap._view.tokens)
    assert 120 <= n <= 128
    overview = ask(amap, "_overview")
    data = opened(*overview)
    assert data["thumbs"].shape == (30, 9, attention.THUMB, attention.THUMB)
    assert data["scores"].shape == (30, 9, 2) and np.isfinite(data["scores"]).all()  # the text repeats
    start = time.perf_counter()
    head = ask(amap, "_head", layer=amap.focus[0], head=amap.focus[1])
    head_s = time.perf_counter() - start
    pattern = opened(*head)["pattern"]
    assert pattern.shape == (n, n) and np.abs(pattern.sum(1) / 255 - 1).max() < 0.05
    first_paint, per_head = wire.reply_bytes(*overview), wire.reply_bytes(*head)
    record_property("tokens", n)
    record_property("first_paint_bytes", first_paint)
    record_property("focused_head_bytes", per_head)
    print(f"\nSmolLM2, {n} tokens: first paint {first_paint} B, focused head {per_head} B; "
          f"first run {first_run:.2f} s, head reply {head_s * 1000:.1f} ms, focus {amap.focus}")
    assert first_paint < 200_000 and per_head < 20_000


class Gate:
    """A hook that holds a run's forward pass at one layer's patterns until it is opened."""

    def __init__(self) -> None:
        self.reached, self.opened = threading.Event(), threading.Event()

    def __call__(self, pattern: torch.Tensor, hook) -> None:
        if threading.current_thread() is not threading.main_thread():  # only the widget's background run
            self.reached.set()
            assert self.opened.wait(timeout=60)


@contextlib.contextmanager
def held(amap: AttentionMap, prompt: str) -> Iterator[tuple[int, threading.Event]]:
    """Start ``prompt`` from the page and hold its pass at layer 1 (layer 0 read): yields its
    run id and the event that lets it go on; on exit, waits for it to end."""
    gate = Gate()
    with amap._model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", gate)]):  # added first: before the widget's
        run = opened(*ask(amap, "_run", prompt=prompt))["run"]
        assert gate.reached.wait(timeout=60)
        yield run, gate.opened
        gate.opened.set()
        settle(amap)


def test_a_running_prompt_is_shown_layer_by_layer_and_a_cancel_stops_it_at_the_next_layer(organism) -> None:
    amap = AttentionMap(organism, REPEATED)
    before = (amap.prompt, amap.version, amap._view)
    states = []
    amap.observe(lambda change: states.append((change["new"]["state"], change["new"]["done"])), names="_progress")
    with held(amap, "the cat sleeps . the cat") as (run, _):
        partial = opened(*ask(amap, "_overview"))  # layer 0 read, layer 1 held
        assert (partial["run"], partial["done"], partial["complete"]) == (run, 1, False)
        assert partial["tokens"] == ["<bos>", "the", "cat", "sleeps", ".", "the", "cat"]  # the new prompt's, at once
        assert partial["thumbs"][0].any() and not partial["thumbs"][1].any()
        assert np.isnan(partial["scores"]).all()
        assert opened(*ask(amap, "_head", layer=1, head=0))["pattern"] is None  # still to come
        assert opened(*ask(amap, "_head", layer=0, head=2))["pattern"].shape == (7, 7)
        assert opened(*ask(amap, "_cancel", run=run + 1))["cancelling"] is False  # not the running one
        assert opened(*ask(amap, "_cancel", run=run))["cancelling"] is True
    assert (amap.prompt, amap.version, amap._view) == before  # the prompt shown before stays
    assert states == [("running", 0), ("running", 1), ("cancelled", 1)]
    shown = opened(*ask(amap, "_overview"))
    assert shown["run"] == amap._view.run and shown["complete"] and shown["tokens"][-1] == "."
    assert hooks_left(organism) == 0


def test_a_running_prompt_left_alone_completes_and_becomes_the_view(organism) -> None:
    amap = AttentionMap(organism, REPEATED)
    with held(amap, "the cat sleeps . the cat"):
        assert amap.prompt == REPEATED  # not before it completes
    assert amap.prompt == "the cat sleeps . the cat" and amap._progress["state"] == "done"
    data = opened(*ask(amap, "_overview"))
    assert data["complete"] and data["done"] == 2 and np.isfinite(data["scores"]).any()
    stim = llmscope.stimuli.from_texts(organism, "the cat sleeps . the cat", tag=False)
    np.testing.assert_array_equal(data["thumbs"][1], codes(true_patterns(organism, stim.ids)[1]))


def test_a_prompt_set_from_python_replaces_a_running_one(organism) -> None:
    amap = AttentionMap(organism, REPEATED)
    with held(amap, "the cat sleeps . the cat") as (_, go_on):
        stopper = threading.Timer(0.2, go_on.set)  # the background run reaches its next layer, and stops
        stopper.start()
        amap.prompt = "a dog runs ."  # cancels it, waits for it, then runs here
        stopper.join()
    assert amap._pending is None and amap.prompt == "a dog runs ." and amap._progress["state"] == "done"
    assert opened(*ask(amap, "_overview"))["tokens"][1:] == ["a", "dog", "runs", "."]


def test_a_forward_pass_of_another_thread_is_not_read_into_a_run(organism) -> None:
    amap = AttentionMap(organism, REPEATED)
    run = amap._new_pass(llmscope.stimuli.from_texts(organism, "the cat", tag=False), "the cat")
    seen = []
    worker = threading.Thread(target=lambda: seen.append(run.read(torch.ones(1, 4, 3, 3), None)))
    worker.start()
    worker.join()
    assert seen == [None] and run.done == 0 and not run.thumbs.any()


def test_no_layer_s_float_patterns_outlive_its_reading(organism) -> None:
    """Only the byte codes are kept: every pattern tensor the pass made is freed after it."""
    alive = []
    keep = [("blocks.0.attn.hook_pattern", lambda p, hook: alive.append(weakref.ref(p))),
            ("blocks.1.attn.hook_pattern", lambda p, hook: alive.append(weakref.ref(p)))]
    with organism.hooks(fwd_hooks=keep):
        amap = AttentionMap(organism, llmscope.stimuli.grammar(organism, n_docs=1, seed=0))
    for module in organism.modules():  # TransformerLens's GPT-2 attention keeps its last pattern: not ours
        if getattr(module, "_pattern", None) is not None:
            module._pattern = None
    gc.collect()
    assert len(alive) == 2 and all(ref() is None for ref in alive)  # two layers, one pass
    kept = [p for layer in amap._view.heads for p in layer]
    assert len(kept) == 8 and all(p["dtype"] == "uint8" and p["compression"] == "deflate" for p in kept)


def test_codes_are_exact_at_the_edges_and_thumbnails_pool_uneven_blocks() -> None:
    rng = np.random.default_rng(0)
    for n, t in [(1, 1), (5, 5), (7, 3), (50, 24), (127, 24)]:
        p = torch.from_numpy(rng.random((2, n, n), dtype=np.float32))
        p[0, -1, 0] = 254.5 / 255  # rounds half up
        p[1, -1, 0] = float("nan")  # never a code above 0
        p = torch.tril(p) if n > 1 else p
        tril = np.empty((2, n * (n + 1) // 2), np.uint8)
        thumbs = np.zeros((2, t, t), np.uint8)
        attention._encode(p.numpy(), tril, thumbs)
        full = codes(p)
        rows, cols = np.tril_indices(n)
        np.testing.assert_array_equal(tril, full[:, rows, cols])
        np.testing.assert_array_equal(thumbs, pooled(full, t))
