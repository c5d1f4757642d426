"""``featvis show MODEL IMAGE --layer L``: one layer's channels as a montage, or one channel
paired with the image."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

from featvis._errors import ArgumentError
from featvis._figures import MAX_SIZE, describe, for_display, readable_scale, strongest
from featvis.cli._inputs import (
    IMAGE_HELP,
    add_max_size,
    channel_index,
    open_image,
    open_model,
    parse_grid,
    positive_int,
)
from featvis.cli._outputs import check_output_file, writing
from featvis.cli._steps import Console
from featvis.cli.layers import add_model_arguments
from featvis.render import COLORMAPS, grid_shape, montage, normalize, pair, top_channels

__all__ = ["register"]

#: How each --mode places the channel, as the console says it.
_PLACED = {
    "montage": "beside the image",
    "overlay": "as a heat map over the image",
    "blend": "blended with the image (in gray)",
    "falsecolor": "in magenta over the image in green (false color)",
}
#: The colormap each drawing uses unless --cmap names another; None: fixed colors.
_DEFAULT_CMAP = {"montage": "gray", "overlay": "jet", "blend": None, "falsecolor": None}


def _check(args: argparse.Namespace) -> str | None:
    """The options checked against each other before anything is opened; the pair mode."""
    picked = [
        name
        for name, given in (
            ("--channel", args.channel is not None),
            ("--strongest", args.strongest),
            ("--top", args.top is not None),
        )
        if given
    ]
    if len(picked) > 1:
        raise ArgumentError(
            f"Choose one of --channel, --strongest and --top, not {' and '.join(picked)}."
        )
    pairing = args.channel is not None or args.strongest
    if args.mode is not None and not pairing:
        raise ArgumentError(
            "--mode pairs one channel with the image: add --channel K or --strongest."
        )
    if args.grid is not None and pairing:
        raise ArgumentError(
            "--grid arranges a montage; --channel and --strongest draw one channel."
        )
    mode = (args.mode or "montage") if pairing else None
    if args.cmap is not None and mode is not None and _DEFAULT_CMAP[mode] is None:
        raise ArgumentError(
            f"--cmap does not apply to --mode {mode}, which draws fixed colors; it applies to a "
            "montage, --mode montage (default gray) and --mode overlay (default jet)."
        )
    if args.output is not None:
        check_output_file(args.output, "-o")
    return mode


def _grid(grid: Any, channels: int, tile: tuple[int, int]) -> None:
    """The montage's own check of --grid, said as the command line's error."""
    try:
        grid_shape(grid, channels, tile)
    except ArgumentError as exc:
        raise ArgumentError(f"--grid: {exc}") from None


def run(args: argparse.Namespace, console: Console) -> int:
    mode = _check(args)
    _, image = open_image(args.image)  # before the model: a bad path fails in milliseconds
    backend = open_model(args.model, backend=args.backend)
    layer = backend.layer(args.layer)
    acts = backend.activations(image, layer)[0]
    channels = acts.shape[0]
    info = describe(layer, acts)
    out = Path(args.output) if args.output else check_output_file(f"{layer.alias}.png", "-o")
    if mode is not None:
        if args.strongest:
            k, why = strongest(acts, by=args.by)
            what = f"channel {k}, the strongest ({why}),"
        else:
            k = args.channel
            if not 0 <= k < channels:
                matlab = (
                    f"; featvis counts from 0, so MATLAB's channel {k} is {k - 1}"
                    if k == channels
                    else ""
                )
                raise ArgumentError(
                    f"--channel {k} is out of range: {info}, numbered 0 to {channels - 1}{matlab}."
                )
            what = f"channel {k}"
        values = acts[k]
        scope: Literal["global"] | None = "global"  # mat2gray of this channel alone
        if (args.normalize or "channel") == "global":  # on the layer's range, so channels compare
            values, scope = normalize(acts)[k], None
        cmap = args.cmap or _DEFAULT_CMAP[mode]
        shown = for_display(image, args.max_size)
        picture = pair(shown, values, mode=mode, scope=scope, cmap=cmap)  # type: ignore[arg-type]
        what = f"{what} {_PLACED[mode]}"
    else:
        chosen = list(range(channels))
        what = "all channels"
        if args.top is not None:
            chosen = top_channels(acts, args.top, by=args.by)
            what = (
                f"the {len(chosen)} strongest channels by {args.by} ({', '.join(map(str, chosen))})"
            )
            if args.top > channels:
                what += f"; the layer has only {channels}"
        maps = acts[chosen]
        if args.grid is not None:
            _grid(args.grid, len(maps), maps.shape[1:])
        scale = readable_scale(maps.shape, args.grid, args.max_size)
        picture = montage(
            maps,
            grid=args.grid,
            scope=args.normalize or "global",
            scale=scale,
            cmap=args.cmap or "gray",
        )
        if scale > 1:
            what += f", each value drawn as {scale}x{scale} pixels"
    with writing(out):
        picture.save(out)
    console.say(f"{info}: {what} -> {out}", always=True)
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    show = commands.add_parser(
        "show",
        parents=[common],
        help="draw one layer's activations for an image",
        description="Draw a montage of every channel of a layer, or one channel resized and "
        "paired with the image (--channel, --strongest). Channels count from 0 (MATLAB's "
        f"channel 32 is 31). The image is shown at most {MAX_SIZE} pixels on its longer side "
        "(--max-size); the model sees it whole.",
    )
    add_model_arguments(show)
    show.add_argument("image", metavar="IMAGE", help=IMAGE_HELP)
    show.add_argument(
        "--layer",
        required=True,
        help="layer name, alias or index in the layer table (conv1, features.0, 0 ...)",
    )
    choice = show.add_argument_group("what to draw (default: a montage of all channels)")
    choice.add_argument(
        "--channel", type=channel_index, metavar="K", help="channel K (from 0) with the image"
    )
    choice.add_argument(
        "--strongest", action="store_true", help="the strongest channel with the image"
    )
    choice.add_argument(
        "--top", type=positive_int, metavar="K", help="a montage of the K strongest channels"
    )
    show.add_argument(
        "--by",
        choices=["max", "mean", "l2"],
        default="max",
        help="how 'strongest' is measured (default: max, as MATLAB's max(max(max()))); "
        "channels that tie (many reach a ReLU6's ceiling) are ranked by their mean",
    )
    show.add_argument(
        "--normalize",
        choices=["global", "channel"],
        help="montage: over all channels (default) or each alone; a single "
        "channel: alone (default) or on the layer's range",
    )
    show.add_argument("--grid", type=parse_grid, metavar="RxC", help="montage grid, e.g. 8x12")
    show.add_argument(
        "--mode",
        choices=list(_PLACED),
        help="how a channel is paired with the image: montage (side by side, the default), "
        "overlay (a heat map over it), blend (averaged in gray), falsecolor (green and "
        "magenta)",
    )
    show.add_argument(
        "--cmap",
        choices=COLORMAPS,
        help="colormap of a montage and of --mode montage (default gray) or overlay (default "
        "jet); blend and falsecolor draw fixed colors",
    )
    add_max_size(show)
    show.add_argument("-o", "--output", metavar="OUT.png", help="output file (default: ALIAS.png)")
    show.set_defaults(run=run)
