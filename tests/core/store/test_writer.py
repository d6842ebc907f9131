"""The store writer's internals: codecs, chunk-aligned blocks, back-pressure."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
import zarr

import infoshape
from infoshape import StoreError, Stream, Tap
from infoshape.store import RunStore, appender, layout
from infoshape.store import chunks as store_chunks


def _stream(store: RunStore, steps: int, rows: int = 6, width: int = 5, every: int = 1):
    tap = Tap("layer", store=Stream(every=every))
    batches = [
        torch.arange(rows * width, dtype=torch.float32).reshape(rows, width) + 100 * s
        for s in range(steps)
    ]
    for step, batch in enumerate(batches):
        store.write_stream(
            step,
            {"t": batch},
            labels=torch.arange(rows) + step,
            index=None,
            taps={"t": ("layer", "post", tap)},
        )
    return torch.stack(batches).numpy()


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
def test_each_codec_round_trips_and_is_recorded(tmp_path, codec):
    store = RunStore(tmp_path / "r.zarr", manifest={}, codec=codec)
    expected = _stream(store, steps=7)
    store.close()
    stream = infoshape.open_store(tmp_path / "r.zarr")["stream"].to_dataset()
    np.testing.assert_array_equal(stream["t"].values, expected)
    np.testing.assert_array_equal(stream["label"].values[3], np.arange(6) + 3)
    compressors = zarr.open_array(str(tmp_path / "r.zarr" / "stream" / "t")).compressors
    names = [type(c).__name__ for c in compressors]
    assert names == {"none": [], "lz4": ["BloscCodec"], "zstd": ["ZstdCodec"]}[codec]
    if codec == "lz4":
        assert compressors[0].cname.value == "lz4" and compressors[0].shuffle.value == "shuffle"


def test_unknown_codec_is_refused(tmp_path):
    with pytest.raises(StoreError, match="unknown store codec") as info:
        RunStore(tmp_path / "r.zarr", manifest={}, codec="gzip")
    assert "'none' or 'lz4' or 'zstd'" in str(info.value)


def test_stream_chunks_are_aligned_and_written_whole(tmp_path, monkeypatch):
    # a 6 x 5 float32 row is 120 bytes: chunk_rows gives 256 steps (the cap) per chunk,
    # for the tap and for label and sample_index alike; rows are buffered to that block
    # and each full block is written as one chunk file, straight from the rows
    store = RunStore(tmp_path / "r.zarr", manifest={})
    whole: list[tuple[str, tuple[int, ...], int, bool]] = []
    original = appender.write_chunk_file

    def spy(array, coords, parts, atomic):
        whole.append((array.basename, coords, sum(len(p) for p in parts), atomic))
        return original(array, coords, parts, atomic)

    monkeypatch.setattr(appender, "write_chunk_file", spy)
    expected = _stream(store, steps=600)
    store.close()
    group = zarr.open_group(str(tmp_path / "r.zarr" / "stream"))
    assert group["t"].chunks[0] == group["label"].chunks[0] == group["sample_index"].chunks[0]
    assert group["t"].chunks == (256, 6, 5)
    for name, extra in (("t", (0, 0)), ("label", (0,))):
        # two whole chunks written directly, in place; the last 88 rows go through zarr
        assert [w for w in whole if w[0] == name] == [
            (name, (0, *extra), 256, False),
            (name, (1, *extra), 256, False),
        ]
    # no indices were given: sample_index stays at its fill value -1, with no chunk written
    assert [w for w in whole if w[0] == "sample_index"] == []
    # the coordinate's one chunk file is created once (atomically); later commits only
    # write their own values into it
    assert [w for w in whole if w[0] == "step"] == [("step", (0,), 1024, True)]
    stream = infoshape.open_store(tmp_path / "r.zarr")["stream"].to_dataset()
    assert list(stream["step"].values) == list(range(600))
    np.testing.assert_array_equal(stream["t"].values, expected)
    np.testing.assert_array_equal(stream["sample_index"].values, np.full((600, 6), -1))
    assert [p.name for p in (tmp_path / "r.zarr" / "stream" / "sample_index").iterdir()] == [
        "zarr.json"
    ]
    # chunk files are flat in the array's folder ("c.1.0.0"), one per chunk
    files = sorted(p.name for p in (tmp_path / "r.zarr" / "stream" / "t").iterdir())
    assert files == ["c.0.0.0", "c.1.0.0", "c.2.0.0", "zarr.json"]


def test_arrays_start_long_grow_data_first_and_are_trimmed_at_close(tmp_path, monkeypatch):
    # the step dim is created 1024 rows long (INITIAL_CAPACITY): the first 1024 steps
    # resize nothing; step 1024 doubles every array, the data arrays before the step
    # coordinate (a kill in between leaves no committed row without its data); an
    # unclosed store shows only the committed rows, and close() cuts the arrays to them
    resized: list[tuple[list[str], int]] = []
    original = appender.resize

    def spy(arrays, length):
        arrays = list(arrays)
        resized.append((sorted(a.basename for a in arrays), length))
        return original(arrays, length)

    monkeypatch.setattr(appender, "resize", spy)
    assert layout.INITIAL_CAPACITY["step"] == 1024
    store = RunStore(tmp_path / "r.zarr", manifest={})
    expected = _stream(store, steps=1030)  # blocks of 256 rows, then the last 6 at flush
    store.flush()
    data = ["label", "sample_index", "t"]
    assert resized == [(data, 2048), (["step"], 2048)]  # once, for rows 1024..1029
    group = zarr.open_group(str(tmp_path / "r.zarr" / "stream"), use_consolidated=False)
    assert [group[name].shape[0] for name in [*data, "step"]] == [2048] * 4
    stream = infoshape.open_store(tmp_path / "r.zarr")["stream"].to_dataset()
    np.testing.assert_array_equal(stream["step"].values, np.arange(1030))
    np.testing.assert_array_equal(stream["t"].values, expected)
    store.close()
    assert resized[2:] == [(data, 1030), (["step"], 1030)]
    group = zarr.open_group(str(tmp_path / "r.zarr" / "stream"))
    assert [group[name].shape[0] for name in [*data, "step"]] == [1030] * 4
    files = sorted(p.name for p in (tmp_path / "r.zarr" / "stream" / "t").iterdir())
    assert files == [f"c.{i}.0.0" for i in range(5)] + ["zarr.json"]


def test_full_queue_applies_back_pressure_and_warns_once(tmp_path, caplog):
    store = RunStore(tmp_path / "r.zarr", manifest={}, queue_size=1)
    release = threading.Event()

    class ReleaseOnWarning(logging.Handler):
        def emit(self, record):
            if "queue is full" in record.getMessage():
                release.set()  # the training thread is about to wait: let the writer go

    handler = ReleaseOnWarning()
    logger = logging.getLogger("infoshape.store")
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger="infoshape.store"):
            store._submit(release.wait)  # the writer blocks on this job
            for epoch in range(4):  # the queue (size 1) fills: these wait instead of growing
                store.write("epoch", epoch, {"a": float(epoch)})
            store.close()
    finally:
        logger.removeHandler(handler)
    warnings = [r.getMessage() for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(warnings) == 1
    assert "1 pending writes" in warnings[0]
    assert "store_options={'queue_size': 2}" in warnings[0]
    metrics = infoshape.open_store(tmp_path / "r.zarr")["metrics"].to_dataset()
    np.testing.assert_array_equal(metrics["a"].values, [0.0, 1.0, 2.0, 3.0])


def test_session_passes_store_options(tmp_path, mlp, batch):
    x, y = batch
    options = {"codec": "lz4", "queue_size": 3}
    with infoshape.Session(
        mlp, store=tmp_path / "r.zarr", taps=[Tap("fc1", store=True)], store_options=options
    ) as s:
        assert s.store.codec == "lz4" and s.store._queue.maxsize == 3
        s.epoch_end(probe=(x, y))
    probe = zarr.open_array(str(tmp_path / "r.zarr" / "probe" / "fc1"))
    assert [type(c).__name__ for c in probe.compressors] == ["BloscCodec"]


def test_blocks_with_missing_values_keep_the_fill(tmp_path):
    store = RunStore(tmp_path / "r.zarr", manifest={}, flush_steps=3)
    store.write("step", 0, {"a": 1.0, "b": 5.0})
    store.write("step", 1, {"a": 2.0})
    store.write("step", 2, {"a": 3.0, "b": 7.0})
    store.close()
    metrics = infoshape.open_store(tmp_path / "r.zarr")["metrics"].to_dataset()
    np.testing.assert_array_equal(metrics["a"].values, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(metrics["b"].values, [5.0, np.nan, 7.0])


def test_streamed_capture_changed_in_place_is_an_error_unless_copied(tmp_path):
    # float32 CPU captures are written from their own memory; one changed in place before
    # the writer got to it would store wrong values, so the writer refuses it
    tap = ("layer", "post", Tap("layer", store="stream"))
    for copy_streams in (False, True):
        store = RunStore(tmp_path / f"r{copy_streams}.zarr", manifest={}, copy_streams=copy_streams)
        buffer = torch.ones(4, 3)
        release = threading.Event()
        store._submit(release.wait)  # hold the writer until the buffer is reused
        store.write_stream(0, {"t": buffer}, labels=None, index=None, taps={"t": tap})
        buffer.mul_(7)  # e.g. the next batch copied into a reused input buffer
        release.set()
        if copy_streams:
            store.close()
            values = infoshape.open_store(tmp_path / "rTrue.zarr")["stream"]["t"].values
            np.testing.assert_array_equal(values, np.ones((1, 4, 3)))
        else:
            with pytest.raises(infoshape.StoreWriteError) as info:
                store.close()
            assert "'t' was changed in place after its step ended" in str(info.value)
            assert "copy_streams" in str(info.value)


@pytest.mark.parametrize("separator", [".", "/"])
def test_shrink_deletes_the_chunks_past_the_cut_and_keeps_the_rest(tmp_path, separator):
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    array = group.create_array(
        "a",
        shape=(10, 3),
        chunks=(2, 3),
        dtype="f4",
        fill_value=np.nan,
        chunk_key_encoding={"name": "default", "separator": separator},
    )
    array[:] = np.arange(30, dtype="f4").reshape(10, 3)
    store_chunks.shrink([array], 5)  # chunk 2 (rows 4, 5) holds the last kept row: it stays
    folder = tmp_path / "s.zarr" / "a"
    chunks = [p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json"]
    files = sorted(p.relative_to(folder).as_posix() for p in chunks)
    assert files == [f"c{separator}{k}{separator}0" for k in range(3)]
    assert array.shape == (5, 3)
    array.resize((10, 3))  # grown again: the rows of deleted chunks read as the fill value
    np.testing.assert_array_equal(array[:5], np.arange(15, dtype="f4").reshape(5, 3))
    assert np.isnan(array[6:]).all()


def test_misspelled_store_option_lists_the_valid_keys(tmp_path, mlp):
    with pytest.raises(infoshape.ConfigError) as info:
        infoshape.Session(mlp, store=tmp_path / "r.zarr", store_options={"queue_sise": 3})
    message = str(info.value)
    assert "unknown store option 'queue_sise'" in message
    assert "codec, copy_streams, flush_steps, queue_size, store_probe_inputs" in message
    assert "got: queue_sise=3" in message and "'queue_sise' -> 'queue_size'" in message
    assert not (tmp_path / "r.zarr").exists()  # refused before anything is written
