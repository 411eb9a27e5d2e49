"""Pydantic models of fal's Kling v1 endpoints and a registry of what each one takes, gives and costs.

Endpoints (fal id, alias): ``fal-ai/kling-video/v1/standard/{text-to-video,image-to-video,ai-avatar,
effects}`` and ``fal-ai/kling-video/v1/tts``. Every field, default, enum and limit follows fal's schema
(``design/kling-schema.md``); checking them here means a typo costs nothing instead of a paid request.

Enums. An unknown value is refused with the closest known one, e.g. ``'hugg' is not a known
effect_scene; did you mean 'hug'?``. ``duration`` also takes the ints 5 and 10 (YAML writes ``5``) and
turns them into fal's strings ``"5"`` and ``"10"``. Each enum field's JSON schema lists its values as
``enum``, so forms can show drop-downs.

Growing enums (this is where the setting is documented). fal adds effect scenes and voices over time
(effect scenes went from 5 to 198 in 18 months). To use a value newer than klingflow's list:

- set ``KLINGFLOW_EXTRA_ENUM_VALUES="effect_scene=new_scene,other_scene;voice_id=new_voice"``, or
- call ``allow_enum_values("effect_scene", ["new_scene"])``; ``reset_enum_values()`` undoes the calls.

Both are read at validation time and apply to ``effect_scene`` and ``voice_id``. An added effect scene
takes one or two images, since klingflow cannot know which.

Effect images. Pair scenes (:data:`DUAL_IMAGE_SCENES`: hug, kiss, heart_gesture, ...) take exactly two
``input_image_urls``, other known scenes exactly one. The count is checked only when the list is given,
because fal marks it optional and fal's quick-start sends ``{"effect_scene": "hug"}`` alone.

Input images. Kling takes JPEG or PNG, at most 10 MB, sides of at least 300 pixels and an aspect ratio
between 1:2.5 and 2.5:1 (:data:`IMAGE_LIMITS`). fal's schema only says "URL", so the limits are checked
where the image can be seen: on local files, by ``klingflow.spec.check``.

Prices. fal's public prices: $0.045 per second of video (text-to-video, image-to-video, effects),
$0.0562 per second for ai-avatar, $0.007 per TTS request. Override them per call (``prices=``) or with
``KLINGFLOW_PRICES='{"text-to-video": 0.05}'`` (alias or id keys). An ai-avatar estimate made before
the output length is known assumes ``assumed_seconds`` (default :data:`AVATAR_ASSUMED_SECONDS`, 10 s).

Example::

    from klingflow.endpoints import canonical_arguments, estimate_cost, validate_input

    call = validate_input("text-to-video", {"prompt": "a red fox in snow", "duration": 10})
    canonical_arguments(call)["duration"]   # "10"
    estimate_cost("text-to-video", call)     # 0.45
"""

from __future__ import annotations

from klingflow.endpoints._enums import (
    EXTENSIBLE_ENUMS,
    EXTRA_ENUM_VALUES_ENV,
    FalEnum,
    allow_enum_values,
    extra_enum_values,
    reset_enum_values,
    suggest,
)
from klingflow.endpoints._models import (
    DUAL_IMAGE_SCENES,
    EFFECT_SCENES,
    IMAGE_LIMITS,
    TTS_VOICES,
    AiAvatarInput,
    AiAvatarOutput,
    CameraControl,
    DynamicMask,
    EffectsInput,
    FalInput,
    FalOutput,
    File,
    ImageLimits,
    ImageToVideoInput,
    TextToVideoInput,
    Trajectory,
    TtsInput,
    TtsOutput,
    VideoOutput,
    scene_image_counts,
)
from klingflow.endpoints._registry import (
    AVATAR_ASSUMED_SECONDS,
    ENDPOINTS,
    PRICES_ENV,
    EndpointInfo,
    MediaKind,
    PriceUnit,
    canonical_arguments,
    estimate_cost,
    estimate_seconds,
    get_endpoint,
    is_url,
    media_inputs,
    parse_output,
    set_media_input,
    unit_price,
    validate_input,
)

__all__ = [
    "AVATAR_ASSUMED_SECONDS",
    "DUAL_IMAGE_SCENES",
    "EFFECT_SCENES",
    "ENDPOINTS",
    "EXTENSIBLE_ENUMS",
    "EXTRA_ENUM_VALUES_ENV",
    "IMAGE_LIMITS",
    "PRICES_ENV",
    "TTS_VOICES",
    "AiAvatarInput",
    "AiAvatarOutput",
    "CameraControl",
    "DynamicMask",
    "EffectsInput",
    "EndpointInfo",
    "FalEnum",
    "FalInput",
    "FalOutput",
    "File",
    "ImageLimits",
    "ImageToVideoInput",
    "MediaKind",
    "PriceUnit",
    "TextToVideoInput",
    "Trajectory",
    "TtsInput",
    "TtsOutput",
    "VideoOutput",
    "allow_enum_values",
    "canonical_arguments",
    "estimate_cost",
    "estimate_seconds",
    "extra_enum_values",
    "get_endpoint",
    "is_url",
    "media_inputs",
    "parse_output",
    "set_media_input",
    "reset_enum_values",
    "scene_image_counts",
    "unit_price",
    "validate_input",
    "suggest",
]
