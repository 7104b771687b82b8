"""The method registry: an explicit ``{name: "module:Class"}`` table, imported lazily.

The CLI and the widgets list methods from :func:`available_methods`; adding a method means adding
one line here and never touches them (``docs/methods/adding-a-method.md``). Importing this module
does not import torch. No Qt.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import WssegError

_REGISTRY: dict[str, str] = {
    "rf": "napari_wsseg.methods.rf:RandomForestMethod",
    "mews": "napari_wsseg.methods.mews.method:MEWSMethod",
    "dsp": "napari_wsseg.methods.dsp.method:DSPMethod",
    "size": "napari_wsseg.methods.size.method:SizeMethod",
    "rewis3d": "napari_wsseg.methods.rewis3d.method:Rewis3dMethod",
    "cpews": "napari_wsseg.methods.cpews.method:CPEWSMethod",
}


def available_methods() -> list[str]:
    """Names of the registered methods, in registration order."""
    return list(_REGISTRY)


def get_method(name: str):
    """The method class registered as ``name``."""
    if name not in _REGISTRY:
        raise WssegError(
            f"unknown method {str(name)[:40]!r}; choose one of the available methods: "
            f"{', '.join(_REGISTRY)}"
        )
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(import_module(module_name), class_name)
