"""The local storage's chunked read: every byte, in order, and the file closed whether the
reader reads to the end or stops early."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.storage import CHUNK_SIZE, LocalStorage


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("size", [0, 10, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 10])
async def test_a_read_yields_every_byte_and_closes_the_file(tmp_path: Path, size: int) -> None:
    content = os.urandom(size)
    (tmp_path / "a.wav").write_bytes(content)
    storage = LocalStorage(tmp_path)
    before = _open_files()
    chunks = [chunk async for chunk in storage.read("a.wav")]
    assert b"".join(chunks) == content
    assert all(chunks) and all(len(chunk) <= CHUNK_SIZE for chunk in chunks)
    assert _open_files() == before


async def test_a_reader_that_stops_early_closes_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(os.urandom(3 * CHUNK_SIZE))
    storage = LocalStorage(tmp_path)
    before = _open_files()
    reader = storage.read("a.wav")
    assert len(await anext(reader)) == CHUNK_SIZE
    await reader.aclose()  # type: ignore[attr-defined]
    assert _open_files() == before
