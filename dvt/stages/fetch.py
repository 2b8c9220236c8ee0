"""`dvt fetch`: bring the dataset named in params into `data/<dataset>/` with a MANIFEST.json.

Small datasets (Fashion-MNIST, CIFAR, synthetic) are stored as uint8 `.npy` arrays per split, so the
later stages load them into memory in a fraction of a second. ImageNet is validated and indexed in
place (CSV of relative paths). In both cases a calibration split is held out of train
deterministically for the threshold search (paper §5 fits thresholds on held-out images).

Everything is written into a temporary folder that replaces `data/<dataset>/` only once complete
(manifest last), so a killed fetch leaves no manifest and the next run starts over cleanly.
"""

from __future__ import annotations

import time
from pathlib import Path

from dvt.atomic import atomic_dir, sweep
from dvt.config import Config
from dvt.data.info import FOLDER_DATASETS, dataset_info
from dvt.data.manifest import (
    Manifest,
    file_checksums,
    fingerprint,
    is_current,
    write_manifest,
)
from dvt.data.sources import (
    CALIBRATION_SEED,
    prepare_arrays,
    prepare_folder,
    write_arrays,
    write_index,
)


def run(config: Config) -> Manifest:
    data = config.data
    out = Path(data.root) / data.dataset
    fp = fingerprint(data)
    # What a killed fetch left goes first, also when there is nothing to do: a half-written folder, or the
    # old dataset moved aside (put back if the new one never arrived, so it may be current).
    sweep(out)
    current = is_current(out, fp)
    if current is not None:
        print(f"dvt fetch: {out} is up to date ({_counts(current)})")
        return current
    start = time.perf_counter()
    # Read and validate the source completely before anything is written.
    if data.dataset in FOLDER_DATASETS:
        content, body = prepare_folder(data)
        write = write_index
    else:
        content, body = prepare_arrays(data)
        write = write_arrays
    with atomic_dir(out) as tmp:  # (first sweeps what a killed fetch left, see dvt.atomic)
        write(tmp, content)
        manifest = write_manifest(tmp, {"dataset": data.dataset, **body, "params": fp,
                                        "calibration_seed": CALIBRATION_SEED, "files": file_checksums(tmp)})
    side = manifest["image_size"]
    seen = dataset_info(data).image_size  # what the model gets: an index's images are resized when read
    shape = (f"{side}x{side}x{manifest['channels']}" if side else
             f"{manifest['channels']} channels, stored at their own sizes, read at {seen}x{seen}")
    print(f"dvt fetch: {data.dataset} -> {out}: {_counts(manifest)}, {len(manifest['classes'])} classes, {shape} "
          f"({time.perf_counter() - start:.1f} s)")
    return manifest


def _counts(manifest: Manifest) -> str:
    return ", ".join(f"{n} {split}" for split, n in manifest["counts"].items())
