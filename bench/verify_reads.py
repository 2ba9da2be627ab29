"""What checking every chunk's CRC-32 as it is read costs (issue 18, item 2), measured in one run.

Over every per-sample array of every dataset of a store (a finished demo store, say), and the
layouts embed wrote: the time to read each array whole, chunk by chunk, as zarr reads it
(`array[start:stop]`) against `schema.read_rows` (the same reads plus the CRC-32 of each chunk and the
checksum table's rows), alternated per array so the machine's noise falls on both. The ratio is what
verified reads add to the reading in every stage; the stages' own work (UMAP, classifiers, images)
comes on top and is not slowed.

    python bench/verify_reads.py ganscale-demo/demo.zarr [--repeats 3] [--out bench/results/verify_reads.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ganscale import schema


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/verify_reads.json")
    args = parser.parse_args()
    root = schema.open_store(args.store, mode="r")
    plain = verified = 0.0
    nbytes, arrays = 0, 0
    for name, group in root["datasets"].groups():
        paths = list(group.attrs["checksum_arrays"])
        paths += [f"layers/{layer}/umap" for layer, lg in group["layers"].groups() if "umap" in lg]
        for path in paths:
            array = group[path]
            step = array.chunks[0]
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for start in range(0, array.shape[0], step):
                    array[start:start + step]
                t1 = time.perf_counter()
                for start in range(0, array.shape[0], step):
                    schema.read_rows(group, path, start, start + step)
                t2 = time.perf_counter()
                plain += t1 - t0
                verified += t2 - t1
            nbytes += array.nbytes
            arrays += 1
    result = {"store": args.store, "arrays": arrays, "bytes": nbytes, "repeats": args.repeats,
              "plain_s": round(plain, 3), "verified_s": round(verified, 3), "ratio": round(verified / plain, 3)}
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
