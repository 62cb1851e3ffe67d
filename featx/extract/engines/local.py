"""The local engine: the shards run in this process, one after another, through one reader
pipeline (decoding of the next shard overlaps the forward pass of this one)."""

from __future__ import annotations

import contextlib


class LocalEngine:
    name = "local"

    def __init__(self, *, progress: bool = True):
        self.progress = progress

    def extractor_options(self, options: dict) -> dict:
        return options

    def session(self):
        return contextlib.nullcontext()

    def file_checker(self):
        return None

    def run(self, writer, plan, shards, extractor, ready) -> None:
        from featx.extract.worker import extract_shards

        plan_rows = plan[["row_id", "path"]].to_dict("records")
        for start, features, meta in extract_shards(extractor, plan_rows, shards, progress=self.progress,
                                                     ready=ready):
            writer.commit_shard(start, features, meta)
