"""What the page does with a widget's command replies, for the widget tests: ask, then decode."""

from __future__ import annotations

import json

from llmscope.widgets import wire


def ask(widget, name: str, seq: int = 1, **fields) -> tuple[dict, list]:
    """Call the widget's command ``name`` as the page would: ``{seq, **fields}``, no buffers."""
    return getattr(widget, name)({"seq": seq, **fields}, [])


def opened(reply: dict, buffers: list) -> dict:
    """The reply's data with each array decoded, as the page sees it (from JSON and buffers)."""
    assert reply["ok"], reply.get("error")
    data = json.loads(json.dumps(reply["data"]))
    for path, buffer in zip(reply["buffer_paths"], buffers):
        node = data
        for key in path[:-2]:
            node = node[key]
        node[path[-2]] = wire.unpack({**node[path[-2]], "buffer": buffer})
    return data
