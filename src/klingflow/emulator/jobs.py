"""What each emulated endpoint produces: inputs fetched, output rendered, fal-shaped result JSON.

Any endpoint with a schema is served: :mod:`klingflow.emulator.outputs` reads from the registry what
the output is (renderer, files, length, size, sound, values, billable units) and this module fetches
the inputs, runs the renderer and answers the result JSON, each file as fal's ``File`` (``url``,
``content_type``, ``file_name``, ``file_size``; pictures also ``width`` and ``height``).

Renders are deterministic, so they are cached by a hash of the endpoint, the canonical arguments
and the bytes of every input file: a repeated request (a test suite's, or a user re-running the
same example) costs a file copy instead of an ffmpeg run, and still yields identical bytes.

In benchmark mode (``render="prerendered"``, see :mod:`klingflow.emulator.prerender`) every request
gets a distinct copy of a stock clip (picture, soundtrack) instead. Either way the request learns its
billable units, as fal reports them in ``x-fal-billable-units``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from klingflow._files import file_sha256
from klingflow.emulator import render
from klingflow.emulator._render_pictures import picture_for, save_picture
from klingflow.emulator.inputs import InputFetcher
from klingflow.emulator.options import EmulatorOptions
from klingflow.emulator.outputs import Media, OutputFile, OutputPlan, billable_units, plan_output
from klingflow.emulator.prerender import Prerendered
from klingflow.emulator.queue import EmulatedRequest
from klingflow.emulator.render import FPS
from klingflow.endpoints import ALIASES, EndpointInfo, MediaKind, get_endpoint, media_inputs
from klingflow.media import mux_audio

__all__ = ["JobRunner"]

_STOCK_NAMES = {
    "text": "text-to-video",
    "image": "image-to-video",
    "effects": "effects",
    "avatar": "ai-avatar",
}
"""Benchmark mode's stock clips are named by the kind of render (the seed's endpoint names, which keep
their clips), so every text-to-video endpoint shares one; the other renders share ``kling``."""


def _title(info: EndpointInfo) -> str:
    """The banner's endpoint line: the seed's short name, else family and mode (``o3 lipsync``)."""
    if info.alias in ALIASES:
        return info.alias
    return " ".join(part for part in (info.record.family, info.record.mode) if part) or info.id


def _length(seconds: float) -> float:
    """Whole seconds as an int (the seed's renders seed their randomness with ``5``, not ``5.0``)."""
    return int(seconds) if float(seconds).is_integer() else seconds


class JobRunner:
    """Renders requests into ``data_dir/files/<request id>/`` and answers their result JSON."""

    def __init__(
        self,
        data_dir: Path,
        *,
        fetch_remote: bool = True,
        options: Callable[[], EmulatorOptions] = EmulatorOptions,
    ) -> None:
        self.data_dir = data_dir
        self.fetcher = InputFetcher(data_dir, fetch_remote=fetch_remote)
        self.cache_dir = data_dir / "render-cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.options = options
        self.prerendered = Prerendered(data_dir / "render-cache" / "prerendered")

    async def __call__(self, request: EmulatedRequest) -> dict[str, Any]:
        return await asyncio.to_thread(self._produce, request)

    def _media(self, info: EndpointInfo, request: EmulatedRequest) -> Media:
        """Every media input of the request fetched (or a placeholder), by field path."""
        files: dict[str, list[Path]] = {}
        kinds: dict[str, MediaKind] = {}
        for path, url, kind in media_inputs(info.id, request.arguments):
            slot = re.sub(r"\[\d+\]", "", path)
            files.setdefault(slot, []).append(self.fetcher.fetch(url, kind, request))
            kinds[slot] = kind
        return Media(files, kinds)

    def _produce(self, request: EmulatedRequest) -> dict[str, Any]:
        info = get_endpoint(request.endpoint_id)
        media = self._media(info, request)
        plan = plan_output(info, request.arguments, media)
        digest = _digest(info, request.arguments, media)
        out_dir = self.data_dir / "files" / request.id
        out_dir.mkdir(parents=True, exist_ok=True)
        seconds: float | None
        if self.options().render == "prerendered":
            request.log(f"Benchmark mode: a copy of the stock {info.alias} clip")
            seconds = self._prerendered(info, plan, request, out_dir)
        else:
            seconds = self._rendered(info, plan, request, digest, out_dir)
        video_seconds = seconds if plan.file("video") is not None else None
        request.billable_units = billable_units(info, request.arguments, plan, video_seconds)
        result: dict[str, Any] = {}
        for item in plan.files:
            entry = _file_entry(request, out_dir, item, plan)
            if item.index is None:
                result[item.field] = entry
            else:
                result.setdefault(item.field, []).append(entry)
        for name, kind in info.values.items():
            if kind == "number":
                result[name] = seconds if seconds is not None else 0.0
            else:  # a fake id that the same input always gets (create-voice's voice_id)
                result[name] = f"emulated-{name.replace('_', '-')}-{digest[:16]}"
        return result

    def _rendered(
        self, info: EndpointInfo, plan: OutputPlan, request: EmulatedRequest, digest: str, out_dir: Path
    ) -> float | None:
        """Render (or reuse an identical earlier render of) every output file, then copy them out."""
        entry = self.cache_dir / digest
        meta = entry / "meta.json"
        if meta.is_file():
            request.log("Reusing an identical earlier render")
        else:
            request.log(f"Rendering {info.alias} with ffmpeg")
            partial = self.cache_dir / f"{digest}.partial-{uuid.uuid4().hex}"
            partial.mkdir()
            try:
                seconds = self._render(info, plan, request.arguments, partial)
                (partial / "meta.json").write_text(json.dumps({"seconds": seconds}))
                os.rename(partial, entry)
            except OSError:
                if not meta.is_file():  # not an identical render that finished first
                    raise
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        for item in plan.files:
            shutil.copyfile(entry / item.name, out_dir / item.name)
        seconds_done: float | None = json.loads(meta.read_text())["seconds"]
        return seconds_done

    def _render(
        self, info: EndpointInfo, plan: OutputPlan, args: dict[str, Any], folder: Path
    ) -> float | None:
        """Write every output file of ``plan`` into ``folder``; return the video's (or speech's) seconds."""
        if plan.recipe == "values":
            return None
        if plan.recipe == "pictures":
            assert plan.size is not None
            for item in plan.files:
                picture = picture_for(
                    title=_title(info),
                    prompt=plan.prompt,
                    size=plan.size,
                    index=item.index or 0,
                    source=plan.start,
                    garment=plan.garment,
                )
                save_picture(picture, folder / item.name)
            return None
        if plan.recipe == "speech":
            (item,) = plan.files
            return render.render_tts(
                text=args["text"],
                voice_id=args["voice_id"],
                voice_speed=float(args["voice_speed"]),
                out=folder / item.name,
            )
        video = plan.file("video")
        assert video is not None and plan.seconds is not None
        target = folder / video.name
        if plan.recipe == "avatar":
            return render.render_ai_avatar(
                prompt=args.get("prompt", "."),
                image=plan.start,  # type: ignore[arg-type]
                audio=plan.audio,  # type: ignore[arg-type]
                out=target,
            )
        silent = folder / f"silent-{video.name}" if plan.sound else target
        self._draw(info, plan, args, silent)
        generated = plan.file("audio")  # video-to-audio answers its sound as a file of its own
        sound = plan.audio  # an input's audio (lipsync) is muxed as it is
        if generated is not None or (plan.sound and sound is None):
            sound = folder / (generated.name if generated else "sound.mp3")
            render.render_soundtrack(
                text=plan.prompt or _title(info), voice_id=plan.voice, seconds=plan.seconds, out=sound
            )
        if plan.sound and sound is not None:
            mux_audio(silent, sound, target, fit="trim", context=f"{_title(info)} render {target}")
            silent.unlink()
            if generated is None and sound.parent == folder:
                sound.unlink()
        return plan.seconds

    def _draw(self, info: EndpointInfo, plan: OutputPlan, args: dict[str, Any], out: Path) -> None:
        """The silent video of ``plan``, with the renderer its recipe names."""
        assert plan.seconds is not None and plan.size is not None
        duration = _length(plan.seconds)
        if plan.recipe == "text":
            render.render_text_to_video(
                prompt=plan.prompt,
                duration=duration,
                aspect_ratio=plan.aspect_ratio,
                camera_control=args.get("camera_control"),
                advanced_camera_control=args.get("advanced_camera_control"),
                out=out,
            )
        elif plan.recipe in ("image", "motion"):
            render.render_image_to_video(
                prompt=plan.prompt,
                duration=duration,
                image=plan.start,  # type: ignore[arg-type]
                tail_image=plan.tail if plan.recipe == "image" else None,
                dynamic_masks=args.get("dynamic_masks"),
                out=out,
                size=plan.size,
            )
        elif plan.recipe == "effects":
            render.render_effects(
                effect_scene=args["effect_scene"], duration=duration, images=list(plan.images), out=out
            )
        else:
            render.render_from_video(
                title=_title(info),
                prompt=plan.prompt,
                video=plan.video,  # type: ignore[arg-type]
                size=plan.size,
                frames=round(plan.seconds * FPS),
                restyle=info.record.mode.startswith("video-to-video"),
                out=out,
            )

    def _prerendered(
        self, info: EndpointInfo, plan: OutputPlan, request: EmulatedRequest, out_dir: Path
    ) -> float | None:
        """Distinct copies of stock media, of the plan's length, size and sound."""
        args, stock = request.arguments, self.prerendered
        if plan.recipe == "values":
            return None
        if plan.recipe == "pictures":
            assert plan.size is not None
            for item in plan.files:
                stock.picture(plan.size, out_dir / item.name, request.id)
            return None
        if plan.recipe == "speech":
            (item,) = plan.files
            out = out_dir / item.name
            return stock.tts(args["text"], args["voice_id"], float(args["voice_speed"]), out, request.id)
        assert plan.seconds is not None and plan.size is not None
        frames = round(plan.seconds * FPS)
        alias = _STOCK_NAMES.get(plan.recipe, "kling")
        video = plan.file("video")
        assert video is not None
        out = out_dir / video.name
        if plan.sound and plan.audio is not None:
            stock.with_audio(alias, plan.size, frames, plan.audio, out, request.id)
        elif plan.sound:
            stock.with_sound(alias, plan.size, frames, out, request.id)
        else:
            stock.video(alias, plan.size, frames, out, request.id)
        sound_file = plan.file("audio")
        if sound_file is not None:
            stock.soundtrack(frames, out_dir / sound_file.name, request.id)
        return frames / FPS


def _digest(info: EndpointInfo, arguments: dict[str, Any], media: Media) -> str:
    """The render's cache key: endpoint, canonical arguments and the bytes of every input file."""
    material = json.dumps(
        {
            "endpoint": info.id,
            "arguments": arguments,
            "inputs": {slot: [file_sha256(path) for path in paths] for slot, paths in media.files.items()},
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def _file_entry(
    request: EmulatedRequest, out_dir: Path, item: OutputFile, plan: OutputPlan
) -> dict[str, Any]:
    """fal's ``File`` (or ``Image``) object for one output file."""
    entry: dict[str, Any] = {
        "url": f"{request.base_url}/files/{request.id}/{item.name}",
        "content_type": item.content_type,
        "file_name": item.name,
        "file_size": (out_dir / item.name).stat().st_size,
    }
    if item.kind == "image" and plan.size is not None:
        entry["width"], entry["height"] = plan.size
    return entry
