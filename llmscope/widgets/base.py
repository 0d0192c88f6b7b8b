"""What every llmscope widget is built on: an anywidget whose commands never crash the kernel
and never fail in silence.

A widget is a small :class:`LiveWidget` subclass with synced traits and its bundle from
``llmscope/static/`` (:func:`static`). The page asks the kernel for what it shows with
commands (``anywidget.experimental.command`` here, ``invoke`` in the page), and
:func:`command` turns a method into one::

    @command(layer=int, head=int)
    def _head(self, layer: int, head: int) -> dict:
        return {"pattern": wire.array(codes, tril=True, compress=True)}

The wrapper checks the message first (a sequence number ``seq``, each declared field present
with its type, no other field), then calls the method, lifts the arrays of its reply into
binary buffers (:func:`llmscope.widgets.wire.split_buffers`) and answers
``{"seq", "ok": True, "data", "buffer_paths"}``. Any exception, a malformed message included,
becomes ``{"seq", "ok": False, "error": {"type", "message", "traceback"}}`` (``type`` the
qualified class name, as ``WidgetError.Type`` for a field of the wrong type): the page shows it
as text and Python keeps it in ``last_error``. An llmscope error carries no traceback (its
message says what to do); anything else carries one. The page (``widgets/src/wire.js``,
``Channel``) drops an answer to anything but its newest request, and has its own timeout.

``version`` is bumped by the kernel whenever what the widget shows changed (a new prompt, a
new recording): the page then asks again for what it shows.
"""

from __future__ import annotations

import functools
import traceback
from pathlib import Path
from typing import Any, Callable

import anywidget
import traitlets

from llmscope.errors import LLMScopeError, WidgetError
from llmscope.widgets import wire

STATIC = Path(__file__).resolve().parent.parent / "static"
Handler = Callable[..., dict[str, Any]]
Command = Callable[[Any, Any, list], tuple[dict[str, Any], list]]


def static(name: str) -> Path:
    """The built front-end file ``llmscope/static/<name>``, for a widget's ``_esm`` or ``_css``."""
    path = STATIC / name
    if not path.is_file():
        raise WidgetError(f"the widget bundle {path} is missing: rebuild it with `make bundle` "
                            "(cd widgets && npm ci && npm run build).")
    return path


def _check_message(command_name: str, msg: Any, fields: dict[str, type]) -> None:
    """Raise the WidgetError kind that says why ``msg`` is not a valid message for
    ``command_name``: a wrong type is ``.Type``, a field it does not take ``.Unknown``, a
    missing field a plain WidgetError."""
    if not isinstance(msg, dict):
        raise WidgetError.Type(f"malformed message: a message to {command_name} is a JSON object, "
                               f"got {type(msg).__name__}.")
    expected = {"seq": int, **fields}
    missing = sorted(set(expected) - set(msg))
    extra = sorted(set(msg) - set(expected))
    if missing or extra:
        problem = (f"malformed message: a message to {command_name} has the fields {sorted(expected)}; "
                   f"{'missing ' + str(missing) if missing else ''}{' and ' if missing and extra else ''}"
                   f"{'unexpected ' + str(extra) if extra else ''}.")
        raise (WidgetError.Unknown if extra else WidgetError)(problem)
    for name, kind in expected.items():
        value = msg[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise WidgetError.Type(f"malformed message: field {name!r} of a message to {command_name} must be "
                                   f"{kind.__name__}, got {value!r}.")


def _error_payload(exc: BaseException) -> dict[str, str]:
    """An exception as the page shows it: type, message, and a traceback unless it is ours."""
    trace = "" if isinstance(exc, LLMScopeError) else "".join(traceback.format_exception(exc))
    return {"type": type(exc).__qualname__, "message": str(exc), "traceback": trace}  # "WidgetError.Range"


def command(**fields: type) -> Callable[[Handler], Command]:
    """Make ``method(self, **fields) -> dict`` a command the page can ``invoke``.

    ``fields`` name the message's fields and their types (``int``, ``str``, ``float``,
    ``bool``, ``list``, ``dict``); ``seq`` is added. See the module docstring for the reply.

    Example:
        >>> from llmscope.widgets.base import LiveWidget, command
        >>> class Echo(LiveWidget):
        ...     _esm = "export default { render() {} }"
        ...     @command(text=str)
        ...     def shout(self, text):
        ...         return {"text": text.upper()}
        >>> Echo().shout({"seq": 3, "text": "hi"}, [])
        ({'seq': 3, 'ok': True, 'data': {'text': 'HI'}, 'buffer_paths': []}, [])
        >>> reply, _ = Echo().shout({"seq": 4, "text": 5}, [])
        >>> reply["error"]["message"]
        "malformed message: field 'text' of a message to shout must be str, got 5."
    """
    def wrap(method: Handler) -> Command:
        @functools.wraps(method)
        def handle(self: LiveWidget, msg: Any, buffers: list) -> tuple[dict[str, Any], list]:
            seq = msg.get("seq") if isinstance(msg, dict) else None
            try:
                _check_message(method.__name__, msg, fields)
                data, paths, out = wire.split_buffers(method(self, **{k: msg[k] for k in fields}))
            except Exception as exc:  # every failure goes back to the page, which shows it
                error = _error_payload(exc)
                self.set_trait("last_error", f"{error['type']}: {error['message']}")
                return {"seq": seq, "ok": False, "error": error}, []
            self.set_trait("last_error", "")
            return {"seq": seq, "ok": True, "data": data, "buffer_paths": paths}, out

        return anywidget.experimental.command(handle)

    return wrap


class LiveWidget(anywidget.AnyWidget):
    """An anywidget with :func:`command` handlers, a ``version`` the page follows, and the
    last error a command returned.

    Attributes:
        version: bumped by :meth:`_changed` when what the widget shows changed; synced, read-only.
        last_error: ``"Type: message"`` of the last command that failed, ``""`` after a success.
    """

    version = traitlets.Int(0, read_only=True).tag(sync=True)
    last_error = traitlets.Unicode("", read_only=True)

    def _changed(self) -> None:
        """Tell the page that what it shows is out of date (it asks again)."""
        self.set_trait("version", self.version + 1)


__all__ = ["LiveWidget", "command", "static", "STATIC"]
