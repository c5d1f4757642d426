"""The survey's atlas: browsable HTML pages, thumbnails, numbers as JSON lines, and the state.

Layout of an atlas folder::

    index.html                 the layers, the collection, what was skipped
    view.html                  one image with a patch's box drawn on it (opened from a patch)
    state.npz                  the mergeable state (featvis.Survey.load)
    images/POSITION.jpg        copies of images that were not files (arrays, datasets)
    LAYER/index.html           a card per channel: its top-k patches and statistics
    LAYER/stats.jsonl          one JSON object per channel
    LAYER/top.jsonl            one JSON object per channel and rank
    LAYER/patches/cCHANNEL_RANK.jpg
    LAYER/optimized/cCHANNEL.jpg   each channel's optimized image (``maximize=``, optional)

The pages have no external dependencies (inline CSS and a few lines of JavaScript) and load
thumbnails lazily, so a layer of 1280 channels stays usable: the page itself is a few MB.
"""

from __future__ import annotations

import html
import json
import os
import re
import urllib.parse
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from featvis._errors import ArgumentError, ImageError
from featvis._images import read_image
from featvis._layers import Layer
from featvis._stream import Collection, _Index, _is_tensor, _Row, as_collection

if TYPE_CHECKING:
    from featvis._survey_result import Survey, TopImage
    from featvis.render import Picture

__all__ = ["patch_montage", "write_atlas"]

#: Thumbnails fit in a square of this many pixels.
THUMB = 96
#: Copies of images that are not files are at most this many pixels on their longer side.
COPY_SIZE = 512


def slug(key: str) -> str:
    """A folder name for a layer key."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("._") or "layer"


# -- reading images again --------------------------------------------------------------------


class _Images:
    """The surveyed images by position, as RGB uint8 (from their files, or the collection)."""

    def __init__(self, survey: Survey, images: Any) -> None:
        self.survey = survey
        self.collection: Collection | None = None
        self.offset = 0
        if images is not None:
            self.collection = as_collection(images)
        elif survey.collection is not None:
            self.collection = survey.collection
            self.offset = survey.collection_start
        if self.collection is not None and not self.collection.indexable:
            self.collection = None

    def has_file(self, position: int) -> bool:
        path = self.survey.infos[position].path
        return path is not None and os.path.isfile(path)

    def rgb(self, position: int) -> np.ndarray:
        info = self.survey.infos[position]
        if info.path is not None and os.path.isfile(info.path):
            return read_image(info.path)
        if self.collection is None:
            where = f"its file {info.path!r} is gone and " if info.path else ""
            raise ArgumentError(
                f"Cannot draw image {position}: {where}the survey cannot read its images again. "
                "Pass the collection to save(folder, images=...) (an indexable one: a list, an "
                "array, a Dataset), or survey files."
            )
        raw = self.collection.item(position - self.offset)
        if isinstance(raw, _Index):
            raw = self.collection.item(raw.index)
        if self.collection.pairs and isinstance(raw, (tuple, list)) and len(raw) == 2:
            raw = raw[0]
        if isinstance(raw, _Row):
            return self._unprepare(raw.array)
        if _is_tensor(raw):
            array = raw.detach().cpu().numpy()
            if array.ndim == 3 and np.issubdtype(array.dtype, np.floating):
                return self._unprepare(array)
            raw = np.ascontiguousarray(array.transpose(1, 2, 0)) if array.ndim == 3 else array
        rgb = read_image(raw)
        if rgb.shape[:2] != tuple(info.size):
            raise ImageError(
                f"Image {position} is {rgb.shape[0]}x{rgb.shape[1]} now but was "
                f"{info.size[0]}x{info.size[1]} when surveyed: is this the same collection?"
            )
        return rgb

    def _unprepare(self, array: np.ndarray) -> np.ndarray:
        """Model input back to pixels, with the survey's Preprocess mean and std."""
        pre = self.survey.preprocess
        mean = np.array(pre.mean, np.float32)[:, None, None]
        std = np.array(pre.std, np.float32)[:, None, None]
        pixels = np.clip(array * std + mean, 0.0, 1.0)
        if pixels.shape[0] == 1:
            pixels = np.repeat(pixels, 3, axis=0)
        return (pixels.transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)


def _crop(rgb: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """The box of the image; all of it without a box, or for an empty one (a layer whose
    output depends on no input pixel)."""
    if box is None or box[2] <= box[0] or box[3] <= box[1]:
        return rgb
    top, left, bottom, right = box
    return rgb[top:bottom, left:right]


def _thumbnail(pixels: np.ndarray, size: int = THUMB) -> Image.Image:
    """Fit into ``size`` x ``size``: shrink smoothly, enlarge small patches by whole pixels."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    height, width = pixels.shape[:2]
    scale = size / max(height, width)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    method = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST
    return image.resize(shape, method)


# -- the files -------------------------------------------------------------------------------


def _optimize(
    survey: Survey, keys: list[str], folder: Path, backend: Any, options: dict[str, Any]
) -> tuple[set[str], str]:
    """Each channel's optimized image (:func:`featvis.maximize`) written beside its patches:
    the layers that have them, and why none were made (empty when they were)."""
    if backend is None:
        return set(), ""
    from featvis._capabilities import Differentiable
    from featvis._errors import CapabilityError
    from featvis._maximize import maximize
    from featvis._maximize._api import _gradient_free_methods

    if not isinstance(backend, Differentiable):
        return set(), str(
            CapabilityError(
                f"No optimized images: featvis.maximize needs gradients through the model, "
                f"which the {getattr(backend, 'name', type(backend).__name__)!r} backend does "
                f"not provide; the dataset images below are what "
                f"{_gradient_free_methods(backend)} can show."
            )
        )
    done = set()
    for key in keys:
        result = maximize(backend, key, list(range(survey.channels(key))), **options)
        where = folder / slug(key) / "optimized"
        where.mkdir(parents=True, exist_ok=True)
        for channel, image in enumerate(result.images):
            pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            _thumbnail(pixels).save(where / f"c{channel:04d}.jpg", quality=90)
        done.add(key)
    return done, ""


def write_atlas(
    survey: Survey,
    folder: Path,
    images: Any = None,
    *,
    maximize: Any = None,
    maximize_options: dict[str, Any] | None = None,
) -> Path:
    """Write the atlas of ``survey`` into ``folder`` (see the module docstring); with a
    ``maximize`` backend, each channel's optimized image beside its dataset images."""
    folder.mkdir(parents=True, exist_ok=True)
    reader = _Images(survey, images)
    keys = list(dict.fromkeys(survey.layers))
    tops = {key: [survey.top(key, c) for c in range(survey.channels(key))] for key in keys}

    # Every patch to cut, grouped by image: each image is read once.
    jobs: dict[int, list[tuple[Path, tuple[int, int, int, int] | None]]] = defaultdict(list)
    for key in keys:
        patches = folder / slug(key) / "patches"
        patches.mkdir(parents=True, exist_ok=True)
        for channel, entries in enumerate(tops[key]):
            for entry in entries:
                name = patches / f"c{channel:04d}_{entry.rank}.jpg"
                jobs[entry.position].append((name, entry.box))
    copies = folder / "images"
    links: dict[int, str] = {}  # position -> the full image, relative to the atlas folder
    for position in jobs:
        if reader.has_file(position):
            links[position] = _relative(survey.infos[position].path, folder)  # type: ignore[arg-type]
        else:
            links[position] = f"images/{position:08d}.jpg"

    def cut(position: int) -> None:
        rgb = reader.rgb(position)
        for name, box in jobs[position]:
            _thumbnail(_crop(rgb, box)).save(name, quality=85)
        if not reader.has_file(position):
            copies.mkdir(exist_ok=True)
            copy = Image.fromarray(rgb)
            copy.thumbnail((COPY_SIZE, COPY_SIZE), Image.Resampling.LANCZOS)
            copy.save(copies / f"{position:08d}.jpg", quality=90)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        list(pool.map(cut, sorted(jobs)))

    optimized, why_not = _optimize(survey, keys, folder, maximize, maximize_options or {})
    for key in keys:
        _write_layer(survey, key, tops[key], folder, links, key in optimized, why_not)
    (folder / "view.html").write_text(_VIEW, encoding="utf-8")
    (folder / "index.html").write_text(_index_page(survey, keys), encoding="utf-8")
    survey.save_state(folder / "state.npz")
    return folder / "index.html"


def _relative(path: str, folder: Path) -> str:
    try:
        return Path(os.path.relpath(os.path.abspath(path), folder.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return Path(os.path.abspath(path)).as_uri()


def _top_row(key: str, channel: int, entry: TopImage, link: str) -> dict[str, Any]:
    return {
        "layer": key,
        "channel": channel,
        "rank": entry.rank,
        "position": entry.position,
        "value": entry.value,
        "peak_y": entry.peak[0],
        "peak_x": entry.peak[1],
        "box": None if entry.box is None else list(entry.box),
        "input_box": None if entry.input_box is None else list(entry.input_box),
        "path": entry.path,
        "label": entry.label,
        "height": entry.size[0],
        "width": entry.size[1],
        "image": link,
        "patch": f"patches/c{channel:04d}_{entry.rank}.jpg",
    }


def _write_layer(
    survey: Survey,
    key: str,
    tops: list[list[TopImage]],
    folder: Path,
    links: dict[int, str],
    optimized: bool = False,
    why_not: str = "",
) -> None:
    where = folder / slug(key)
    stats = survey.stats(key)
    rows = stats.rows()
    with (where / "stats.jsonl").open("w", encoding="utf-8") as out:
        for channel, row in enumerate(rows):
            row["top_classes"] = [
                {"label": c.label, "mean": c.mean, "images": c.images}
                for c in survey.top_classes(key, channel)
            ]
            out.write(json.dumps(row) + "\n")
    with (where / "top.jsonl").open("w", encoding="utf-8") as out:
        for channel, entries in enumerate(tops):
            for entry in entries:
                out.write(json.dumps(_top_row(key, channel, entry, links[entry.position])) + "\n")
    cards = []
    for channel, entries in enumerate(tops):
        row = rows[channel]
        thumbs = []
        if optimized:
            thumbs.append(
                f'<img class="opt" loading="lazy" src="optimized/c{channel:04d}.jpg" alt="" '
                'title="the optimized image: what excites this channel most (featvis.maximize)">'
            )
        for entry in entries:
            view = "../view.html#" + urllib.parse.urlencode(
                {
                    "src": links[entry.position],  # view.html is in the atlas folder
                    "box": ",".join(map(str, entry.box or (0, 0, *entry.size))),
                    "size": f"{entry.size[0]},{entry.size[1]}",
                    "title": f"{key} channel {channel}, #{entry.rank + 1}: "
                    f"{_image_name(entry)}, {survey.by} {entry.value:.4g}",
                },
                quote_via=urllib.parse.quote,
            )
            tip = html.escape(f"{_image_name(entry)}: {survey.by} {entry.value:.4g}", quote=True)
            thumbs.append(
                f'<a href="{html.escape(view, quote=True)}"><img loading="lazy" '
                f'src="patches/c{channel:04d}_{entry.rank}.jpg" alt="" title="{tip}"></a>'
            )
        classes = survey.top_classes(key, channel, 3)
        class_line = (
            '<div class="cl">'
            + html.escape(", ".join(f"{c.label} {c.mean:.3g}" for c in classes))
            + "</div>"
            if classes
            else ""
        )
        dead = ' <b class="dead">never active</b>' if row["never_active"] else ""
        cards.append(
            f'<div class="ch" id="c{channel}" data-c="{channel}" data-max="{row["max"]:.6g}" '
            f'data-mean="{row["mean"]:.6g}" data-positive="{row["positive"]:.6g}" '
            f'data-dead="{int(row["never_active"])}"><h3>channel {channel}{dead}</h3>'
            f'<div class="st">mean {row["mean"]:.3g} &middot; max {row["max"]:.3g} &middot; '
            f"active {100 * row['positive']:.1f}%</div>{class_line}"
            f'<div class="th">{"".join(thumbs)}</div></div>'
        )
    state = survey._state(key)
    tied = survey.tied(key)
    tie_note = (
        f"<p><b>{len(tied)} channels</b> have all {survey.k} images at the same value (a "
        "clipped activation such as ReLU6 saturates): their order is only the tie-break by "
        "position. Survey the layer before the clip, or rank by mean.</p>"
        if tied
        else ""
    )
    header = (
        f"<h1>{html.escape(key)}</h1><p>{state.channels} channels of "
        f"{state.spatial[0]}x{state.spatial[1]} &middot; {survey.images} images"
        f"{f' ({survey.skipped} skipped)' if survey.skipped else ''} &middot; the {survey.k} "
        f"images of each channel with the highest {survey.by}, each cut to the part the peak "
        f"sees &middot; {len(stats.dead)} never active &middot; "
        '<a href="stats.jsonl">stats.jsonl</a> &middot; <a href="top.jsonl">top.jsonl</a> '
        '&middot; <a href="../index.html">all layers</a></p>' + tie_note
    )
    if optimized:
        header += (
            "<p>The first image of each channel, framed, is its optimized image "
            "(featvis.maximize): what excites the channel most, found by gradient ascent.</p>"
        )
    elif why_not:
        header += f"<p>{html.escape(why_not)}</p>"
    page = _LAYER.replace("{title}", html.escape(key)).replace("{header}", header)
    (where / "index.html").write_text(page.replace("{cards}", "\n".join(cards)), encoding="utf-8")


def _image_name(entry: TopImage) -> str:
    name = os.path.basename(entry.path) if entry.path else f"image {entry.position}"
    return f"{name} ({entry.label})" if entry.label is not None else name


def _index_page(survey: Survey, keys: list[str]) -> str:
    items = []
    for key in keys:
        stats = survey.stats(key)
        items.append(
            f'<li><a href="{slug(key)}/index.html">{html.escape(key)}</a>: '
            f"{len(stats.mean)} channels, {len(stats.dead)} never active</li>"
        )
    provenance = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in survey.provenance.items()
    )
    skipped = ""
    if survey.skipped:
        listed = "".join(
            f"<li>{html.escape(s.name)}: {html.escape(s.reason)}</li>"
            for s in survey.skipped_details
        )
        skipped = f"<h2>{survey.skipped} images skipped</h2><ul>{listed}</ul>"
    body = (
        f"<h1>featvis survey</h1><p>{survey.images} images, the {survey.k} best of each "
        f"channel by {survey.by}.</p><ul>{''.join(items)}</ul>"
        f"<table>{provenance}</table>{skipped}"
    )
    return _INDEX.replace("{body}", body)


_STYLE = """body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222}
a{color:#06c}table td{padding:0 1em 0 0}"""

_INDEX = f"""<!doctype html><html><head><meta charset="utf-8"><title>featvis survey</title>
<style>{_STYLE}</style></head><body>{{body}}</body></html>
"""

_LAYER = (
    """<!doctype html><html><head><meta charset="utf-8"><title>{title}: featvis survey</title>
<style>"""
    + _STYLE
    + """
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:10px}
.ch{border:1px solid #ddd;border-radius:4px;padding:4px 6px}
.ch h3{margin:0;font-size:14px}.st,.cl{color:#555;font-size:12px}.dead{color:#b00}
.th{display:flex;flex-wrap:wrap;gap:2px}.th img{width:96px;height:96px;object-fit:contain;
background:#eee}.th img.opt{outline:2px solid #36c;outline-offset:-2px}
#bar{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ddd}
</style></head><body>{header}
<div id="bar">sort by <select id="sort"><option value="c">channel</option>
<option value="max">max</option><option value="mean">mean</option>
<option value="positive">fraction active</option></select>
<label><input type="checkbox" id="hide"> hide never-active channels</label>
go to channel <input id="go" type="number" min="0" style="width:5em"></div>
<div id="grid">
{cards}
</div>
<script>
const grid=document.getElementById('grid'),cards=[...grid.children];
document.getElementById('sort').onchange=e=>{const k=e.target.value;
cards.sort((a,b)=>k==='c'?a.dataset.c-b.dataset.c:b.dataset[k]-a.dataset[k]);
cards.forEach(c=>grid.appendChild(c));};
document.getElementById('hide').onchange=e=>cards.forEach(c=>{
c.style.display=e.target.checked&&c.dataset.dead==='1'?'none':'';});
document.getElementById('go').onchange=e=>{const c=document.getElementById('c'+e.target.value);
if(c)c.scrollIntoView();};
</script></body></html>
"""
)

_VIEW = (
    """<!doctype html><html><head><meta charset="utf-8"><title>featvis survey: image</title>
<style>"""
    + _STYLE
    + """
#wrap{position:relative;display:inline-block}#wrap img{max-width:90vw;max-height:80vh;
display:block}#box{position:absolute;border:2px solid #f00;box-shadow:0 0 0 2000px
rgba(0,0,0,.35)}#wrap{overflow:hidden}
</style></head><body><p id="title"></p><div id="wrap"><img id="img" alt=""><div id="box">
</div></div><p><a id="full">the image file</a></p>
<script>
const q=new URLSearchParams(location.hash.slice(1));
const [t,l,b,r]=(q.get('box')||'0,0,0,0').split(',').map(Number);
const [h,w]=(q.get('size')||'1,1').split(',').map(Number);
document.getElementById('title').textContent=q.get('title')||'';
const img=document.getElementById('img'),box=document.getElementById('box');
img.src=q.get('src');document.getElementById('full').href=q.get('src');
Object.assign(box.style,{top:100*t/h+'%',left:100*l/w+'%',height:100*(b-t)/h+'%',
width:100*(r-l)/w+'%'});
</script></body></html>
"""
)


# -- a picture for notebooks and the docs -------------------------------------------------


def patch_montage(
    survey: Survey,
    layer: str | Layer,
    channels: Sequence[int] | None,
    images: Any,
    *,
    cell: int = 72,
    gap: int = 2,
) -> Picture:
    """One row per channel, its top-k patches left to right."""
    from featvis.render import Picture

    key = layer.name if isinstance(layer, Layer) else layer
    chosen = list(range(survey.channels(key))) if channels is None else list(channels)
    if not chosen:
        raise ArgumentError("No channels to draw.")
    reader = _Images(survey, images)
    canvas = np.full(
        (len(chosen) * (cell + gap) - gap, survey.k * (cell + gap) - gap, 3), 255, np.uint8
    )
    cache: dict[int, np.ndarray] = {}
    for row, channel in enumerate(chosen):
        for entry in survey.top(key, channel):
            if entry.position not in cache:
                cache[entry.position] = reader.rgb(entry.position)
            thumb = np.asarray(_thumbnail(_crop(cache[entry.position], entry.box), cell))
            y = row * (cell + gap) + (cell - thumb.shape[0]) // 2
            x = entry.rank * (cell + gap) + (cell - thumb.shape[1]) // 2
            canvas[y : y + thumb.shape[0], x : x + thumb.shape[1]] = thumb
    return Picture(canvas)
