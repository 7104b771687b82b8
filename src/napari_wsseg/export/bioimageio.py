"""Export a trained model folder as a bioimage.io model package (``MODEL.zip``). Imports no Qt.

The package is described with ``bioimageio.spec`` (format 0.5) and written with
:func:`bioimageio.spec.save_bioimageio_package`; no YAML is written by hand. It holds:

- weights as a ``pytorch_state_dict`` whose architecture is
  :class:`~napari_wsseg.export.architectures.SliceProbabilities` (dsp, size, rewis3d's 2D
  student), :class:`~napari_wsseg.export.architectures.MEWSProbabilities` (mews: the ViT
  backbone's weights travel with the heads) or
  :class:`~napari_wsseg.export.architectures.CPEWSProbabilities` (cpews), so ``napari-wsseg`` must
  be installed where the package runs; the U-Net methods also as TorchScript, which needs nothing
  but torch;
- the model's intensity normalisation as pre-processing: ``ensure_dtype`` float32, then
  ``scale_linear`` with the fixed gain and offset of ``(x - low) / (high - low)``;
- one output channel per class (named after the classes) holding class probabilities;
- a test input (a 2D slice) and the output ``predict_proba_slice`` of napari-wsseg gives for it;
- a README with the method, its paper, the classes, the annotation counts and the licence.

Only methods whose whole prediction is one torch network on 2D slices can be exported
(:data:`EXPORTABLE`); rf is refused with a one-line reason, and so is a rewis3d model whose
``inference`` uses the 3D student.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ModelError, WssegError

#: Methods a bioimage.io package can hold, with the paper cited in the package.
EXPORTABLE = {
    "dsp": (
        "Reiß, Seibold, Freytag, Rodner & Stiefelhagen, Decoupled Semantic Prototypes enable "
        "learning from diverse annotation types for semi-weakly segmentation in expert-driven "
        "domains, CVPR 2023",
        "https://github.com/Simael/DSP",
    ),
    "size": ("Approximate Size Targets Are Sufficient for Accurate Semantic Segmentation", None),
    "mews": (
        "Apostolidis, Mygdalis, Tzimas & Pitas, MEWS: Semantic image segmentation with "
        "multiclass extreme weak supervision, Neurocomputing 680 (2026) 133290",
        "doi:10.1016/j.neucom.2026.133290",
    ),
    "rewis3d": (
        "Rewis3d: weakly supervised semantic segmentation with 2D-3D cross-modal consistency "
        "(the 2D student is exported)",
        None,
    ),
    "cpews": (
        "Shao, Han, Li, Zhao & Yan, CPEWS: Contextual Prototype-Based End-to-End Weakly "
        "Supervised Semantic Segmentation",
        None,
    ),
}
#: Methods whose exported network is a ViT (no TorchScript: a trace fixes the position embeddings).
VIT_METHODS = ("mews", "cpews")
REFUSED = {
    "rf": "a random forest on hand-made filter features is not a network the bioimage.io format "
    "can hold",
}
#: Side of the test slice (cropped to the image, rounded down to the network's size multiple).
TEST_SIDE = 128
_TEMP_MARKER = ".wsseg-export-temporary"


def export_bioimageio(
    model_dir,
    out,
    *,
    licence: str = "CC-BY-4.0",
    authors: list[str] | None = None,
    image=None,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the model in ``model_dir`` as a bioimage.io package ``out`` (a ``.zip``).

    Parameters
    ----------
    model_dir : str or Path
        Model folder written by ``wsseg train`` (``config.json`` + ``model.safetensors``).
    out : str or Path
        Package to write; must end in ``.zip``.
    licence : str, default "CC-BY-4.0"
        SPDX licence identifier of the weights (e.g. ``MIT``, ``CC-BY-4.0``).
    authors : list of str, optional
        Author names recorded in the package. None records none (the package then carries a
        validation warning).
    image : Image, optional
        Image to take the test slice from (its first slice, cropped). None uses the 2D phantom
        (:func:`napari_wsseg.sample.make_phantom`) mapped onto the model's intensity range.
    name : str, optional
        Model name; default "napari-wsseg <method> (<model folder name>)".
    overwrite : bool, default False
        Replace an existing ``out``.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    WssegError
        For a method that cannot be exported (naming those that can), a bad ``out`` or licence,
        or an image whose channels do not fit the model.
    """
    from ..methods.base import load_model, read_model_config

    out = Path(out).expanduser()
    if out.suffix.lower() != ".zip":
        raise WssegError(
            f"--out {out} must end in .zip (a bioimage.io package); e.g. {out.stem}.zip"
        )
    if out.is_dir():
        raise WssegError(f"{out} is a folder; give a .zip file path for --out")
    if out.exists() and not overwrite:
        raise WssegError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    method = read_model_config(model_dir).get("method")
    check_exportable(method)
    model = load_model(model_dir)
    check_inference(model)
    work = Path(tempfile.mkdtemp(prefix="wsseg-export-"))
    (work / _TEMP_MARKER).write_text("created by wsseg export; safe to delete\n")
    try:
        descr = _describe(model, Path(model_dir), work, licence, authors, image, name)
        _save_package(descr, out)
    finally:
        if (work / _TEMP_MARKER).is_file():
            shutil.rmtree(work, ignore_errors=True)
    return out


def check_exportable(method: str | None) -> None:
    """Raise a one-line error for a method a bioimage.io package cannot hold.

    Examples
    --------
    >>> check_exportable("dsp")
    >>> check_exportable("rf")
    Traceback (most recent call last):
    ...
    napari_wsseg.errors.WssegError: rf models cannot be exported to bioimage.io: a random forest
    on hand-made filter features is not a network the bioimage.io format can hold; exportable
    methods: dsp, size, mews, rewis3d, cpews
    """
    if method in EXPORTABLE:
        return
    reason = REFUSED.get(method, "napari-wsseg has no bioimage.io exporter for this method yet")
    raise WssegError(
        f"{method} models cannot be exported to bioimage.io: {reason}; exportable "
        f"methods: {', '.join(EXPORTABLE)}"
    )


def check_inference(model) -> None:
    """Raise a one-line error for a rewis3d model that predicts with its 3D student, or a cpews
    model that averages over several test scales (a package holds one forward pass)."""
    scales = tuple(getattr(model.config, "test_scales", (1.0,)))
    if model.name == "cpews" and scales != (1.0,):
        raise WssegError(
            f"cpews models with test_scales={scales} cannot be exported to bioimage.io: a "
            "package holds one forward pass at one scale; retrain with --test-scales 1.0 "
            "(the default)"
        )
    inference = getattr(model.config, "inference", "2d")
    if model.name == "rewis3d" and inference != "2d":
        raise WssegError(
            f"rewis3d models with inference={inference!r} cannot be exported to bioimage.io: "
            "a package here holds 2D networks only; retrain with --inference 2d (the default)"
        )


# ------------------------------------------------------------------------------- the network
def network_kwargs(model) -> dict:
    """Keyword arguments of the architecture (:func:`architecture_name`) that rebuild ``model``."""
    cfg = model.config
    if model.name == "mews":
        backbone = model.backbone
        return {
            "backbone": backbone.name,
            "n_classes": len(model.classes),
            "in_dim": int(backbone.embed_dim),
            "proj_dim": int(model._heads.weight.shape[2]),
            "patch_size": int(backbone.patch_size),
            "num_prefix_tokens": int(backbone.num_prefix_tokens),
            "temperature": float(cfg.temperature),
            "mean": list(backbone.mean),
            "std": list(backbone.std),
        }
    if model.name == "cpews":
        net, info = model._require_net(), model.backbone_info
        return {
            "backbone": info.get("arch", cfg.backbone),
            "model_kwargs": dict(info.get("model_kwargs") or {}),
            "in_channels": int(model.n_channels),
            "n_classes": len(model.classes),
            "intermediate_block": int(net.intermediate),
            "mean": [float(m) for m in net.mean.flatten()],
            "std": [float(s) for s in net.std.flatten()],
        }
    if model.name == "rewis3d":
        kwargs = {
            "kind": "rewis3d",
            "in_channels": int(model.n_channels),
            "n_classes": len(model.classes),
            "depth": int(cfg.depth_2d),
            "width": int(cfg.width),
            "shift": None
            if model.log_prior_shift is None
            else [float(s) for s in model.log_prior_shift],
        }
        if cfg.student_2d == "prototype":  # the same network and head as dsp's
            kwargs |= {
                "kind": "dsp",
                "embed_dim": int(cfg.embed_dim),
                "n_prototypes": int(cfg.prototypes_per_class),
                "scale": float(model.scale_2d),
            }
        return kwargs
    kwargs = {
        "kind": model.name,
        "in_channels": int(model.n_channels),
        "n_classes": len(model.classes),
        "depth": int(cfg.depth),
        "width": int(cfg.width),
    }
    if model.name == "dsp":
        shift = model.log_prior_shift
        kwargs |= {
            "embed_dim": int(cfg.embed_dim),
            "n_prototypes": int(cfg.prototypes_per_class),
            "scale": 1.0 / float(cfg.tau),
        }
    else:
        shift = None if model.class_bias is None else [float(b) for b in model.class_bias]
    kwargs["shift"] = None if shift is None else [float(s) for s in shift]
    return kwargs


def architecture_name(model) -> str:
    """The class in :mod:`napari_wsseg.export.architectures` that rebuilds ``model``."""
    return {"mews": "MEWSProbabilities", "cpews": "CPEWSProbabilities"}.get(
        model.name, "SliceProbabilities"
    )


def build_network(model):
    """The export network of ``model`` with its trained weights, on the CPU, in eval mode."""
    from . import architectures

    network = getattr(architectures, architecture_name(model))(**network_kwargs(model))
    if model.name == "mews":
        backbone = {k: v.detach().cpu() for k, v in model.backbone.model.state_dict().items()}
        network.backbone.load_state_dict(backbone)
        network.heads.weight.data.copy_(model._heads.weight.detach().cpu())
        network.centroids.copy_(model._centroids.detach().cpu())
    else:
        net = model.net_2d if model.name == "rewis3d" else model._require_net()
        network.net.load_state_dict({k: v.detach().cpu() for k, v in net.state_dict().items()})
    return network.eval()


def size_multiple(model) -> int:
    """Input sides must be multiples of this: the U-Net's ``2 ** depth`` or the ViT's patch."""
    if model.name == "mews":
        return int(model.backbone.patch_size)
    if model.name == "cpews":
        return int(model._require_net().patch)
    depth = model.config.depth_2d if model.name == "rewis3d" else model.config.depth
    return 2 ** int(depth)


# ---------------------------------------------------------------------------- description
def _describe(model, model_dir: Path, work: Path, licence, authors, image, name):
    import torch
    from bioimageio.spec.model import v0_5 as spec

    network = build_network(model)
    # float32 raw values: bioimage.io casts a tensor to its ``data.type`` after pre-processing
    test_input = _test_input(model, image).astype(np.float32)
    test_output = model.predict_proba_slice(np.moveaxis(test_input[0], 0, -1))[None]
    np.save(work / "test_input.npy", test_input)
    np.save(work / "test_output.npy", test_output.astype(np.float32))
    weights = work / "weights.pt"
    torch.save(network.state_dict(), weights)
    scripted = None
    if model.name not in VIT_METHODS:  # a traced ViT fixes its position embeddings to the size
        scripted = work / "weights_torchscript.pt"
        _trace(network, model.normalization.apply(np.moveaxis(test_input, 1, -1)), scripted)
    readme = work / "README.md"
    readme.write_text(model_readme(model, model_dir, licence))
    multiple = size_multiple(model)
    input_id = spec.TensorId("raw")
    input_axes = [
        spec.BatchAxis(),
        spec.ChannelAxis(
            channel_names=[spec.Identifier(f"channel{c}") for c in range(model.n_channels)]
        ),
    ]
    input_axes += [
        spec.SpaceInputAxis(
            id=spec.AxisId(a), size=spec.ParameterizedSize(min=multiple, step=multiple)
        )
        for a in "yx"
    ]
    output_axes = [
        spec.BatchAxis(),
        spec.ChannelAxis(channel_names=_class_identifiers(model, spec)),
    ]
    output_axes += [
        spec.SpaceOutputAxis(
            id=spec.AxisId(a), size=spec.SizeReference(tensor_id=input_id, axis_id=spec.AxisId(a))
        )
        for a in "yx"
    ]
    pytorch_version = spec.Version(torch.__version__.split("+")[0])
    try:
        return spec.ModelDescr(
            name=name or f"napari-wsseg {model.name} ({model_dir.name})",
            description=f"{model.name} semantic segmentation of 2D slices into "
            f"{len(model.classes)} classes, trained with napari-wsseg {__version__} "
            "from weak annotations; outputs class probabilities.",
            authors=[spec.Author(name=a) for a in (authors or [])],
            cite=_citations(model.name, spec),
            license=spec.LicenseId(licence),
            documentation=spec.FileDescr(source=readme),
            tags=["napari-wsseg", model.name, "semantic-segmentation", "weak-supervision", "2d"],
            inputs=[
                spec.InputTensorDescr(
                    id=input_id,
                    axes=input_axes,
                    test_tensor=spec.FileDescr(source=work / "test_input.npy"),
                    data=spec.IntervalOrRatioDataDescr(type="float32"),
                    preprocessing=[
                        spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
                        _scale_linear(model.normalization, spec),
                    ],
                )
            ],
            outputs=[
                spec.OutputTensorDescr(
                    id=spec.TensorId("probabilities"),
                    axes=output_axes,
                    test_tensor=spec.FileDescr(source=work / "test_output.npy"),
                    data=spec.IntervalOrRatioDataDescr(type="float32"),
                )
            ],
            weights=spec.WeightsDescr(
                pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
                    source=weights,
                    pytorch_version=pytorch_version,
                    architecture=spec.ArchitectureFromLibraryDescr(
                        callable=spec.Identifier(architecture_name(model)),
                        import_from="napari_wsseg.export.architectures",
                        kwargs=network_kwargs(model),
                    ),
                ),
                torchscript=None
                if scripted is None
                else spec.TorchscriptWeightsDescr(
                    source=scripted,
                    pytorch_version=pytorch_version,
                    parent="pytorch_state_dict",
                ),
            ),
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise WssegError(
            f"bioimage.io description of {model_dir} is invalid: {_first_error(exc)}"
        ) from None


def _trace(network, normalized_bhwc: np.ndarray, path: Path) -> None:
    """Save ``network`` traced to TorchScript, after
    checking it on a larger input than the trace's."""
    import torch

    example = torch.from_numpy(np.ascontiguousarray(np.moveaxis(normalized_bhwc, -1, 1)))
    with torch.no_grad():
        traced = torch.jit.trace(network, example, check_trace=False)
        bigger = torch.cat([example, example.flip(-1)], dim=-1)
        if not torch.allclose(traced(bigger), network(bigger), atol=1e-5):
            raise ModelError(
                "the TorchScript trace of the network depends on the input size; "
                "report this with the model's config.json"
            )
    traced.save(str(path))


def _scale_linear(normalization, spec):
    """``(x - low) / (high - low)`` as bioimage.io ``scale_linear`` along the channel axis."""
    low = np.asarray(normalization.low, dtype=np.float64)
    span = np.asarray(normalization.high, dtype=np.float64) - low
    gain, offset = (1.0 / span).tolist(), (-low / span).tolist()
    if len(gain) == 1:
        return spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=gain[0], offset=offset[0]))
    return spec.ScaleLinearDescr(
        kwargs=spec.ScaleLinearAlongAxisKwargs(
            axis=spec.AxisId("channel"), gain=gain, offset=offset
        )
    )


def _class_identifiers(model, spec) -> list:
    names = []
    for k, c in enumerate(model.classes):
        name = re.sub(r"\W+", "_", c.name).strip("_") or f"class{k}"
        if name[0].isdigit() or name in names:
            name = f"class{k}_{name}"
        names.append(name)
    return [spec.Identifier(n) for n in names]


def _citations(method: str, spec) -> list:
    text, link = EXPORTABLE[method]
    if link is None:
        return []
    if link.startswith("doi:"):
        return [spec.CiteEntry(text=text, doi=spec.Doi(link[len("doi:") :]))]
    return [spec.CiteEntry(text=text, url=link)]


def _test_input(model, image) -> np.ndarray:
    """A ``(1, C, h, w)`` raw test slice whose sides are multiples of the network's."""
    multiple = size_multiple(model)
    if image is None:
        from ..sample import make_phantom

        phantom = make_phantom((TEST_SIDE, TEST_SIDE), seed=0)[0].astype(np.float32) / 255.0
        low, high = np.asarray(model.normalization.low), np.asarray(model.normalization.high)
        raw = (low + phantom[..., None] * (high - low)).astype(np.float32)
        return np.moveaxis(raw, -1, 0)[None]
    if image.n_channels != model.n_channels:
        raise ModelError(
            f"image {image.name} has {image.n_channels} channel(s) but the "
            f"{model.name} model was trained on {model.n_channels}; give an image "
            "like the training image"
        )
    h, w = (min(TEST_SIDE, s) // multiple * multiple for s in image.shape[1:])
    if h == 0 or w == 0:
        raise WssegError(
            f"image {image.name} slices {image.shape[1:]} are smaller than "
            f"{multiple} pixels; give a larger test image"
        )
    return np.moveaxis(np.asarray(image.data[0, :h, :w]), -1, 0)[None]


def _save_package(descr, out: Path) -> None:
    from bioimageio.spec import save_bioimageio_package

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    save_bioimageio_package(descr, output_path=partial)
    partial.replace(out)


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg')}"
    return " ".join(str(exc).split())


# ----------------------------------------------------------------------------------- README
def model_readme(model, model_dir: Path, licence: str) -> str:
    """The package README: method, paper, classes, normalisation, training annotations, licence."""
    paper, url = EXPORTABLE[model.name]
    summary = model.training_summary or {}
    counts = summary.get("counts", {})
    lines = [
        f"# napari-wsseg `{model.name}` model ({model_dir.name})",
        "",
        f"Semantic segmentation of 2D slices into {len(model.classes)} classes, trained with "
        f"napari-wsseg {__version__} from weak annotations (points, "
        "boxes, slice tags, sizes or partial masks) on one image or volume.",
        "",
        "## Method",
        "",
        f"{paper}" + (f" ({url})" if url else "") + ".",
        "",
        "## Input and output",
        "",
        f"- input `raw`: `(batch, channel, y, x)` raw intensities, {model.n_channels} channel(s); "
        f"y and x multiples of {size_multiple(model)}. Pre-processing maps the "
        f"training image's percentiles low={list(model.normalization.low)} and "
        f"high={list(model.normalization.high)} to 0 and 1 (fixed, not re-estimated).",
        "- output `probabilities`: `(batch, class, y, x)`; the label of a pixel is the class "
        "with the highest probability. Large slices are best predicted in overlapping tiles.",
        "",
        "## Classes",
        "",
    ]
    lines += [f"{k}. {c.name}" for k, c in enumerate(model.classes)]
    lines += [
        "",
        "## Training data",
        "",
        "The model was trained on a single image or volume with these annotations:",
        "",
    ]
    for kind, values in counts.items():
        values = values if isinstance(values, list) else [values]
        per_class = ", ".join(f"{c.name}: {v}" for c, v in zip(model.classes, values))
        lines.append(f"- {kind}: {per_class}")
    if summary.get("annotated_slices") is not None:
        lines.append(f"- annotated slices: {len(summary['annotated_slices'])}")
    for warning in summary.get("warnings", []):
        lines.append(f"- training warning: {warning}")
    lines += ["", "## Licence", "", f"Weights: {licence}.", ""]
    return "\n".join(lines)
