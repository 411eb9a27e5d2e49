"""Caption cues from a text and the audio it was spoken as, without a speech model.

The text is cut into sentences and each sentence into lines of at most :data:`MAX_LINE` characters,
at most :data:`LINES_PER_CUE` lines a cue (the usual limits of broadcast and platform captions), so a
cue never spans two sentences. Times are first shared out in proportion to each cue's characters over
the span the voice is heard; then every boundary between cues is moved to the middle of the nearest
pause the audio has, as long as the boundaries stay in order, and the cues between two moved
boundaries are shared out again in proportion. A speaker pauses between sentences far more reliably
than a character count predicts where they end, and a forced aligner would need a model download.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LINES_PER_CUE", "MAX_LINE", "Cue", "cue_lines", "timed_cues"]

MAX_LINE = 42
"""Characters a caption line may hold."""

LINES_PER_CUE = 2
"""Lines a caption cue may hold."""

_SENTENCE_END = re.compile(r"(?<=[.!?\u2026\u3002])[\"'\u201d\u2019)\]]*\s+")


@dataclass(frozen=True)
class Cue:
    """One caption: shown from ``start`` to ``end`` (seconds), one or two ``lines``."""

    start: float
    end: float
    lines: tuple[str, ...]


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, MAX_LINE, break_on_hyphens=False)


def _balanced(sentence: str, count: int) -> list[tuple[str, ...]] | None:
    """The sentence in ``count`` cues of about equal length, or None if one would need three lines."""
    words, target = sentence.split(), len(sentence) / count
    groups: list[list[str]] = [[]]
    for word in words:
        if groups[-1] and len(groups) < count and len(" ".join(groups[-1])) >= target:
            groups.append([])
        groups[-1].append(word)
    cues = [_even(" ".join(group)) for group in groups]
    return cues if all(len(cue) <= LINES_PER_CUE for cue in cues) else None


def _even(text: str) -> tuple[str, ...]:
    """``text`` in its fewest lines, those of about equal length (the narrowest wrap that needs no more)."""
    fewest = len(_wrap(text))
    for width in range(-(-len(text) // fewest), MAX_LINE):
        lines = textwrap.wrap(text, width, break_on_hyphens=False)
        if len(lines) == fewest:
            return tuple(lines)
    return tuple(_wrap(text))


def cue_lines(text: str) -> list[tuple[str, ...]]:
    """The text laid out as cues: per sentence, lines of at most MAX_LINE characters, two a cue.

    A sentence is shared out evenly over as few cues as it needs, and a cue's two lines are of about
    equal length, so no cue ends on a stray short line.
    """
    blocks: list[tuple[str, ...]] = []
    for sentence in _SENTENCE_END.split(" ".join(text.split())):
        lines = _wrap(sentence)
        if not lines:
            continue
        count = -(-len(lines) // LINES_PER_CUE)
        chunked = [tuple(lines[i : i + LINES_PER_CUE]) for i in range(0, len(lines), LINES_PER_CUE)]
        blocks.extend(_balanced(sentence, count) or chunked)
    return blocks


def _speech_span(duration: float, pauses: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Where the voice is heard: the audio less a silence at its very start and its very end."""
    start, end = 0.0, duration
    for pause_start, pause_end in pauses:
        if pause_start <= 0.01:
            start = max(start, pause_end)
        if pause_end >= duration - 0.01:
            end = min(end, pause_start)
    return (start, end) if end > start else (0.0, duration)


def _snapped(
    guesses: Sequence[float], pauses: Sequence[tuple[float, float]], span: tuple[float, float]
) -> dict[int, float]:
    """Boundary index -> the middle of the pause it moves to: nearest pairs first, order kept."""
    middles = [(a + b) / 2 for a, b in pauses if span[0] < (a + b) / 2 < span[1]]
    pairs = sorted(
        (abs(guess - middle), k, p) for k, guess in enumerate(guesses) for p, middle in enumerate(middles)
    )
    chosen: dict[int, int] = {}
    for _, k, p in pairs:
        if k in chosen or p in chosen.values():
            continue
        if all((k < other) == (p < pause) for other, pause in chosen.items()):
            chosen[k] = p
    return {k: middles[p] for k, p in chosen.items()}


def timed_cues(
    blocks: Sequence[tuple[str, ...]], duration: float, pauses: Sequence[tuple[float, float]]
) -> list[Cue]:
    """Times for ``blocks`` over ``duration`` seconds of audio with the given pauses (start, end)."""
    if not blocks:
        return []
    start, end = _speech_span(duration, pauses)
    weights = [sum(len(line) for line in block) for block in blocks]
    totals = [sum(weights[: k + 1]) for k in range(len(weights))]
    guesses = [start + (end - start) * totals[k] / totals[-1] for k in range(len(blocks) - 1)]
    anchors = {-1: start, len(blocks) - 1: end, **_snapped(guesses, pauses, (start, end))}
    position = {k: (totals[k] if k >= 0 else 0) for k in anchors}
    times: list[float] = []
    for k in range(len(blocks) - 1):
        if k in anchors:
            times.append(anchors[k])
            continue
        before = max(a for a in anchors if a < k)
        after = min(a for a in anchors if a > k)
        share = (totals[k] - position[before]) / (position[after] - position[before])
        times.append(anchors[before] + (anchors[after] - anchors[before]) * share)
    edges = [start, *times, end]
    return [Cue(edges[k], edges[k + 1], block) for k, block in enumerate(blocks)]
