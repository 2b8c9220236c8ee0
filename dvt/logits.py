"""`runs/<run>/seed<S>/logits.parquet`: every exit's logits on the calibration and test splits (DESIGN.md).

Long format, one row per (sample, exit), so pandas and pyarrow read it without our code:

  split       string   'calibration', 'test' or 'train-augmented'
  sample      int64    index of the image within its split
  label       int64    true class
  exit        int8     0-based exit (cascade stage)
  grid        int16    token grid side of that exit (7 for 7x7)
  logits      list<float32>, length C
  confidence  float32  max softmax of the logits (§5 exit rule)
  pred        int64    argmax of the logits

The file's key-value metadata holds one key, "dvt", whose JSON value records what produced it: the
run config, the checkpoint's sha256, the per-exit cumulative GMACs (§6), the grids and C.

The writer streams: it buffers a bounded number of rows, writes them as one row group, and renames
the finished temp file into place, so an ImageNet-sized file (50,000 x 3 x 1000 floats) is never held
in memory whole and a crash leaves no partial file. The reader turns the rows back into dense
(n, K) arrays per split and loads the (large) logits column only on request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dvt.atomic import atomic_path
from dvt.config import differences
from dvt.errors import DvtError

SPLITS = ("calibration", "test", "train-augmented")
METADATA_KEY = b"dvt"
FORMAT = "dvt-logits"
VERSION = 1

SCHEMA = pa.schema([
    ("split", pa.string()),
    ("sample", pa.int64()),
    ("label", pa.int64()),
    ("exit", pa.int8()),
    ("grid", pa.int16()),
    ("logits", pa.list_(pa.float32())),
    ("confidence", pa.float32()),
    ("pred", pa.int64()),
])
_SMALL_COLUMNS = ["split", "sample", "label", "exit", "confidence", "pred"]

# Arrow's list<float32> uses int32 offsets: one batch's flattened logits must stay below 2^31 values.
_MAX_VALUES_PER_BATCH = 2**30


def max_softmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and prediction from logits (..., C): (float32 (...), int64 (...)).

    Computed in float32 as 1 / sum_j exp(z_j - max z), which is exactly the largest softmax entry
    and cannot overflow (every exponent is <= 0). Ties in the argmax go to the lowest class, as in
    torch.argmax.
    """
    z = np.asarray(logits, dtype=np.float32)
    top = z.max(axis=-1, keepdims=True)
    confidence = (np.float32(1.0) / np.exp(z - top).sum(axis=-1, dtype=np.float32)).astype(np.float32)
    return confidence, np.argmax(z, axis=-1).astype(np.int64)


def _json_roundtrip(obj: Any) -> Any:
    """What `obj` becomes after being stored: tuples turn into lists, keys into strings."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as err:
        raise DvtError(f"logits metadata must be JSON-serialisable: {err}") from None


def _as_index(values: Any, name: str, size: int | None) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or (size is not None and a.shape[0] != size):
        raise DvtError(f"{name} must be a 1-D array of length {size}, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise DvtError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise DvtError(f"{name} must be >= 0, got {a.min()}")
    return a.astype(np.int64, copy=False)


class LogitsWriter:
    """Streams logits into `path` batch by batch; the file appears only if the `with` block succeeds.

        with LogitsWriter(path, grids=[7, 10, 14], cumulative_gmacs=[...], config=cfg,
                          checkpoint_sha256=sha) as out:
            for x, y, idx in loader:
                out.add("test", idx, y, model(x))   # K arrays (B, C) or one (K, B, C) array
    """

    def __init__(self, path: str | Path, *, grids: Sequence[int], cumulative_gmacs: Sequence[float],
                 config: Mapping[str, Any], checkpoint_sha256: str, row_group_bytes: int = 32 * 2**20):
        self.path = Path(path)
        self.grids = [int(g) for g in grids]
        if not self.grids or min(self.grids) < 1 or max(self.grids) > np.iinfo(np.int16).max:
            raise DvtError(f"grids must be one positive token-grid side per exit, got {list(grids)}")
        if len(self.grids) > np.iinfo(np.int8).max:
            raise DvtError(f"at most {np.iinfo(np.int8).max} exits fit the int8 exit column, got {len(self.grids)}")
        gmacs = [float(g) for g in cumulative_gmacs]
        if len(gmacs) != len(self.grids):
            raise DvtError(f"cumulative_gmacs needs one value per exit ({len(self.grids)}), got {len(gmacs)}")
        if row_group_bytes < 1:
            raise DvtError(f"row_group_bytes must be >= 1, got {row_group_bytes}")
        self._meta: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "config": _json_roundtrip(dict(config)),
            "checkpoint_sha256": str(checkpoint_sha256),
            "cumulative_gmacs": gmacs,
            "grids": self.grids,
            "num_exits": len(self.grids),
            "num_classes": None,
        }
        self.row_group_bytes = row_group_bytes
        self._atomic: Any = None
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._samples: dict[str, list[np.ndarray]] = {}

    @property
    def num_exits(self) -> int:
        return len(self.grids)

    def __enter__(self) -> LogitsWriter:
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        return self

    def add(self, split: str, sample_idx: np.ndarray, labels: np.ndarray,
            logits: np.ndarray | Sequence[np.ndarray]) -> None:
        """Append one batch: sample_idx (B,), labels (B,), logits K x (B, C) or (K, B, C)."""
        if self._tmp is None:
            raise RuntimeError("LogitsWriter.add() outside its `with` block")
        if split not in SPLITS:
            raise DvtError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        z = np.asarray(np.stack(logits) if isinstance(logits, (list, tuple)) else logits, dtype=np.float32)
        K = self.num_exits
        if z.ndim != 3 or z.shape[0] != K:
            raise DvtError(f"logits must be {K} arrays of shape (B, C) (one per exit), got shape {z.shape}")
        _, B, C = z.shape
        if C < 1:
            raise DvtError("logits have no classes")
        known = self._meta["num_classes"]
        if known is not None and C != known:
            raise DvtError(f"logits have {C} classes, earlier batches had {known}")
        self._meta["num_classes"] = C
        sample = _as_index(sample_idx, "sample_idx", B)
        label = _as_index(labels, "labels", B)
        if not np.isfinite(z).all():
            raise DvtError(f"logits of split {split!r} contain NaN or inf (did the model diverge?)")
        self._samples.setdefault(split, []).append(sample)
        rows_per_piece = max(1, _MAX_VALUES_PER_BATCH // (K * C))
        for s in range(0, B, rows_per_piece):
            self._buffer_rows(split, sample[s:s + rows_per_piece], label[s:s + rows_per_piece],
                              z[:, s:s + rows_per_piece])
        if self._buffered >= self.row_group_bytes:
            self._flush()

    def _buffer_rows(self, split: str, sample: np.ndarray, label: np.ndarray, z: np.ndarray) -> None:
        K, B, C = z.shape
        confidence, pred = max_softmax(z)  # (K, B) each
        # Rows are sample-major: row b * K + k holds exit k of sample b.
        flat = np.ascontiguousarray(z.transpose(1, 0, 2)).reshape(-1)  # (B * K * C,)
        offsets = pa.array(np.arange(0, B * K * C + 1, C, dtype=np.int32))
        columns = [
            pa.repeat(pa.scalar(split, type=pa.string()), B * K),
            pa.array(np.repeat(sample, K)),
            pa.array(np.repeat(label, K)),
            pa.array(np.tile(np.arange(K, dtype=np.int8), B)),
            pa.array(np.tile(np.asarray(self.grids, dtype=np.int16), B)),
            pa.ListArray.from_arrays(offsets, pa.array(flat)),
            pa.array(confidence.T.reshape(-1)),
            pa.array(pred.T.reshape(-1)),
        ]
        table = pa.Table.from_arrays(columns, schema=SCHEMA)
        self._buffer.append(table)
        self._buffered += table.nbytes

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            meta = {METADATA_KEY: json.dumps(self._meta).encode()}
            self._writer = pq.ParquetWriter(self._tmp, SCHEMA.with_metadata(meta))
        return self._writer

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        self._open().write_table(table, row_group_size=table.num_rows)
        self._buffer, self._buffered = [], 0

    def _check_unique(self) -> None:
        for split, parts in self._samples.items():
            samples = np.concatenate(parts)
            uniq, counts = np.unique(samples, return_counts=True)
            if (counts > 1).any():
                raise DvtError(f"split {split!r}: sample {int(uniq[counts > 1][0])} was added more than once")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc_type is None:
            try:
                self._check_unique()
                self._flush()
                self._open().close()
            except BaseException as err:
                self._close_quietly()
                self._atomic.__exit__(type(err), err, err.__traceback__)
                raise
        else:
            self._close_quietly()
        self._tmp = None
        # Renames the temp file onto `path` on success; deletes it when an exception is passing.
        return bool(self._atomic.__exit__(exc_type, exc, tb))

    def _close_quietly(self) -> None:
        self._buffer = []
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass  # the temp file is deleted next; the original error is what matters


@dataclass(frozen=True, eq=False)
class SplitLogits:
    """One split as dense arrays, rows ordered by ascending sample index."""

    sample: np.ndarray  # (n,) int64
    labels: np.ndarray  # (n,) int64
    confidence: np.ndarray  # (n, K) float32
    pred: np.ndarray  # (n, K) int64
    correct: np.ndarray  # (n, K) bool
    logits: np.ndarray | None  # (n, K, C) float32, only when read with logits=True


@dataclass(frozen=True, eq=False)
class LogitsTable:
    path: Path
    metadata: dict[str, Any]
    splits: dict[str, SplitLogits]

    def __getitem__(self, split: str) -> SplitLogits:
        if split not in self.splits:
            raise DvtError(f"{self.path} has no {split!r} split; it holds {', '.join(self.splits) or 'none'}")
        return self.splits[split]

    @property
    def grids(self) -> list[int]:
        return list(self.metadata["grids"])

    @property
    def cumulative_gmacs(self) -> np.ndarray:
        return np.asarray(self.metadata["cumulative_gmacs"], dtype=np.float64)

    @property
    def num_exits(self) -> int:
        return int(self.metadata["num_exits"])


def _open_file(path: Path) -> tuple[pq.ParquetFile, dict[str, Any]]:
    if not path.is_file():
        seed = re.fullmatch(r"seed(\d+)", path.parent.name)
        which = f"--run {path.parent.parent.name} --seed {seed.group(1)}" if seed else f"--run {path.parent.name}"
        raise DvtError(f"{path} does not exist: run `dvt collect {which}` first")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DvtError(f"{path} is not a readable Parquet file ({err}); rerun dvt collect") from None
    raw = (pf.schema_arrow.metadata or {}).get(METADATA_KEY)
    try:
        meta = json.loads(raw) if raw is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DvtError(f"{path} is not a dvt logits file (no {METADATA_KEY.decode()!r} metadata); rerun dvt collect")
    if meta.get("version") != VERSION:
        raise DvtError(f"{path} has logits format version {meta.get('version')}, this code reads {VERSION}; "
                       "rerun dvt collect")
    missing = [f.name for f in SCHEMA if f.name not in pf.schema_arrow.names]
    if missing:
        raise DvtError(f"{path} lacks the column(s) {', '.join(missing)}; rerun dvt collect")
    return pf, meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The "dvt" metadata of a logits file (config, checkpoint_sha256, cumulative_gmacs, grids, ...)."""
    return _open_file(Path(path))[1]


def read_logits(path: str | Path, *, logits: bool = False, splits: Sequence[str] | None = None) -> LogitsTable:
    """Read a logits file into dense per-split arrays; the logits column is read only if `logits`."""
    path = Path(path)
    pf, meta = _open_file(path)
    K = int(meta["num_exits"])
    table = pf.read(columns=_SMALL_COLUMNS)
    codes = table.column("split").combine_chunks().dictionary_encode()
    names = codes.dictionary.to_pylist()
    code = codes.indices.to_numpy(zero_copy_only=False)  # (m,) which split each row belongs to
    sample_col = table.column("sample").to_numpy()
    exit_col = table.column("exit").to_numpy().astype(np.int64)
    label_col = table.column("label").to_numpy()
    conf_col = table.column("confidence").to_numpy()
    pred_col = table.column("pred").to_numpy()
    if exit_col.size and (exit_col.min() < 0 or exit_col.max() >= K):
        raise DvtError(f"{path}: exit values must lie in 0..{K - 1}; rerun dvt collect")

    wanted = names if splits is None else list(splits)
    for s in wanted:
        if s not in names:
            raise DvtError(f"{path} has no {s!r} split; it holds {', '.join(names) or 'none'}")
    position = np.full(code.shape, -1, dtype=np.int64)  # row -> index of its sample within its split
    out: dict[str, dict[str, np.ndarray]] = {}
    for s in wanted:
        rows = np.flatnonzero(code == names.index(s))
        uniq, pos = np.unique(sample_col[rows], return_inverse=True)
        n = uniq.size
        slot = pos * K + exit_col[rows]
        if rows.size != n * K or np.bincount(slot, minlength=n * K).max(initial=0) != 1:
            raise DvtError(f"{path}: split {s!r} does not hold exactly one row per (sample, exit); rerun dvt collect")
        position[rows] = pos
        confidence = np.empty((n, K), dtype=np.float32)
        pred = np.empty((n, K), dtype=np.int64)
        label = np.empty((n, K), dtype=np.int64)
        confidence[pos, exit_col[rows]] = conf_col[rows]
        pred[pos, exit_col[rows]] = pred_col[rows]
        label[pos, exit_col[rows]] = label_col[rows]
        if (label != label[:, :1]).any():
            raise DvtError(f"{path}: split {s!r} gives one sample different labels at different exits")
        out[s] = {"sample": uniq, "labels": label[:, 0].copy(), "confidence": confidence, "pred": pred}

    if logits:
        _read_logits_column(path, pf, meta, names, wanted, code, position, exit_col, out)
    return LogitsTable(path=path, metadata=meta, splits={
        s: SplitLogits(sample=d["sample"], labels=d["labels"], confidence=d["confidence"], pred=d["pred"],
                       correct=d["pred"] == d["labels"][:, None], logits=d.get("logits"))
        for s, d in out.items()
    })


def _read_logits_column(path: Path, pf: pq.ParquetFile, meta: dict[str, Any], names: list[str],
                        wanted: list[str], code: np.ndarray, position: np.ndarray, exit_col: np.ndarray,
                        out: dict[str, dict[str, np.ndarray]]) -> None:
    """Scatter the logits column, one row group at a time, into (n, K, C) arrays per wanted split."""
    K = int(meta["num_exits"])
    C = meta.get("num_classes")
    if C is None:
        return
    for s in wanted:
        out[s]["logits"] = np.empty((out[s]["sample"].size, K, C), dtype=np.float32)
    wanted_codes = {names.index(s): s for s in wanted}
    start = 0
    for g in range(pf.num_row_groups):
        column = pf.read_row_group(g, columns=["logits"]).column("logits").combine_chunks()
        stop = start + len(column)
        if column.null_count or len(column) and not (np.asarray(column.value_lengths()) == C).all():
            raise DvtError(f"{path}: every logits list must hold {C} values; rerun dvt collect")
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, C)  # (rows in group, C)
        for c, s in wanted_codes.items():
            mine = np.flatnonzero(code[start:stop] == c)
            if mine.size:
                out[s]["logits"][position[start + mine], exit_col[start + mine]] = values[mine]
        start = stop


def check_matches(meta: Mapping[str, Any], *, config_dict: Mapping[str, Any], checkpoint_sha256: str,
                  path: str | Path | None = None) -> None:
    """Raise DvtError unless the logits file was written for this config and checkpoint."""
    where = f"logits file {path}" if path is not None else "logits file"
    problems = []
    if meta.get("checkpoint_sha256") != checkpoint_sha256:
        problems.append(f"checkpoint sha256 {str(meta.get('checkpoint_sha256'))[:12]}... "
                        f"!= {checkpoint_sha256[:12]}...")
    differing = [key for key, _, _ in differences(meta.get("config"), _json_roundtrip(dict(config_dict)))]
    if differing:
        problems.append("config differs at " + ", ".join(differing[:5]) + (" ..." if len(differing) > 5 else ""))
    if problems:
        raise DvtError(f"{where} was written for another config/checkpoint ({'; '.join(problems)}); "
                       f"rerun dvt collect")
