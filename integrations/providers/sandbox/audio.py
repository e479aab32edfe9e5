"""Generated recordings for the sandbox PBX: a few seconds of telephone-band tones, as WAV or MP3.

WAV comes from the standard library (`wave`). MP3 is encoded with `lameenc` (pinned in requirements.txt): a
PyPI wheel that bundles the LAME encoder, so neither `make run` nor CI needs a system package such as lame or
ffmpeg. WireCRM's player takes only MP3, so the sandbox PBX records MP3 whenever an active CRM of the tenant
says it plays nothing else (CrmProvider.playable_types).
"""

from __future__ import annotations

import io
import math
import struct
import wave

SAMPLE_RATE = 8000  # telephone band, like the PBXs' own recordings
MAX_SECONDS = 20
MP3_BITRATE_KBPS = 32
WAV, MP3 = "audio/wav", "audio/mpeg"
SUFFIXES = {WAV: "wav", MP3: "mp3"}


def pcm(seconds: float, seed: int = 0) -> bytes:
    """16-bit mono samples: alternating two-tone "voices" with short pauses, different per call (seed), so
    a played recording is audibly a conversation-shaped sound rather than silence."""
    seconds = max(1.0, min(float(seconds), MAX_SECONDS))
    frames = int(seconds * SAMPLE_RATE)
    voices = ((330 + seed % 7 * 20, 440), (520, 660 + seed % 5 * 15))
    out = bytearray()
    for i in range(frames):
        t = i / SAMPLE_RATE
        turn = int(t / 1.5) % 2
        in_pause = (t % 1.5) > 1.2
        low, high = voices[turn]
        value = (
            0.0
            if in_pause
            else 0.3 * math.sin(2 * math.pi * low * t) + 0.2 * math.sin(2 * math.pi * high * t)
        )
        out += struct.pack("<h", int(value * 32767))
    return bytes(out)


def wav(seconds: float, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(pcm(seconds, seed))
    return buffer.getvalue()


def mp3(seconds: float, seed: int = 0) -> bytes:
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(MP3_BITRATE_KBPS)
    encoder.set_in_sample_rate(SAMPLE_RATE)
    encoder.set_channels(1)
    encoder.set_quality(7)
    data = encoder.encode(pcm(seconds, seed))
    return bytes(data + encoder.flush())


def render(content_type: str, seconds: float, seed: int = 0) -> bytes:
    return mp3(seconds, seed) if content_type == MP3 else wav(seconds, seed)
