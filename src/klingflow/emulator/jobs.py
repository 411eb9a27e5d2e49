"""What each emulated endpoint produces: inputs fetched, output rendered, fal-shaped result JSON.

Renders are deterministic, so they are cached by a hash of the endpoint, the canonical arguments
and the bytes of every input file: a repeated request (a test suite's, or a user re-running the
same example) costs a file copy instead of an ffmpeg run, and still yields identical bytes.

In benchmark mode (``render="prerendered"``, see :mod:`klingflow.emulator.prerender`) every request
gets a distinct copy of a stock clip instead. Either way the request learns its billable units, as
fal reports them in ``x-fal-billable-units``: seconds of video (the requested 5 or 10; the clip's
length for ai-avatar, which follows its audio) and 1 per TTS generation.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from klingflow._files import file_sha256
from klingflow.emulator import render
from klingflow.emulator._render_scene import image_size
from klingflow.emulator.inputs import InputFetcher
from klingflow.emulator.options import EmulatorOptions
from klingflow.emulator.prerender import Prerendered
from klingflow.emulator.queue import EmulatedRequest
from klingflow.emulator.render import FPS
from klingflow.endpoints import get_endpoint
from klingflow.media import probe

__all__ = ["JobRunner"]

_CONTENT_TYPES = {".mp4": "video/mp4", ".mp3": "audio/mpeg"}


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

    def _inputs(self, request: EmulatedRequest) -> dict[str, Any]:
        args, fetch = request.arguments, self.fetcher.fetch
        alias = get_endpoint(request.endpoint_id).alias
        if alias == "image-to-video":
            return {
                "image": fetch(args["image_url"], "image", request),
                "tail_image": fetch(args["tail_image_url"], "image", request)
                if args.get("tail_image_url")
                else None,
            }
        if alias == "effects":
            urls = args.get("input_image_urls") or []
            return {"images": [fetch(url, "image", request) for url in urls]}
        if alias == "ai-avatar":
            return {
                "image": fetch(args["image_url"], "image", request),
                "audio": fetch(args["audio_url"], "audio", request),
            }
        return {}

    def _render(self, alias: str, args: dict[str, Any], inputs: dict[str, Any], out: Path) -> float | None:
        if alias == "text-to-video":
            render.render_text_to_video(
                prompt=args["prompt"],
                duration=int(args["duration"]),
                aspect_ratio=args["aspect_ratio"],
                camera_control=args.get("camera_control"),
                advanced_camera_control=args.get("advanced_camera_control"),
                out=out,
            )
        elif alias == "image-to-video":
            render.render_image_to_video(
                prompt=args["prompt"],
                duration=int(args["duration"]),
                image=inputs["image"],
                tail_image=inputs["tail_image"],
                dynamic_masks=args.get("dynamic_masks"),
                out=out,
            )
        elif alias == "effects":
            render.render_effects(
                effect_scene=args["effect_scene"],
                duration=int(args["duration"]),
                images=inputs["images"],
                out=out,
            )
        elif alias == "ai-avatar":
            return render.render_ai_avatar(
                prompt=args.get("prompt", "."), image=inputs["image"], audio=inputs["audio"], out=out
            )
        else:
            return render.render_tts(
                text=args["text"], voice_id=args["voice_id"], voice_speed=float(args["voice_speed"]), out=out
            )
        return None

    def _produce(self, request: EmulatedRequest) -> dict[str, Any]:
        endpoint = get_endpoint(request.endpoint_id)
        inputs = self._inputs(request)
        output_field = next(iter(endpoint.produces))
        suffix = ".mp3" if endpoint.produces[output_field] == "audio" else ".mp4"
        out_dir = self.data_dir / "files" / request.id
        out_dir.mkdir(parents=True, exist_ok=True)
        name = f"output{suffix}"
        duration: float | None
        if self.options().render == "prerendered":
            request.log(f"Benchmark mode: a copy of the stock {endpoint.alias} clip")
            duration = self._prerendered(endpoint.alias, request, inputs, out_dir / name)
        else:
            duration = self._rendered(endpoint, request, inputs, suffix, out_dir / name)
        request.billable_units = _billable_units(endpoint.alias, request.arguments, duration)
        result: dict[str, Any] = {
            output_field: {
                "url": f"{request.base_url}/files/{request.id}/{name}",
                "content_type": _CONTENT_TYPES[suffix],
                "file_name": name,
                "file_size": (out_dir / name).stat().st_size,
            }
        }
        if endpoint.alias == "ai-avatar":
            result["duration"] = duration
        return result

    def _rendered(
        self, endpoint: Any, request: EmulatedRequest, inputs: dict[str, Any], suffix: str, out: Path
    ) -> float | None:
        key_material = json.dumps(
            {
                "endpoint": endpoint.id,
                "arguments": request.arguments,
                "inputs": {
                    name: [file_sha256(p) for p in (v if isinstance(v, list) else [v]) if p]
                    for name, v in inputs.items()
                },
            },
            sort_keys=True,
        )
        key = hashlib.sha256(key_material.encode()).hexdigest()
        cached, meta = self.cache_dir / f"{key}{suffix}", self.cache_dir / f"{key}.json"
        if cached.is_file() and meta.is_file():
            request.log("Reusing an identical earlier render")
            duration = json.loads(meta.read_text())["duration"]
        else:
            request.log(f"Rendering {endpoint.alias} with ffmpeg")
            duration = self._render(endpoint.alias, request.arguments, inputs, cached)
            meta.write_text(json.dumps({"duration": duration}))
        shutil.copyfile(cached, out)
        return duration

    def _prerendered(self, alias: str, request: EmulatedRequest, inputs: dict[str, Any], out: Path) -> float:
        args, stock = request.arguments, self.prerendered
        if alias == "tts":
            return stock.tts(args["text"], args["voice_id"], float(args["voice_speed"]), out, request.id)
        if alias == "ai-avatar":
            heard = probe(inputs["audio"])
            frames = max(1, round((heard.audio_duration or heard.duration) * FPS))
            size = render.nearest_size(*image_size(inputs["image"]))
            stock.avatar(size, frames, inputs["audio"], out, request.id)
            return frames / FPS
        frames = int(args["duration"]) * FPS
        if alias == "text-to-video":
            size = render.output_size(args["aspect_ratio"])
        elif alias == "image-to-video":
            size = render.nearest_size(*image_size(inputs["image"]))
        else:  # effects: the first image sets the size; with none, fal's square placeholder portrait
            images = inputs["images"]
            size = render.nearest_size(*image_size(images[0])) if images else (960, 960)
        stock.video(alias, size, frames, out, request.id)
        return frames / FPS


def _billable_units(alias: str, arguments: dict[str, Any], duration: float | None) -> float:
    """What fal bills the request for: video seconds (requested, or the avatar clip's), 1 per TTS."""
    if alias == "tts":
        return 1.0
    if alias == "ai-avatar":
        return round(float(duration or 0.0), 3)
    return float(int(arguments["duration"]))
