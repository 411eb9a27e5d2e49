"""What each emulated endpoint produces: inputs fetched, output rendered, fal-shaped result JSON.

Renders are deterministic, so they are cached by a hash of the endpoint, the canonical arguments
and the bytes of every input file: a repeated request (a test suite's, or a user re-running the
same example) costs a file copy instead of an ffmpeg run, and still yields identical bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from klingflow.emulator import render
from klingflow.emulator.inputs import InputFetcher
from klingflow.emulator.queue import EmulatedRequest
from klingflow.endpoints import get_endpoint

__all__ = ["JobRunner"]

_CONTENT_TYPES = {".mp4": "video/mp4", ".mp3": "audio/mpeg"}


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class JobRunner:
    """Renders requests into ``data_dir/files/<request id>/`` and answers their result JSON."""

    def __init__(self, data_dir: Path, *, fetch_remote: bool = True) -> None:
        self.data_dir = data_dir
        self.fetcher = InputFetcher(data_dir, fetch_remote=fetch_remote)
        self.cache_dir = data_dir / "render-cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)

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
        key_material = json.dumps(
            {
                "endpoint": endpoint.id,
                "arguments": request.arguments,
                "inputs": {
                    name: [_file_digest(p) for p in (v if isinstance(v, list) else [v]) if p]
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
        out_dir = self.data_dir / "files" / request.id
        out_dir.mkdir(parents=True, exist_ok=True)
        name = f"output{suffix}"
        shutil.copyfile(cached, out_dir / name)
        result: dict[str, Any] = {
            output_field: {
                "url": f"{request.base_url}/files/{request.id}/{name}",
                "content_type": _CONTENT_TYPES[suffix],
                "file_name": name,
                "file_size": cached.stat().st_size,
            }
        }
        if endpoint.alias == "ai-avatar":
            result["duration"] = duration
        return result
