"""The widget foundation without a browser: arrays on the wire, and commands that never crash."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from llmscope.errors import LLMScopeError, PromptError, WidgetError
from llmscope.widgets import base, wire
from llmscope.widgets.base import LiveWidget, command


def unpack_tril(flat: np.ndarray, n: int) -> np.ndarray:
    """What the page does with a tril payload (widgets/src/wire.js unpackTril), for one matrix."""
    full = np.zeros((n, n), dtype=flat.dtype)
    full[np.tril_indices(n)] = flat
    return full


class Probe(LiveWidget):
    """A widget whose commands exercise every path of the wrapper."""

    _esm = "export default { render() {} }"

    @command(n=int, name=str)
    def _make(self, n: int, name: str) -> dict:
        return {"name": name, "values": wire.array(np.arange(n, dtype=np.uint8)),
                "nested": [{"half": wire.array(np.ones(2, dtype=np.float16))}]}

    @command()
    def _fails(self) -> dict:
        raise PromptError("empty prompt: type some text.")

    @command()
    def _bug(self) -> dict:
        return {"x": 1 / 0}


@pytest.fixture
def probe() -> Probe:
    return Probe()


def test_array_sends_bytes_dtype_and_shape() -> None:
    a = wire.array(np.array([[1, 2], [3, 4]], dtype=np.uint8))
    assert a["dtype"] == "uint8" and a["shape"] == [2, 2]
    assert isinstance(a["buffer"], memoryview) and bytes(a["buffer"]) == b"\x01\x02\x03\x04"
    assert "layout" not in a and "compression" not in a


def test_array_float16_is_little_endian_and_torch_is_accepted() -> None:
    values = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float16)
    a = wire.array(values)
    assert a["dtype"] == "float16" and a["shape"] == [3]
    assert bytes(a["buffer"]) == np.array([1.0, -2.0, 0.5], dtype="<f2").tobytes()
    big_endian = np.array([1.0, 2.0], dtype=">f2")
    assert bytes(wire.array(big_endian)["buffer"]) == np.array([1.0, 2.0], dtype="<f2").tobytes()


def test_array_tril_and_deflate_round_trip() -> None:
    rng = np.random.default_rng(0)
    codes = np.tril(rng.integers(0, 256, size=(2, 5, 5))).astype(np.uint8)
    a = wire.array(codes, tril=True, compress=True)
    assert a["shape"] == [2, 5, 5] and a["layout"] == "tril" and a["compression"] == "deflate"
    flat = np.frombuffer(zlib.decompress(bytes(a["buffer"])), dtype=np.uint8)
    assert flat.size == 2 * 15  # n(n+1)/2 per matrix: the upper triangle never travels
    for m in range(2):
        np.testing.assert_array_equal(unpack_tril(flat[m * 15:(m + 1) * 15], 5), codes[m])


def test_decode_reads_back_every_kind_of_payload() -> None:
    rng = np.random.default_rng(1)
    square = np.tril(rng.integers(0, 256, size=(3, 4, 4))).astype(np.uint8)
    for values, options in [(square, dict(tril=True, compress=True)), (square, dict(tril=True)),
                            (rng.random((2, 3)).astype(np.float16), dict(compress=True)),
                            (np.arange(-3, 3, dtype=np.int32), {}), (np.zeros((0, 0), dtype=np.uint8), dict(tril=True))]:
        out = wire.unpack(wire.array(values, **options))
        assert out.dtype == values.dtype and out.shape == values.shape
        np.testing.assert_array_equal(out, values)


def test_array_rejects_what_the_page_cannot_read() -> None:
    with pytest.raises(WidgetError.Unknown, match="got float64"):
        wire.array(np.zeros(3))
    with pytest.raises(WidgetError, match="square matrices .* shape \\(2, 3\\)"):
        wire.array(np.zeros((2, 3), dtype=np.uint8), tril=True)
    with pytest.raises(WidgetError.Type, match="got list"):
        wire.array([1, 2, 3])
    with pytest.raises(WidgetError, match="5 values do not fill an array of shape \\(3, 3\\) \\(lower triangle\\): 6 do"):
        wire.packed(np.zeros(5, dtype=np.uint8), (3, 3), tril=True)


def test_a_large_payload_is_compressed_fast_and_a_small_one_tight() -> None:
    small = np.tile(np.arange(256, dtype=np.uint8), 1024)  # 256 kB: zlib's default level
    large = np.tile(np.arange(256, dtype=np.uint8), 8192)  # 2 MiB, past FAST_ZLIB_ABOVE: level 1
    assert bytes(wire.array(small, compress=True)["buffer"]) == zlib.compress(small.tobytes())
    assert bytes(wire.array(large, compress=True)["buffer"]) == zlib.compress(large.tobytes(), 1)
    assert large.nbytes > wire.FAST_ZLIB_ABOVE >= small.nbytes


def test_packed_codes_read_back_as_the_full_array() -> None:
    full = np.tril(np.arange(1, 17, dtype=np.uint8).reshape(4, 4))
    rows = np.concatenate([full[i, : i + 1] for i in range(4)])
    for compress in (False, True):
        np.testing.assert_array_equal(wire.unpack(wire.packed(rows, (4, 4), tril=True, compress=compress)), full)


def test_split_buffers_lifts_every_buffer_and_records_its_path() -> None:
    a, b = wire.array(np.zeros(2, dtype=np.uint8)), wire.array(np.ones(1, dtype=np.int32))
    reply = {"a": a, "list": [1, {"b": b}], "text": "x"}
    data, paths, buffers = wire.split_buffers(reply)
    assert paths == [["a", "buffer"], ["list", 1, "b", "buffer"]]
    assert [bytes(x) for x in buffers] == [b"\x00\x00", b"\x01\x00\x00\x00"]
    assert data["a"]["buffer"] is None and data["list"][1]["b"]["buffer"] is None and data["text"] == "x"
    assert isinstance(reply["a"]["buffer"], memoryview)  # the input is left as it was
    json.dumps(data)  # what is left is plain JSON


def test_a_command_answers_with_its_seq_data_and_buffers(probe: Probe) -> None:
    reply, buffers = probe._make({"seq": 7, "n": 3, "name": "<b>x</b>"}, [])
    assert reply["seq"] == 7 and reply["ok"] is True
    assert reply["data"]["name"] == "<b>x</b>"  # text is data: the page writes it with textContent
    assert reply["buffer_paths"] == [["values", "buffer"], ["nested", 0, "half", "buffer"]]
    assert bytes(buffers[0]) == b"\x00\x01\x02" and len(bytes(buffers[1])) == 4
    assert wire.reply_bytes(reply, buffers) == len(json.dumps(reply, separators=(",", ":"))) + 3 + 4
    assert probe.last_error == ""


@pytest.mark.parametrize("msg, kind, problem", [
    ({"seq": 1, "n": "3", "name": "a"}, "WidgetError.Type", "field 'n' of a message to _make must be int, got '3'"),
    ({"seq": 1, "n": True, "name": "a"}, "WidgetError.Type", "field 'n' of a message to _make must be int, got True"),
    ({"seq": 1, "n": 3}, "WidgetError", "missing ['name']"),
    ({"seq": 1, "n": 3, "name": "a", "evil": 1}, "WidgetError.Unknown", "unexpected ['evil']"),
    ({"n": 3, "name": "a"}, "WidgetError", "missing ['seq']"),
    ({"seq": "1", "n": 3, "name": "a"}, "WidgetError.Type", "field 'seq' of a message to _make must be int"),
    (["not", "a", "dict"], "WidgetError.Type", "is a JSON object, got list"),
])
def test_a_malformed_message_is_answered_with_a_widget_error_of_its_kind(probe: Probe, msg, kind: str,
                                                                          problem: str) -> None:
    reply, buffers = probe._make(msg, [])
    assert reply["ok"] is False and buffers == []
    assert reply["seq"] == (msg.get("seq") if isinstance(msg, dict) else None)
    assert reply["error"]["type"] == kind
    assert reply["error"]["message"].startswith("malformed message: ") and problem in reply["error"]["message"]
    assert probe.last_error.startswith(f"{kind}: malformed message")


def test_an_llmscope_error_comes_back_without_traceback_and_a_bug_with_one(probe: Probe) -> None:
    reply, _ = probe._fails({"seq": 2}, [])
    assert reply == {"seq": 2, "ok": False, "error": {"type": "PromptError", "message": "empty prompt: type some text.",
                                                     "traceback": ""}}
    assert probe.last_error == "PromptError: empty prompt: type some text."
    reply, _ = probe._bug({"seq": 3}, [])
    assert reply["error"]["type"] == "ZeroDivisionError"
    assert "Traceback" in reply["error"]["traceback"] and "1 / 0" in reply["error"]["traceback"]
    probe._make({"seq": 4, "n": 1, "name": ""}, [])
    assert probe.last_error == ""  # a success clears it


def test_commands_answer_through_anywidgets_own_dispatch(probe: Probe, monkeypatch) -> None:
    """The real path of a page's invoke: a custom comm message -> the command -> widget.send."""
    sent = []
    monkeypatch.setattr(probe, "send", lambda content, buffers=None: sent.append((content, buffers)))
    probe._handle_custom_msg({"kind": "anywidget-command", "id": "req-1", "name": "_make",
                              "msg": {"seq": 5, "n": 2, "name": "a"}}, [])
    probe._handle_custom_msg({"kind": "anywidget-command", "id": "req-2", "name": "_bug", "msg": {"seq": 6}}, [])
    (first, first_buffers), (second, _) = sent
    assert first["id"] == "req-1" and first["kind"] == "anywidget-command-response"
    assert first["response"]["seq"] == 5 and first["response"]["ok"] is True
    assert [bytes(b) for b in first_buffers][0] == b"\x00\x01"
    assert second["id"] == "req-2" and second["response"]["ok"] is False


def test_version_is_read_only_and_bumped_by_the_widget(probe: Probe) -> None:
    with pytest.raises(Exception, match="read-only"):
        probe.version = 5
    probe._changed()
    assert probe.version == 1


def test_static_names_a_missing_bundle() -> None:
    assert base.static("attention_map.js").is_file()
    with pytest.raises(LLMScopeError, match="nope.js is missing: rebuild it with `make bundle`"):
        base.static("nope.js")
