"""Plate-scale prediction in shards: which stacks a process predicts, per-stack parts that
record their completion, and the merge into one table.

A sharded run writes, beside the output table ``OUT``, a folder ``OUT.parts`` with a
manifest (the ordered stacks and the settings) and per stack a table and a completion
record, each written atomically, the record last. A rerun skips stacks with a record; the
merge concatenates the parts in the manifest's order, so the combined table is the table
one process writes for the same stacks.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_atomic, write_text_atomic


class ShardError(ValueError):
    """A shard setting or a parts folder that cannot be used, with what to do."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def mine(self, n: int) -> list[int]:
        """Stack positions of this shard: every ``count``-th from ``index``."""
        return list(range(self.index, n, self.count))


def parse_shard(text: str) -> Shard:
    """``I/N`` (0-based ``I``) as given to ``--shard``."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise ShardError(f"--shard must be I/N, e.g. 0/4; got {text!r}") from exc
    if not 0 <= index < count:
        raise ShardError(f"--shard {text}: I must be between 0 and N-1")
    return Shard(index, count)


def shard_from_env(env=os.environ) -> Shard | None:
    """torchrun's ``RANK``/``WORLD_SIZE``, else a SLURM job array's task id and count."""
    if int(env.get("WORLD_SIZE", 1)) > 1:
        return Shard(int(env["RANK"]), int(env["WORLD_SIZE"]))
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        count = int(env["SLURM_ARRAY_TASK_COUNT"])
        index = int(env["SLURM_ARRAY_TASK_ID"]) - first
        if not 0 <= index < count:
            raise ShardError(
                f"SLURM_ARRAY_TASK_ID {env['SLURM_ARRAY_TASK_ID']} does not fit an array of "
                f"{count} tasks from {first}: use a contiguous --array, or give --shard I/N")
        return Shard(index, count)
    return None


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def part_name(position: int, stack: Path) -> str:
    return f"{position:05d}_{Path(stack).stem}"


class Parts:
    """The parts folder of one sharded prediction."""

    def __init__(self, out: Path, stacks: list[Path], settings: dict):
        self.out = Path(out)
        self.dir = parts_dir(self.out)
        self.stacks = [str(Path(s).resolve()) for s in stacks]
        self.manifest = {"stacks": self.stacks, "settings": settings}

    def claim(self) -> None:
        """Write the manifest, or check that the folder holds this same prediction."""
        path = self.dir / "manifest.json"
        if path.exists():
            if json.loads(path.read_text()) != self.manifest:
                raise ShardError(
                    f"'{self.dir}' holds the parts of another prediction (other stacks or "
                    "settings): remove it, or choose another --out")
            return
        write_text_atomic(path, json.dumps(self.manifest, indent=1))

    def _paths(self, position: int) -> tuple[Path, Path]:
        name = part_name(position, Path(self.stacks[position]))
        return self.dir / f"{name}.csv", self.dir / f"{name}.done.json"

    def finished(self, position: int) -> bool:
        table, record = self._paths(position)
        return record.exists() and table.exists()

    def write(self, position: int, table, shard: Shard) -> None:
        """The stack's table, then the record that it is complete (both atomic)."""
        path, record = self._paths(position)
        write_atomic(path, lambda tmp: table.to_csv(tmp, index=False))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        write_text_atomic(record, json.dumps({
            "stack": self.stacks[position], "rows": len(table), "shard": f"{shard.index}/{shard.count}",
            "sha256": digest}))

    def missing(self) -> list[int]:
        return [i for i in range(len(self.stacks)) if not self.finished(i)]


def merge_parts(out: Path) -> int:
    """Write ``out`` from its finished parts folder, in the manifest's order; rows written."""
    out = Path(out)
    folder = parts_dir(out)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError as exc:
        raise ShardError(f"no sharded prediction for '{out}': '{folder}' has no manifest") from exc
    parts = Parts(out, [Path(s) for s in manifest["stacks"]], manifest["settings"])
    missing = parts.missing()
    if missing:
        raise ShardError(
            f"{len(missing)} of {len(parts.stacks)} stacks are not predicted yet (first: "
            f"{parts.stacks[missing[0]]}): rerun the shards that did not finish, then merge")
    header, bodies, rows = None, [], 0
    for position in range(len(parts.stacks)):
        table, record = parts._paths(position)
        data = table.read_bytes()
        expected = json.loads(record.read_text())
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise ShardError(f"'{table}' changed after it was written: delete it and its "
                             f"'.done.json' record, rerun its shard, then merge")
        first, _, body = data.partition(b"\n")
        header = header or first
        bodies.append(body)
        rows += expected["rows"]

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(header + b"\n")
            for body in bodies:
                fh.write(body)

    write_atomic(out, write)
    return rows
