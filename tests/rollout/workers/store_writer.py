"""Worker for the store's kill test: a fake stage that stores items in batches, resumably.

    PYTHONPATH=. python tests/rollout/workers/store_writer.py STORE LOG --items 40 --batch 6

It wants captions for keys (``item000``, k) … with k < 2, skips keys already stored (in
``captions`` or rejected by the ``caption`` stage), "computes" the rest with a small sleep
each, appends every key it computes to LOG as ``id<TAB>k`` (flushed at once, before the
batch is stored), and writes one rejects shard and one captions shard per batch. Items with
index % 7 == 3 fail for good (``unreadable_image``, not retried) and become rejects, so resumption covers the rejects table too.

``--stall before-rename|mid-write --stall-at N`` hangs inside the N-th shard write of this run
(after the temp file is complete but before its rename, or after half of it is written),
logging ``STALL`` first, so the test can ``kill -9`` exactly there.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import time

from rollout.store import Store, reject_record

CAPTIONS_PER_ITEM = 2
STAGE = "caption"


def fake_caption(item_id: str, k: int) -> str:
    return hashlib.sha256(f"{item_id}/{k}".encode()).hexdigest()


def is_unprocessable(item_id: str) -> bool:
    return int(item_id.removeprefix("item")) % 7 == 3


def install_stall(mode: str, at: int, log) -> None:
    """Patch the write path of this process so that its ``at``-th shard write hangs."""
    import pyarrow.parquet as pq

    calls = {"shard_writes": 0}

    def stall() -> None:
        log.write("STALL\n")
        log.flush()
        time.sleep(600)

    if mode == "before-rename":
        real_replace = os.replace

        def replace(src, dst):
            if str(dst).endswith(".parquet"):
                calls["shard_writes"] += 1
                if calls["shard_writes"] == at:
                    stall()
            real_replace(src, dst)

        os.replace = replace
    elif mode == "mid-write":
        real_write_table = pq.write_table

        def write_table(table, where, **kwargs):
            calls["shard_writes"] += 1
            if calls["shard_writes"] == at:
                encoded = io.BytesIO()
                real_write_table(table, encoded, **kwargs)
                where.write(encoded.getvalue()[: len(encoded.getvalue()) // 2])
                where.flush()
                stall()
            real_write_table(table, where, **kwargs)

        pq.write_table = write_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("log")
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--sleep", type=float, default=0.01)
    parser.add_argument("--writer", default="task0")
    parser.add_argument("--stall", choices=("none", "before-rename", "mid-write"), default="none")
    parser.add_argument("--stall-at", type=int, default=1)
    args = parser.parse_args(argv)

    store = Store(args.store, writer=args.writer)
    captions = store.table("captions")
    done = captions.existing_keys() | store.rejected_keys(STAGE, ("id", "k"))
    wanted = [(f"item{i:03d}", k) for i in range(args.items) for k in range(CAPTIONS_PER_ITEM)]
    todo = [key for key in wanted if key not in done]
    with open(args.log, "a", encoding="utf-8") as log:
        install_stall(args.stall, args.stall_at, log)
        for start in range(0, len(todo), args.batch):
            rows, rejects = [], []
            for item_id, k in todo[start:start + args.batch]:
                time.sleep(args.sleep)
                if is_unprocessable(item_id):
                    rejects.append(reject_record(item_id, STAGE, "unreadable_image", "fake failure", k=k))
                else:
                    rows.append({"id": item_id, "k": k, "caption": fake_caption(item_id, k)})
                log.write(f"{item_id}\t{k}\n")
                log.flush()
            store.write_rejects(rejects)
            captions.write(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
