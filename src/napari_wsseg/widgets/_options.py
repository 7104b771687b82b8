"""A magicgui form for a method's config dataclass, built from its fields and defaults.

``int`` fields get spin boxes, ``bool`` check boxes, ``Literal[...]`` a drop-down; ``float``,
``str``, optional (``T | None``) and tuple fields a line edit (floats keep every digit, empty
means None, tuples are comma separated); each field's tooltip is the first sentence of its entry in
the config's docstring. A method class may name its most important fields in
``main_options`` (a tuple of names): only those are shown until "more options" is ticked;
without it every field is shown.
"""

from __future__ import annotations

import dataclasses
import typing

from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit, SpinBox

from ..errors import WssegError
from ..methods.base import option_summaries

_INT_RANGE = (-(2**31) + 1, 2**31 - 1)


class ConfigForm(Container):
    """Edit a frozen config dataclass; :meth:`config` returns the instance the form describes."""

    def __init__(self, config_class: type, main: tuple[str, ...] | None = None, **kwargs) -> None:
        super().__init__(labels=True, **kwargs)
        self.config_class = config_class
        self._hints = typing.get_type_hints(config_class)
        self._fields = {f.name: f for f in dataclasses.fields(config_class)}
        self._summaries = option_summaries(config_class.__doc__ or "")
        main = [n for n in (main or ()) if n in self._fields]
        for name in main + [n for n in self._fields if n not in main]:
            self.append(self._field_widget(name))
        if main and len(main) < len(self._fields):
            self._more = CheckBox(name="more_options", text="more options", value=False)
            self._more.changed.connect(self._show_more)
            self.insert(len(main), self._more)
            self._extra = [self[n] for n in self._fields if n not in main]
            self._show_more(False)

    def _show_more(self, show: bool) -> None:
        for widget in self._extra:
            widget.visible = bool(show)

    def config(self):
        """The config with the form's values (one-line error naming the option if one is bad)."""
        values = {name: self._value(name) for name in self._fields}
        try:
            return self.config_class(**values)
        except (TypeError, ValueError) as exc:
            raise WssegError(
                f"{self.config_class.__name__} options are not valid: {exc}; fix the value"
            ) from None

    def set_values(self, **values) -> None:
        """Set fields by name (for tests and scripts)."""
        for name, value in values.items():
            widget = self[name]
            widget.value = _as_text(value) if isinstance(widget, LineEdit) else value

    # -------------------------------------------------------------------------------- helpers
    def _field_widget(self, name: str):
        hint, default = self._hints[name], self._fields[name].default
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        label, summary = name.replace("_", " "), self._summaries.get(name, "")
        if origin is typing.Literal:
            return ComboBox(
                name=name, label=label, choices=list(args), value=default, tooltip=summary
            )
        if hint is bool:
            return CheckBox(name=name, label=label, value=default, tooltip=summary)
        if hint is int:
            return SpinBox(
                name=name,
                label=label,
                value=default,
                min=_INT_RANGE[0],
                max=_INT_RANGE[1],
                tooltip=summary,
            )
        entry = {float: "a number, e.g. 0.001 or 1e-4"}.get(hint, "")
        entry = entry or ("empty: none" if type(None) in args else "comma-separated values")
        tooltip = f"{summary} ({entry})" if summary else entry
        return LineEdit(name=name, label=label, value=_as_text(default), tooltip=tooltip)

    def _value(self, name: str):
        widget, hint = self[name], self._hints[name]
        if not isinstance(widget, LineEdit):
            return widget.value
        return _parse(widget.value, hint, name, self.config_class.__name__)


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (tuple, list)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _parse(text: str, hint, name: str, owner: str):
    """Parse a line edit's text into ``hint`` (``T | None``, ``tuple[T, ...]`` or ``str``)."""
    text = text.strip()
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if text == "" and optional:
        return None
    target = args[0] if optional and len(args) == 1 else hint
    try:
        if typing.get_origin(target) is tuple:
            item = typing.get_args(target)[0] if typing.get_args(target) else float
            return tuple(item(v.strip()) for v in text.split(",") if v.strip())
        if target in (int, float, str):
            return target(text)
    except ValueError:
        raise WssegError(
            f"option '{name}' of {owner}: '{text}' is not a valid "
            f"{getattr(target, '__name__', target)}"
            + ("; leave it empty for none" if optional else "")
        ) from None
    return text
