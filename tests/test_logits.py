"""logits.parquet: streaming writer, dense reader, metadata, atomicity (DESIGN.md "Formats")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dvt.errors import DvtError
from dvt.logits import (
    LogitsWriter,
    check_matches,
    max_softmax,
    read_logits,
    read_metadata,
)

GRIDS = [7, 10, 14]
GMACS = [0.472, 1.46, 3.50]
CONFIG = {"model": {"backbone": "t2t_vit_12", "grids": (7, 10, 14)}, "seed": 0}
SHA = "ab" * 32


def write_random(path: Path, *, sizes: dict[str, int], C: int = 10, batch: int = 16,
                 row_group_bytes: int = 4096, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write shuffled batches of random logits; returns split -> (labels (n,), logits (n, K, C))."""
    rng = np.random.default_rng(seed)
    truth = {s: (rng.integers(0, C, n), rng.normal(scale=3, size=(n, 3, C)).astype(np.float32))
             for s, n in sizes.items()}
    with LogitsWriter(path, grids=GRIDS, cumulative_gmacs=GMACS, config=CONFIG, checkpoint_sha256=SHA,
                      row_group_bytes=row_group_bytes) as out:
        for s, (labels, logits) in truth.items():
            order = rng.permutation(len(labels))  # samples arrive in any order
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                per_exit = [logits[idx, k] for k in range(3)]  # K arrays (B, C)
                out.add(s, idx, labels[idx], per_exit if i % 2 else np.stack(per_exit))
    return truth


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run" / "logits.parquet"
    truth = write_random(path, sizes={"calibration": 50, "test": 70})
    assert pq.ParquetFile(path).num_row_groups > 2
    table = read_logits(path, logits=True)
    assert set(table.splits) == {"calibration", "test"}
    for s, (labels, logits) in truth.items():
        got = table[s]
        np.testing.assert_array_equal(got.sample, np.arange(len(labels)))
        np.testing.assert_array_equal(got.labels, labels)
        np.testing.assert_array_equal(got.logits, logits)
        assert got.logits.dtype == np.float32 and got.confidence.dtype == np.float32
        softmax = np.exp(logits.astype(np.float64))
        softmax /= softmax.sum(axis=-1, keepdims=True)
        np.testing.assert_allclose(got.confidence, softmax.max(axis=-1), rtol=1e-6)
        np.testing.assert_array_equal(got.pred, logits.argmax(axis=-1))
        np.testing.assert_array_equal(got.correct, logits.argmax(axis=-1) == labels[:, None])
        assert got.confidence.shape == got.pred.shape == got.correct.shape == (len(labels), 3)


def test_column_projection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "logits.parquet"
    truth = write_random(path, sizes={"test": 40})
    columns_read: list[list[str] | None] = []
    real_read = pq.ParquetFile.read
    real_read_row_group = pq.ParquetFile.read_row_group

    def spy_read(self: pq.ParquetFile, columns: list[str] | None = None, **kw: object) -> pa.Table:
        columns_read.append(columns)
        return real_read(self, columns=columns, **kw)

    def spy_read_row_group(self: pq.ParquetFile, i: int, columns: list[str] | None = None, **kw: object) -> pa.Table:
        columns_read.append(columns)
        return real_read_row_group(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read", spy_read)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy_read_row_group)
    table = read_logits(path)
    assert table["test"].logits is None
    assert all(cols is not None and "logits" not in cols for cols in columns_read)
    np.testing.assert_array_equal(table["test"].labels, truth["test"][0])
    only = read_logits(path, logits=True, splits=["test"])
    assert only["test"].logits.shape == (40, 3, 10)


def test_metadata_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "logits.parquet"
    write_random(path, sizes={"calibration": 8}, C=5)
    meta = read_metadata(path)
    assert meta["config"] == {"model": {"backbone": "t2t_vit_12", "grids": [7, 10, 14]}, "seed": 0}
    assert meta["checkpoint_sha256"] == SHA
    assert meta["cumulative_gmacs"] == GMACS
    assert meta["grids"] == GRIDS
    assert meta["num_classes"] == 5 and meta["num_exits"] == 3
    table = read_logits(path)
    assert table.metadata == meta
    assert table.grids == GRIDS and table.cumulative_gmacs.tolist() == GMACS


def test_pandas_reads_long_format(tmp_path: Path) -> None:
    path = tmp_path / "logits.parquet"
    truth = write_random(path, sizes={"calibration": 6, "test": 9}, C=4)
    df = pd.read_parquet(path)
    assert len(df) == (6 + 9) * 3
    assert df.columns.tolist() == ["split", "sample", "label", "exit", "grid", "logits", "confidence", "pred"]
    assert pd.api.types.is_string_dtype(df["split"])
    assert df["sample"].dtype == np.int64 and df["label"].dtype == np.int64 and df["pred"].dtype == np.int64
    assert df["exit"].dtype == np.int8 and df["grid"].dtype == np.int16
    assert df["confidence"].dtype == np.float32
    row = df[(df["split"] == "test") & (df["sample"] == 4) & (df["exit"] == 2)].iloc[0]
    assert row["grid"] == 14 and row["label"] == truth["test"][0][4]
    np.testing.assert_array_equal(np.asarray(row["logits"], dtype=np.float32), truth["test"][1][4, 2])
    assert set(df["grid"]) == set(GRIDS)


def test_interrupted_writer_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "logits.parquet"
    rng = np.random.default_rng(0)
    with pytest.raises(KeyboardInterrupt):
        with LogitsWriter(path, grids=GRIDS, cumulative_gmacs=GMACS, config=CONFIG, checkpoint_sha256=SHA,
                          row_group_bytes=1) as out:
            out.add("test", np.arange(4), np.zeros(4, dtype=int), rng.normal(size=(3, 4, 10)))
            out.add("test", np.arange(4, 8), np.zeros(4, dtype=int), rng.normal(size=(3, 4, 10)))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_invalid_batches_leave_nothing(tmp_path: Path) -> None:
    path = tmp_path / "logits.parquet"
    logits = np.zeros((3, 2, 10), dtype=np.float32)
    with pytest.raises(DvtError, match="more than once"):
        with LogitsWriter(path, grids=GRIDS, cumulative_gmacs=GMACS, config=CONFIG, checkpoint_sha256=SHA) as out:
            out.add("test", np.array([0, 1]), np.array([0, 0]), logits)
            out.add("test", np.array([1, 2]), np.array([0, 0]), logits)
    assert list(tmp_path.iterdir()) == []
    with LogitsWriter(path, grids=GRIDS, cumulative_gmacs=GMACS, config=CONFIG, checkpoint_sha256=SHA) as out:
        with pytest.raises(DvtError, match="split 'val'"):
            out.add("val", np.array([0, 1]), np.array([0, 0]), logits)
        with pytest.raises(DvtError, match="3 arrays"):
            out.add("test", np.array([0, 1]), np.array([0, 0]), logits[:2])
        with pytest.raises(DvtError, match="NaN"):
            out.add("test", np.array([0, 1]), np.array([0, 0]), np.full((3, 2, 10), np.nan))
        with pytest.raises(DvtError, match="length 2"):
            out.add("test", np.array([0, 1, 2]), np.array([0, 0]), logits)
    with pytest.raises(DvtError, match="one value per exit"):
        LogitsWriter(path, grids=GRIDS, cumulative_gmacs=[1.0], config=CONFIG, checkpoint_sha256=SHA)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(DvtError, match=r"run `dvt collect --run baseline --seed 7` first"):
        read_logits(tmp_path / "baseline" / "seed7" / "logits.parquet")
    other = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), other)
    with pytest.raises(DvtError, match="not a dvt logits file"):
        read_logits(other)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(DvtError, match="not a readable Parquet file"):
        read_logits(junk)


def test_check_matches(tmp_path: Path) -> None:
    path = tmp_path / "logits.parquet"
    write_random(path, sizes={"test": 4})
    meta = read_metadata(path)
    check_matches(meta, config_dict=CONFIG, checkpoint_sha256=SHA)  # tuples vs lists do not matter
    mismatch = r"was written for another config/checkpoint .*checkpoint sha256.*rerun dvt collect"
    with pytest.raises(DvtError, match=mismatch):
        check_matches(meta, config_dict=CONFIG, checkpoint_sha256="cd" * 32, path=path)
    changed = {"model": {"backbone": "t2t_vit_14", "grids": (7, 10, 14)}, "seed": 0}
    with pytest.raises(DvtError, match=r"config differs at model\.backbone"):
        check_matches(meta, config_dict=changed, checkpoint_sha256=SHA)


def test_max_softmax_is_stable() -> None:
    z = np.array([[1000.0, 999.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    conf, pred = max_softmax(z)
    assert conf.dtype == np.float32 and pred.dtype == np.int64
    np.testing.assert_allclose(conf, [1 / (1 + np.exp(-1.0)), 1 / 3], rtol=1e-6)
    assert pred.tolist() == [0, 0]
