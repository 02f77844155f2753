"""``dermfuse explain-eval``: are a bundle's heatmaps faithful to its model, on the lesion,
and free of a border frame? Measured on held-out images, against a random-map baseline,
with lesion-bootstrap intervals.

The network explained is the one whose own Grad-CAM the bundle shows: the classifier of
an image-input bundle (with each image's metadata; member 0 of a seed ensemble) or the CAM
backbone of a heatmap-input bundle (image only). Its class probabilities (softmax of its
logits: no test-time views, no calibration) are what the curves track, for the class it
predicts on the unperturbed image. Every CAM method in `dermfuse.explain.heatmap_input.CAM_METHODS`
and a ``random`` baseline (`dermfuse.explain.faithfulness.random_maps` at the target layer's grid)
are scored on the same images. With lesion masks (``DATA/masks/<image_id>.png``, written by
``make_synthetic(masks=True)``) the energy in the lesion and the pointing game are scored too.

Border artefact: the share of each method's map in the outer band, for the target layer
(``last``) and the last layer at twice its resolution (``earlier``), on the image as it is
(``pad 0``) and with the image reflect-padded by an eighth of its side on every side, the
map computed on the padded image and cropped back (``pad P``): a frame made by the
network's zero padding moves out of the image with the padding; a frame made by the image
(dark dermoscope corners, say) stays."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from torch import nn

from ..image_size import Size, size_hw, size_json, size_text
from ..io import atomic_write_text
from ..explain import faithfulness as fm
from ..inference.bundle import Bundle, load_bundle
from ..data.cache import build_cache
from ..data.splits import group_ids
from ..errors import BundleError, DataError
from ..explain.heatmap_input import CAM_METHODS
from ..models.ensemble import Ensemble
from ..preprocess import to_input

__all__ = ["RANDOM", "explain_eval", "explained_network", "earlier_layer", "load_masks", "plot_curves",
           "plot_localisation", "plot_examples", "render_markdown"]

log = logging.getLogger("dermfuse")
RANDOM = "random"
_ALL_METHODS = tuple(CAM_METHODS)


def explained_network(bundle: Bundle) -> tuple[nn.Module, bool, str]:
    """(network, takes_meta, description) whose Grad-CAM the bundle shows."""
    if bundle.input_mode != "image":
        if bundle.cam_model is None:
            raise BundleError(f"a {bundle.input_mode}-input bundle without a CAM backbone: nothing to explain")
        return bundle.cam_model.eval(), False, f"the CAM backbone of a {bundle.input_mode}-input bundle"
    model = bundle.model
    if isinstance(model, Ensemble):
        return model.members[0].eval(), True, f"member 0 of a {len(model.members)}-member seed ensemble"
    if getattr(model, "cam_layer", None) is None:
        raise BundleError(f"model {bundle.info['model']['name']!r} has no image branch to explain")
    return model.eval(), True, f"the classifier ({bundle.info['model']['name']}, image input)"


def _spatial_shapes(net: nn.Module, size: Size, meta_dim: int) -> dict[str, tuple[int, int]]:
    """(h, w) of every named module's 4-D output for one input of ``size``, in call order."""
    shapes: dict[str, tuple[int, int]] = {}
    handles = []
    for name, mod in net.named_modules():
        def hook(m, i, o, name=name):
            if isinstance(o, torch.Tensor) and o.ndim == 4 and name not in shapes:
                shapes[name] = tuple(o.shape[-2:])
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, *size_hw(size)), torch.zeros(1, meta_dim) if meta_dim else None)
    finally:
        for h in handles:
            h.remove()
    return shapes


def earlier_layer(net: nn.Module, size: Size, meta_dim: int = 0) -> tuple[str, nn.Module, tuple[int, int]] | None:
    """The last module (in call order) whose output has twice the target layer's resolution:
    (name, module, (h, w)), or None where there is none."""
    shapes = _spatial_shapes(net, size, meta_dim)
    names = {id(m): n for n, m in net.named_modules()}
    last = shapes.get(names.get(id(net.cam_layer), ""))
    if last is None:
        return None
    finer = [n for n, s in shapes.items() if s == (2 * last[0], 2 * last[1]) and n]
    if not finer:
        return None
    name = finer[-1]
    return name, net.get_submodule(name), shapes[name]


def load_masks(root: Path, image_ids: Sequence[str], size: Size) -> np.ndarray | None:
    """Lesion masks (N, h, w) bool from ``root/masks/<image_id>.png``, squash-resized
    like the images; None when the folder is absent. A missing mask is an error (named)."""
    folder = Path(root) / "masks"
    if not folder.is_dir():
        return None
    h, w = size_hw(size)
    out = np.zeros((len(image_ids), h, w), bool)
    for i, image_id in enumerate(image_ids):
        path = folder / f"{image_id}.png"
        if not path.is_file():
            raise DataError(f"{folder} has no mask for image {image_id!r} (expected {path.name})")
        mask = Image.open(path).convert("L").resize((w, h), Image.Resampling.BILINEAR)
        out[i] = np.asarray(mask) >= 128
    return out


class _Scorer:
    """Probability of each row's explained class, in batches, for a fixed meta."""

    def __init__(self, net: nn.Module, meta: torch.Tensor | None, targets: torch.Tensor, batch_size: int):
        self.net, self.meta, self.targets, self.batch_size = net, meta, targets, batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        out = []
        for s in range(0, len(images), self.batch_size):
            r = torch.as_tensor(rows[s:s + self.batch_size])
            m = None if self.meta is None else self.meta[r]
            p = self.net(images[s:s + self.batch_size], m).float().softmax(1)
            out.append(p.gather(1, self.targets[r][:, None])[:, 0])
        return torch.cat(out)


def _maps(method: str, net: nn.Module, layer: nn.Module, x: torch.Tensor, meta: torch.Tensor | None,
          targets: torch.Tensor, grid: tuple[int, int], seed: int, pad: int = 0) -> torch.Tensor:
    """(B, S, S) maps of one method (or the random baseline) for the batch ``x``."""
    if method == RANDOM:
        return fm.random_maps(len(x), tuple(x.shape[-2:]), grid, seed=seed)
    xin = F.pad(x, (pad,) * 4, mode="reflect") if pad else x
    with CAM_METHODS[method](net, target_layer=layer) as cam:
        maps = cam(xin, meta, targets=targets)
    if pad:
        maps = maps[:, pad:-pad, pad:-pad]
    return maps


def _summaries(per_image: dict[str, np.ndarray], groups: np.ndarray, n_boot: int, seed: int,
               reference: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """Bootstrap mean + interval of every per-image score, and of its paired difference to
    ``reference`` (the random baseline) where given."""
    out: dict[str, Any] = {}
    for key, values in per_image.items():
        out[key] = fm.lesion_bootstrap(values, groups, n_boot=n_boot, seed=seed)
        if reference is not None and key in reference:
            out[key]["vs_random"] = fm.lesion_bootstrap(values - reference[key], groups, n_boot=n_boot, seed=seed)
    return out


def explain_eval(bundle_path: str | Path, data_path: str | Path, split_file: str | Path | None = None,
                 part: str = "test", methods: Sequence[str] = _ALL_METHODS, n_images: int | None = 200,
                 steps: int = 16, fill: str = "mean", band: float = 0.1, pad: int | None = None, n_boot: int = 2000, seed: int = 0,
                 batch_size: int = 32, format: str | None = None, out: str | Path | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Score the heatmaps of ``bundle_path`` on (a sample of ``n_images`` of) the rows of
    ``data_path`` (with ``split_file``: the rows it puts in ``part``).

    Returns {"network", "images", "lesions", "methods": {method: {score: {mean, low, high,
    n, n_groups[, vs_random]}}}, "curves": {method: {"deletion", "insertion"}: mean curve},
    "border": [{method, layer, pad, border_energy...}], "settings"}; with ``out``, writes
    explain_eval.json, explain_eval.md and plots/*.png there. Scores per image: deletion_auc,
    insertion_auc, average_drop, increase_in_confidence, border_energy and, with masks,
    energy_in_lesion and pointing_game."""
    from .cohort import load_cohort

    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown or not methods:
        raise DataError(f"explain-eval --methods: unknown {unknown or 'none given'}; expected some of {list(CAM_METHODS)}")
    bundle = load_bundle(bundle_path)
    net, takes_meta, what = explained_network(bundle)
    size = bundle.image_size  # the classifier's input, which the CAM backbone sees too
    cohort = load_cohort(data_path, format, True, progress)
    table = _select_rows(cohort.table, split_file, part, n_images, seed)
    groups = group_ids(table)
    images = build_cache(table, size=size, method=bundle.resize_method, progress=progress).images
    masks = load_masks(Path(cohort.read.root), table["image_id"].astype(str).tolist(), size)
    meta_all = (torch.as_tensor(bundle.encode_table(table)[:, : bundle.model_meta_dim]) if takes_meta else None)
    meta_dim = 0 if meta_all is None else meta_all.shape[1]
    pad = max(1, min(size_hw(size)) // 8) if pad is None else int(pad)
    run = _Run(net=net, names=list(methods) + [RANDOM], last_shape=_spatial_shapes(net, size, meta_dim)[_cam_layer_name(net)],
               early=earlier_layer(net, size, meta_dim), steps=steps, fill=fill, band=band, pad=pad, seed=seed,
               batch_size=batch_size)
    n = len(table)
    with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task("explain-eval", total=n)
        for s in range(0, n, batch_size):
            x = to_input(np.ascontiguousarray(images[s:s + batch_size]))  # (B, 3, S, S)
            run.score_batch(s, x, None if meta_all is None else meta_all[s:s + len(x)],
                            None if masks is None else masks[s:s + len(x)])
            bar.advance(task, len(x))

    result: dict[str, Any] = {
        "bundle": str(bundle_path), "model_id": bundle.model_id, "network": what, "data": str(data_path),
        "rows": "all clean rows" if split_file is None else f"part {part!r} of {split_file}",
        "images": n, "lesions": int(len(np.unique(groups))), "image_size": size_json(size),
        "synthetic": bool(cohort.synthetic), "masks": masks is not None,
        "lesion_area": None if masks is None else fm.lesion_bootstrap(masks.mean((1, 2)), groups, n_boot, seed=seed),
        "border_area": float(fm.border_band(size_hw(size), band).mean()),
        **run.summary(groups, n_boot),
        "settings": {"methods": list(methods), "steps": steps, "band": band, "pad": pad, "n_boot": n_boot,
                     "seed": seed, "fill": fill,
                     "score": "softmax probability of the class the network predicts on the unperturbed image"},
    }
    if out is not None:
        _write(Path(out), result, run.examples, images[:4], None if masks is None else masks[:4])
    return result


def _select_rows(table, split_file: str | Path | None, part: str, n_images: int | None, seed: int):
    """The rows scored: ``split_file``'s ``part`` (all without one), then a sorted sample of
    ``n_images`` of them drawn with ``seed``."""
    from .evaluate import select_part

    if split_file is not None:
        table = table.iloc[select_part(table, split_file, part)].reset_index(drop=True)
    if n_images is not None and n_images < len(table):
        pick = np.sort(np.random.default_rng(seed).choice(len(table), n_images, replace=False))
        table = table.iloc[pick].reset_index(drop=True)
    return table


def _cam_layer_name(net: nn.Module) -> str:
    return {id(m): n for n, m in net.named_modules()}[id(net.cam_layer)]


@dataclass
class _Run:
    """The settings of one explain-eval and the per-image scores it gathers batch by batch."""

    net: nn.Module
    names: list[str]  # the methods scored, then the random baseline
    last_shape: tuple[int, int]  # the target layer's grid
    early: tuple[str, nn.Module, tuple[int, int]] | None  # see `earlier_layer`
    steps: int
    fill: str
    band: float
    pad: int
    seed: int
    batch_size: int
    per: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    border: dict[tuple[str, str, int], list[np.ndarray]] = field(default_factory=dict)
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[tuple[str, int], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.per = {m: {} for m in self.names}
        self.curves = {m: {"deletion": [], "insertion": []} for m in self.names}

    def add(self, method: str, key: str, values: np.ndarray) -> None:
        self.per[method].setdefault(key, []).append(values)

    def score_batch(self, s: int, x: torch.Tensor, meta: torch.Tensor | None, masks: np.ndarray | None) -> None:
        """Score every method on the batch ``x`` (B, 3, S, S) of rows s.. (masks (B, S, S) or None)."""
        with torch.no_grad():
            targets = self.net(x, meta).argmax(1)
        score = _Scorer(self.net, meta, targets, self.batch_size)
        fill_x = fm.fill_for(x, self.fill)
        for method in self.names:
            maps = _maps(method, self.net, self.net.cam_layer, x, meta, targets, self.last_shape, self.seed + s)
            self._score_maps(method, score, x, maps, fill_x, masks, first=s == 0)
            if method != RANDOM:
                self._border_analysis(method, x, meta, targets)

    def _score_maps(self, method: str, score: _Scorer, x: torch.Tensor, maps: torch.Tensor, fill_x: torch.Tensor,
                    masks: np.ndarray | None, first: bool) -> None:
        """Faithfulness, border energy and (with masks) localisation of one method's maps."""
        dele, ins = fm.perturbation_curves(score, x, maps, steps=self.steps, fill=fill_x)
        self.curves[method]["deletion"].append(dele)
        self.curves[method]["insertion"].append(ins)
        self.add(method, "deletion_auc", fm.curve_auc(dele))
        self.add(method, "insertion_auc", fm.curve_auc(ins))
        y, o = fm.confidence_change(score, x, maps)
        self.add(method, "average_drop", fm.average_drop(y, o))
        self.add(method, "increase_in_confidence", fm.increase_in_confidence(y, o))
        mp = maps.numpy()
        self.add(method, "border_energy", fm.border_energy(mp, self.band))
        if masks is not None:
            self.add(method, "energy_in_lesion", fm.energy_in_mask(mp, masks))
            self.add(method, "pointing_game", fm.pointing_game(mp, masks))
        if first:
            self.examples[method] = mp[:4]
        self.border.setdefault((method, "last", 0), []).append(fm.border_energy(mp, self.band))

    def _border_analysis(self, method: str, x: torch.Tensor, meta: torch.Tensor | None, targets: torch.Tensor) -> None:
        """Border energy of the last layer padded and of the earlier layer at pad 0 and padded;
        a layer and pad the network refuses is skipped (and said once)."""
        early = self.early
        for layer_name, layer, p in (("last", self.net.cam_layer, self.pad),
                                     *((("earlier", early[1], 0), ("earlier", early[1], self.pad)) if early else ())):
            if (layer_name, p) in self.skipped:
                continue
            try:
                bm = _maps(method, self.net, layer, x, meta, targets, self.last_shape, self.seed, pad=p).numpy()
            except (ValueError, RuntimeError) as e:  # a fixed-size network refuses the padded image
                self.skipped[layer_name, p] = str(e).split("\n")[0]
                log.warning("explain-eval: border analysis %s layer, pad %d skipped: %s", layer_name, p,
                            self.skipped[layer_name, p])
                continue
            self.border.setdefault((method, layer_name, p), []).append(fm.border_energy(bm, self.band))

    def summary(self, groups: np.ndarray, n_boot: int) -> dict[str, Any]:
        """The result's "methods", "curves", "border", "border_skipped" and "layers"."""
        flat = {m: {k: np.concatenate(v) for k, v in self.per[m].items()} for m in self.names}
        seed, early = self.seed, self.early
        return {
            "methods": {m: _summaries(flat[m], groups, n_boot, seed, None if m == RANDOM else flat[RANDOM])
                        for m in self.names},
            "curves": {m: {k: np.concatenate(v).mean(0).tolist() for k, v in c.items()} for m, c in self.curves.items()},
            "border": [{"method": m, "layer": layer, "pad": p,
                        "border_energy": fm.lesion_bootstrap(np.concatenate(v), groups, n_boot, seed=seed)}
                       for (m, layer, p), v in self.border.items()],
            "border_skipped": [{"layer": layer, "pad": p, "why": why} for (layer, p), why in self.skipped.items()],
            "layers": {"last": {"name": _cam_layer_name(self.net), "grid": list(self.last_shape)},
                       **({"earlier": {"name": early[0], "grid": list(early[2])}} if early else {})},
        }


def _write(out: Path, result: dict[str, Any], examples: dict[str, np.ndarray], images: np.ndarray,
           masks: np.ndarray | None) -> None:
    from ..evaluation.plots import save_figure

    (out / "plots").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "explain_eval.json", json.dumps(result, indent=2))
    save_figure(plot_curves(result), out / "plots" / "deletion_insertion.png")
    if result["masks"]:
        save_figure(plot_localisation(result), out / "plots" / "localisation.png")
    save_figure(plot_examples(images, examples, masks), out / "plots" / "examples.png")
    atomic_write_text(out / "explain_eval.md", render_markdown(result))


def plot_curves(result: dict[str, Any]):
    """Mean deletion and insertion curves of every method and the random baseline."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for m, c in result["curves"].items():
            y = np.asarray(c[kind])
            auc = result["methods"][m][f"{kind}_auc"]["mean"]
            ax.plot(np.linspace(0, 1, len(y)), y, ls="--" if m == RANDOM else "-", color="grey" if m == RANDOM else None,
                    label=f"{m} (AUC {auc:.3f})")
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}, most salient first")
        ax.set_ylabel("probability of the explained class")
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} is more faithful)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['network']}: {result['images']} images", fontsize=9)
    return fig


def plot_localisation(result: dict[str, Any]):
    """Energy in the lesion and pointing-game hit rate per method, with intervals."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    names = list(result["methods"])
    for ax, key, title in zip(axes, ("energy_in_lesion", "pointing_game"),
                              ("share of map energy inside the lesion", "pointing-game hit rate")):
        s = [result["methods"][m][key] for m in names]
        mean = np.array([v["mean"] for v in s], float)
        low = np.array([v["low"] if v["low"] is not None else v["mean"] for v in s], float)
        high = np.array([v["high"] if v["high"] is not None else v["mean"] for v in s], float)
        ax.bar(names, mean, yerr=[mean - low, high - mean], capsize=3,
               color=["grey" if m == RANDOM else "tab:blue" for m in names])
        area = result["lesion_area"]["mean"]
        ax.axhline(area, color="k", ls=":", lw=1, label=f"lesion area share {area:.2f}")
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return fig


def plot_examples(images: np.ndarray, examples: dict[str, np.ndarray], masks: np.ndarray | None):
    """A few images (rows) with every method's map (columns); the lesion outline in white."""
    import matplotlib.pyplot as plt

    cols = ["image", *examples]
    k = len(images)
    fig, axes = plt.subplots(k, len(cols), figsize=(1.7 * len(cols), 1.7 * k), squeeze=False,
                             constrained_layout=True)
    for i in range(k):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(images[i]) if c == "image" else ax.imshow(examples[c][i], cmap="jet", vmin=0, vmax=1)
            if masks is not None:
                ax.contour(masks[i].astype(float), levels=[0.5], colors="white", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(c, fontsize=8)
    return fig


def _cell(s: dict[str, Any] | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "–"
    if s.get("low") is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} [{s['low']:.{digits}f}, {s['high']:.{digits}f}]"


def render_markdown(result: dict[str, Any]) -> str:
    """The tables of one run as Markdown (what docs/explain_eval.md quotes)."""
    keys = ["deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence", "border_energy"]
    if result["masks"]:
        keys += ["energy_in_lesion", "pointing_game"]
    lines = [f"Model {result['model_id']}, {result['network']}; {result['images']} images of {result['lesions']} lesions "
             f"({result['rows']}), {size_text(result['image_size'])} px. Mean [95% lesion-bootstrap interval].", "",
             "| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for m, s in result["methods"].items():
        lines.append(f"| {m} | " + " | ".join(_cell(s.get(k), 1 if k in ("average_drop", "increase_in_confidence")
                                                       else 3) for k in keys) + " |")
    lines += ["", "Difference to the random baseline (paired, same images):", "",
              "| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for m, s in result["methods"].items():
        if m != RANDOM:
            lines.append(f"| {m} | " + " | ".join(_cell(s.get(k, {}).get("vs_random"), 3) for k in keys) + " |")
    lines += ["", f"Border band: outer {result['settings']['band']:.0%} of each side "
                  f"({result['border_area']:.1%} of the area). Layers: "
                  + ", ".join(f"{k} = {v['name']} ({v['grid'][0]}x{v['grid'][1]})" for k, v in result["layers"].items()),
              "", "| method | layer | pad (px) | border energy |", "|---|---|---|---|"]
    for r in result["border"]:
        lines.append(f"| {r['method']} | {r['layer']} | {r['pad']} | {_cell(r['border_energy'])} |")
    return "\n".join(lines) + "\n"
