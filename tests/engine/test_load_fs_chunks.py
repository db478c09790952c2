"""load_fs_chunks: loads verified fs:// chunk files into the CPU tier; refuses bad config files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from lmcache_native.errors import FSChunkLoadError
from lmcache_native.storage.serde import chunk_filename

from tests.engine.conftest import MakeEngine, random_cache, read_rows, same_bytes

TOKENS = list(range(9000, 9080))  # 5 chunks


@pytest.fixture
def fs_store(make_engine: MakeEngine, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """An fs:// store holding 5 chunks of TOKENS, one chunk of another model, and a config file."""
    store = tmp_path / "fs"
    writer = make_engine(random_cache(21), local_cpu=False, remote_url=f"fs://{store}")
    writer.store(TOKENS, torch.arange(80))
    other = make_engine(
        random_cache(21), model="other/model", local_cpu=False, remote_url=f"fs://{store}"
    )
    other.store(TOKENS[:16], torch.arange(16))
    writer.flush()
    other.flush()
    cfg = tmp_path / "lmcache.yaml"
    cfg.write_text(f"chunk_size: 16\nremote_url: fs://{store}\nlocal_cpu: false\n")
    return store, cfg, writer.chunk_keys(TOKENS)


def test_loads_into_cpu_and_retrieves(make_engine: MakeEngine, fs_store) -> None:
    _store, cfg, keys = fs_store
    caches = random_cache(21)
    e = make_engine(caches)
    out = e.load_fs_chunks(str(cfg), None)
    assert out["loaded_chunks"] == 5
    assert out["total_files"] == 6
    assert out["failed_keys"] == []
    assert out["skipped_files"] == 1
    assert sorted(e.storage.backend("LocalCPUBackend").keys()) == sorted(keys)
    dst = torch.arange(300, 380)
    assert e.retrieve(TOKENS, dst).num_retrieved == 80
    assert same_bytes(read_rows(caches, dst), read_rows(caches, torch.arange(80)))
    assert e.metrics.value("lmcache_hit_chunks_total", {"tier": "LocalCPUBackend"}) == 5


def test_max_chunks_and_failed_keys(make_engine: MakeEngine, fs_store) -> None:
    store, cfg, keys = fs_store
    bad = store / chunk_filename(keys[0])
    data = bytearray(bad.read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    e = make_engine(random_cache(21))
    out = e.load_fs_chunks(str(cfg), max_chunks=6, max_failed_keys=10)
    assert out["loaded_chunks"] == 4
    assert out["failed_keys"] == [keys[0]]
    assert out["failed_count"] == 1
    e.clear()
    assert e.load_fs_chunks(str(cfg), max_chunks=2)["loaded_chunks"] <= 2
    e.clear()
    assert e.load_fs_chunks(str(cfg), max_chunks=0)["loaded_chunks"] == 0
    assert e.load_fs_chunks(str(cfg), None, max_failed_keys=0)["failed_keys"] == []


def test_refuses_without_hot_cache(make_engine: MakeEngine, fs_store) -> None:
    _, cfg, _ = fs_store
    e = make_engine()
    e.set_hot_cache(False)
    with pytest.raises(FSChunkLoadError, match="Hot cache is disabled"):
        e.load_fs_chunks(str(cfg), None)


SECRET = "TOP-SECRET-CONTENT"


def bad_paths(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Name -> (path, expected message fragment)."""
    d = tmp_path / "bad"
    d.mkdir()
    (d / "list.yaml").write_text(f"- {SECRET}\n")
    (d / "broken.yaml").write_text(f"remote_url: [{SECRET}\n")
    (d / "binary.bin").write_bytes(b"\x00\xff" * 100 + SECRET.encode())
    (d / "nofs.yaml").write_text("remote_url: redis://localhost:1\n")
    (d / "badvalue.yaml").write_text(f"chunk_size: {SECRET}\n")
    (d / "missing_dir.yaml").write_text(f"remote_url: fs://{d / 'nope'}\n")
    big = d / "huge.yaml"
    with open(big, "wb") as f:
        f.truncate(2 << 20)  # sparse 2 MiB
    os.symlink(d / "loop_b", d / "loop_a")
    os.symlink(d / "loop_a", d / "loop_b")
    fifo = d / "fifo.yaml"
    os.mkfifo(fifo)
    return {
        "missing": (str(d / "nope.yaml"), "Configuration file not found"),
        "directory": (str(d), "is a directory"),
        "device": ("/dev/null", "not a regular file"),
        "fifo": (str(fifo), "not a regular file"),
        "symlink loop": (str(d / "loop_a"), "symlink loop"),
        "huge": (str(big), "too large"),
        "binary": (str(d / "binary.bin"), "not UTF-8"),
        "list": (str(d / "list.yaml"), "mapping"),
        "broken": (str(d / "broken.yaml"), "not valid YAML"),
        "no fs url": (str(d / "nofs.yaml"), "no fs:// remote_url"),
        "bad value": (str(d / "badvalue.yaml"), "chunk_size"),
        "missing store dir": (str(d / "missing_dir.yaml"), "does not exist"),
        "empty": ("", "required"),
    }


def test_refuses_bad_config_files_without_echoing_them(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    e = make_engine()
    for name, (path, fragment) in bad_paths(tmp_path).items():
        with pytest.raises(FSChunkLoadError) as ei:
            e.load_fs_chunks(path, None)
        msg = str(ei.value)
        assert fragment in msg, (name, msg)
        assert SECRET not in msg, name
    with pytest.raises(FSChunkLoadError, match="max_chunks"):
        e.load_fs_chunks("/dev/null", -1)
