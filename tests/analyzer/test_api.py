"""HTTP behaviour of the analyzer: formats, streaming, errors, auth and admission control."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.analyzer.conftest import (
    NDJSON,
    analyzer_client,
    fixture_bytes,
    live_server,
    make_settings,
)

STEPS = {"decoding", "feature_extraction", "syllable_detection", "scoring", "suggestions"}

MIN_SECONDS = 8.0  # the padded run of test_min_seconds_stretches_the_run_with_progress_lines


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    code: str = body["error"]["code"]
    return code


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


async def post(client: httpx.AsyncClient, body: Any, media: str, **kw: Any) -> httpx.Response:
    headers = {"content-type": media, **kw.pop("headers", {})}
    return await client.post("/v1/analyze", content=body, headers=headers, **kw)


async def test_same_recording_as_wav_mp3_m4a_agrees(api: httpx.AsyncClient) -> None:
    results = {}
    for ext, media in (("wav", "audio/wav"), ("mp3", "audio/mpeg"), ("m4a", "audio/x-m4a")):
        response = await post(
            api, fixture_bytes(f"speech_normal.{ext}"), media, params={"language": "en"}
        )
        assert response.status_code == 200, response.text
        results[ext] = response.json()
    wav = results["wav"]
    measures = wav["detailed_analysis"]["measures"]
    for ext in ("mp3", "m4a"):
        other = results[ext]
        om = other["detailed_analysis"]["measures"]
        assert other["detailed_analysis"]["audio"]["decoder"] == "pyav"
        assert abs(om["syllable_count"]["value"] - measures["syllable_count"]["value"]) <= 1
        assert om["f0_mean_hz"]["value"] == pytest.approx(measures["f0_mean_hz"]["value"], rel=0.02)
        assert om["speech_rate"]["value"] == pytest.approx(
            measures["speech_rate"]["value"], rel=0.05
        )
        assert other["fluency_score"] == pytest.approx(wav["fluency_score"], abs=5)
        assert other["rhythm_score"] == pytest.approx(wav["rhythm_score"], abs=10)


async def test_octet_stream_is_identified_by_magic_bytes(api: httpx.AsyncClient) -> None:
    response = await post(api, fixture_bytes("speech_fast.wav"), "application/octet-stream")
    assert response.status_code == 200
    assert response.json()["detailed_analysis"]["audio"]["container"] == "wav"


async def test_ndjson_streams_monotonic_progress_then_one_result(api: httpx.AsyncClient) -> None:
    response = await post(api, fixture_bytes("speech_fast.wav"), "audio/wav", headers=NDJSON)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    events = lines(response.text)
    progress = [e for e in events if e["event"] == "progress"]
    assert events[-1]["event"] == "result" and [e["event"] for e in events[:-1]] == ["progress"] * (
        len(events) - 1
    )
    values = [e["progress"] for e in progress]
    assert values == sorted(set(values)) and 0 <= values[0] and values[-1] <= 100
    assert {e["step"] for e in progress} == STEPS
    assert all(isinstance(e["message"], str) and e["message"] for e in progress)
    assert events[-1]["result"]["fluency_score"] is not None


async def test_stream_failure_ends_with_error_line(api: httpx.AsyncClient) -> None:
    silence = wav_bytes(np.zeros(16000, dtype=np.float32))
    response = await post(api, silence, "audio/wav", headers=NDJSON)
    events = lines(response.text)
    assert events[-1] == {
        "event": "error",
        "error": {"code": "no_speech", "message": events[-1]["error"]["message"], "status": 422},
    }
    assert sum(1 for e in events if e["event"] in ("result", "error")) == 1


async def test_silence_is_no_speech(api: httpx.AsyncClient) -> None:
    response = await post(api, wav_bytes(np.zeros(16000, dtype=np.float32)), "audio/wav")
    assert response.status_code == 422 and error_code(response) == "no_speech"


async def test_garbage_bytes_are_415(api: httpx.AsyncClient) -> None:
    response = await post(
        api, b"\x00\x01garbage that is not audio at all", "application/octet-stream"
    )
    assert response.status_code == 415 and error_code(response) == "unsupported_media_type"


async def test_text_sent_as_wav_is_415(api: httpx.AsyncClient) -> None:
    text = b"This is a plain text file that was renamed to recording.wav\n" * 4
    response = await post(api, text, "audio/wav")
    assert response.status_code == 415 and error_code(response) == "unsupported_media_type"


async def test_unsupported_content_type_is_415(api: httpx.AsyncClient) -> None:
    response = await post(api, fixture_bytes("speech_fast.wav"), "text/plain")
    assert response.status_code == 415 and error_code(response) == "unsupported_media_type"


async def test_empty_body_is_422(api: httpx.AsyncClient) -> None:
    response = await post(api, b"", "audio/wav")
    assert response.status_code == 422 and error_code(response) == "empty_audio"


async def test_corrupt_audio_with_valid_magic_is_undecodable(api: httpx.AsyncClient) -> None:
    body = b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4
    response = await post(api, body, "audio/wav")
    assert response.status_code == 422 and error_code(response) == "undecodable_audio"


@pytest.mark.parametrize(("ext", "media"), [("wav", "audio/wav"), ("mp3", "audio/mpeg")])
async def test_truncated_file_is_analysed_with_warning(
    api: httpx.AsyncClient, ext: str, media: str
) -> None:
    data = fixture_bytes(f"speech_normal.{ext}")
    response = await post(api, data[: len(data) * 2 // 3], media)
    assert response.status_code == 200, response.text
    codes = [w["code"] for w in response.json()["detailed_analysis"]["warnings"]]
    assert "truncated" in codes


async def test_target_text_too_long_is_422(api: httpx.AsyncClient) -> None:
    params = {"target_text": "a" * 2001}
    response = await post(api, fixture_bytes("speech_fast.wav"), "audio/wav", params=params)
    assert response.status_code == 422 and error_code(response) == "invalid_parameter"


async def test_unsupported_language_does_not_invent_pronunciation(api: httpx.AsyncClient) -> None:
    params = {"target_text": "Today I want to read a short story.", "language": "ja"}
    response = await post(api, fixture_bytes("speech_fast.wav"), "audio/wav", params=params)
    body = response.json()
    assert body["pronunciation_accuracy"] is None
    reason = body["detailed_analysis"]["pronunciation_accuracy"]["reason"]
    assert "Mandarin" in reason and "'ja'" in reason


async def test_unknown_route_uses_error_envelope(api: httpx.AsyncClient) -> None:
    response = await api.get("/v2/nothing")
    assert response.status_code == 404 and error_code(response) == "not_found"
    wrong_method = await api.get("/v1/analyze")
    assert wrong_method.status_code == 405 and error_code(wrong_method) == "method_not_allowed"


async def test_health_and_info(api: httpx.AsyncClient) -> None:
    health = (await api.get("/healthz")).json()
    assert health["status"] == "ok" and health["model_version"] == "reference-praat-1.1"
    assert {"praat", "parselmouth", "libsndfile", "pyav"} <= set(health["versions"])
    assert health["limits"]["max_bytes"] == 52_428_800
    info = (await api.get("/v1/info")).json()
    fluency = info["scores"]["fluency_score"]["components"]
    assert abs(sum(c["weight"] for c in fluency) - 1.0) < 1e-9
    assert all(c["sources"] and c["bands"]["child"] for c in fluency)
    assert "jitter_local_percent" in info["measures"]


async def chunks(total: int, size: int = 4096) -> AsyncIterator[bytes]:
    header = fixture_bytes("speech_fast.wav")[:44]
    yield header
    sent = len(header)
    while sent < total:
        yield b"\x00" * size
        sent += size


async def test_oversize_streamed_body_without_length_is_413() -> None:
    async with analyzer_client(make_settings(max_bytes=50_000)) as client:
        request = client.build_request(
            "POST", "/v1/analyze", content=chunks(200_000), headers={"content-type": "audio/wav"}
        )
        assert "content-length" not in request.headers
        response = await client.send(request)
        assert response.status_code == 413 and error_code(response) == "payload_too_large"


async def test_too_long_recording_is_422() -> None:
    async with analyzer_client(make_settings(max_seconds=2.0)) as client:
        response = await post(client, fixture_bytes("speech_fast.wav"), "audio/wav")
        assert response.status_code == 422 and error_code(response) == "too_long"


async def test_api_key_is_enforced_when_configured() -> None:
    key = "s3cret"  # pragma: allowlist secret (a test key)
    async with analyzer_client(make_settings(api_key=key)) as client:
        body = fixture_bytes("speech_fast.wav")
        missing = await post(client, body, "audio/wav")
        wrong = await post(client, body, "audio/wav", headers={"authorization": "Bearer nope"})
        right = await post(client, body, "audio/wav", headers={"authorization": "Bearer s3cret"})
        assert missing.status_code == 401 and error_code(missing) == "unauthorized"
        assert wrong.status_code == 401
        assert right.status_code == 200
        assert (await client.get("/v1/info")).status_code == 401


async def test_busy_service_answers_503_with_retry_after() -> None:
    settings = make_settings(workers=1, queue_size=0, min_seconds=2.0)
    body = fixture_bytes("speech_fast.wav")
    headers = {"content-type": "audio/wav", **NDJSON}
    with live_server(settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async with client.stream("POST", "/v1/analyze", content=body, headers=headers) as first:
                received = first.aiter_lines()
                opening = json.loads(await anext(received))
                assert opening["event"] == "progress"  # the slot is held from here on
                second = await client.post("/v1/analyze", content=body, headers=headers)
                assert second.status_code == 503 and error_code(second) == "busy"
                assert int(second.headers["retry-after"]) > 0
                rest = [json.loads(line) async for line in received if line.strip()]
            progress = [opening["progress"]] + [e["progress"] for e in rest[:-1]]
            assert progress == sorted(set(progress)) and len(progress) >= 6
            assert rest[-1]["event"] == "result"
            assert rest[-1]["result"]["processing_time_seconds"] >= 2.0
            third = await client.post(
                "/v1/analyze", content=body, headers={"content-type": "audio/wav"}
            )
            assert third.status_code == 200


async def test_declared_oversize_length_is_413_before_reading() -> None:
    async with analyzer_client(make_settings(max_bytes=1000)) as client:
        response = await post(client, fixture_bytes("speech_fast.wav"), "audio/wav")
        assert response.status_code == 413 and error_code(response) == "payload_too_large"


async def test_stereo_44k_is_downmixed_and_resampled(api: httpx.AsyncClient) -> None:
    import parselmouth

    mono, rate = sf.read(io.BytesIO(fixture_bytes("speech_normal.wav")), dtype="float32")
    upsampled = parselmouth.Sound(mono.astype(np.float64), rate).resample(44100).values[0]
    stereo = np.stack([upsampled, 0.5 * upsampled], axis=1).astype(np.float32)
    response = await post(api, wav_bytes(stereo, 44100), "audio/wave")
    reference = await post(api, fixture_bytes("speech_normal.wav"), "audio/wav")
    audio = response.json()["detailed_analysis"]["audio"]
    assert audio["source_sample_rate"] == 44100 and audio["source_channels"] == 2
    assert audio["analysis_sample_rate"] == 16000
    got, want = (r.json()["detailed_analysis"]["measures"] for r in (response, reference))
    assert abs(got["syllable_count"]["value"] - want["syllable_count"]["value"]) <= 1
    assert got["f0_mean_hz"]["value"] == pytest.approx(want["f0_mean_hz"]["value"], rel=0.02)


async def test_min_seconds_stretches_the_run_with_progress_lines() -> None:
    # Long enough that some stage ends before its share of it even on a loaded 2-core machine
    # (with 4 s, a run beside a benchmark finished every stage late: no padding line at all).
    async with analyzer_client(make_settings(min_seconds=MIN_SECONDS)) as client:
        response = await post(client, fixture_bytes("speech_fast.wav"), "audio/wav", headers=NDJSON)
    events = lines(response.text)
    progress = [e for e in events if e["event"] == "progress"]
    values = [e["progress"] for e in progress]
    stage_starts = {0, 20, 55, 80, 92, 100}
    assert values == sorted(set(values))
    assert set(values) - stage_starts, "padding should add intermediate progress lines"
    assert {e["step"] for e in progress} == STEPS
    assert events[-1]["result"]["processing_time_seconds"] >= MIN_SECONDS
