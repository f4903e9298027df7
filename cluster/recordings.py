"""What `actstream batch` relabels and where each result goes.

DATA is a folder (every media file below it, subfolders included; other files are not recordings) or a manifest
CSV with a `path` column (other columns are ignored, so the shared data's manifests serve as they are), its
paths relative to `root` (default: the CSV's folder). Each recording is one unit and gives one output,
`OUT/<name>.jsonl`, where name is the recording's path relative to the folder (or root) without its extension:
`video/weizmann/jack/lena_jack.avi` -> `OUT/video/weizmann/jack/lena_jack.jsonl`. Two recordings whose names
would be the same (`a.mp4` and `a.wav` side by side) keep their extensions instead: `a.mp4.jsonl`,
`a.wav.jsonl`. A file listed twice is one recording.

Resumable: an output that exists is finished (it is only ever written whole, under a temporary name, then
renamed), so it is skipped; an unfinished one (a `*.part` left by a run that stopped) is written again.
`OUT/batch.json` records the model and settings the outputs were made with (a run with others is refused:
its outputs would mix two models) and the last run's summary.
"""

from __future__ import annotations

import glob
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from actstream.common.errors import ConfigError
from actstream.common.files import read_small_text, shown_path

MEDIA = {".mp4", ".mkv", ".avi", ".mpg", ".mpeg", ".mov", ".webm", ".m4v", ".ts", ".wav", ".flac", ".mp3", ".ogg",
         ".opus", ".m4a", ".aac"}
MAX_RECORDINGS = 1_000_000  # an archive of thousands of hours; a manifest's rows are bounded by its size below
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
JOB_FILE = "batch.json"  # never a recording's output: those end in .jsonl
PART = ".part"


@dataclass(frozen=True)
class Recording:
    path: str  # absolute
    name: str  # the output's path relative to OUT, ending in .jsonl
    size: int  # bytes (the longest go first: the job does not end on one long straggler)


def _folder(data: Path) -> tuple[Path, list[Path]]:
    found: list[Path] = []
    for top, dirs, files in os.walk(data, onerror=_walk_error):
        dirs.sort()
        for f in sorted(files):
            if Path(f).suffix.lower() in MEDIA:
                found.append(Path(top) / f)
                if len(found) > MAX_RECORDINGS:
                    raise ConfigError(f"{shown_path(data)}: more than {MAX_RECORDINGS} recordings: split the job")
    return data, found


def _walk_error(exc: OSError) -> None:
    raise ConfigError(f"{shown_path(exc.filename)}: cannot be listed ({exc.strerror}): check its permissions") from exc


def _manifest(path: Path, root: Path | None) -> tuple[Path, list[Path]]:
    from actstream.stream.csvfile import read_csv

    base = (root or path.parent).resolve()
    rows = read_csv(path, "manifest", "path[,...]", {"path"}, None, MAX_MANIFEST_BYTES, MAX_RECORDINGS)
    found = []
    for line, row in rows:
        where = f"manifest {shown_path(path)} line {line}"
        p = Path(row["path"].strip())
        if not row["path"].strip():
            raise ConfigError(f"{where}: path is empty: name a recording (relative to {shown_path(base)})")
        full = p if p.is_absolute() else base / p
        try:
            st = full.stat()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: {shown_path(full)} cannot be read ({getattr(exc, 'strerror', None) or exc}): "
                              f"fix the path (relative to {shown_path(base)}; --root sets that) or remove the "
                              f"row") from exc
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: {shown_path(full)} is not a regular file: name a recording")
        found.append(full)
    return base, found


def find_recordings(data: str | Path, root: str | Path | None = None) -> list[Recording]:
    """Every recording of a folder or manifest, named (see the module's doc), longest first. ConfigError for a
    DATA that is neither, a manifest row naming no file, or a recording outside the root."""
    data = Path(data)
    if data.is_dir():
        if root is not None:
            raise ConfigError("--root goes with a manifest (its paths are relative to it); a folder's recordings "
                              "are named relative to the folder")
        base, paths = _folder(data.resolve())
    elif data.is_file() and data.suffix.lower() == ".csv":
        base, paths = _manifest(data, Path(root) if root is not None else None)
    else:
        raise ConfigError(f"{shown_path(data)}: not a folder of recordings or a manifest CSV (with a path column): "
                          f"pass one")
    unique: dict[str, tuple[Path, str]] = {}  # resolved path -> (path, relative name)
    for p in paths:
        real = os.path.realpath(p)
        if real in unique:
            continue
        absolute = Path(os.path.abspath(p))
        try:
            rel = absolute.relative_to(base).as_posix()
        except ValueError:
            raise ConfigError(f"{shown_path(p)} is outside {shown_path(base)}: outputs are named by the path below "
                              f"it; pass --root with a folder that holds every recording") from None
        unique[real] = (absolute, rel)
    names = output_names([rel for _, rel in unique.values()])
    out = []
    for (absolute, rel), name in zip(unique.values(), names):
        out.append(Recording(str(absolute), name, absolute.stat().st_size))
    return sorted(out, key=lambda r: (-r.size, r.name))


def output_names(rels: list[str]) -> list[str]:
    """Output names for recordings' relative paths: the path without its extension + .jsonl, or, for every
    recording whose name that would share with another, the path with its extension + .jsonl (distinct files
    have distinct paths, so that always settles it)."""
    full = [False] * len(rels)
    while True:
        names = [f"{r}.jsonl" if f else f"{str(Path(r).with_suffix(''))}.jsonl" for r, f in zip(rels, full)]
        seen: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            seen.setdefault(n, []).append(i)
        clashes = [i for group in seen.values() if len(group) > 1 for i in group if not full[i]]
        if not clashes:
            return names
        for i in clashes:
            full[i] = True


def finished(out: Path, rec: Recording) -> bool:
    return (out / rec.name).is_file()


def forget_unfinished(out: Path, rec: Recording) -> None:
    """Remove what a stopped run left of a recording's output (its `.part` files); one batch per --out at a time."""
    final = out / rec.name
    if final.parent.is_dir():
        for part in final.parent.glob(f"{glob.escape(final.name)}.*{PART}"):
            part.unlink(missing_ok=True)


def write_output(out: Path, rec: Recording, data: bytes) -> None:
    """The recording's labels, written whole: to a temporary file beside it, synced, then renamed over the
    output (a run killed meanwhile leaves a `.part`, never a short output)."""
    final = out / rec.name
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(f"{final.name}.{os.getpid()}{PART}")
    with open(part, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, final)


def job_settings(cfg, spec) -> dict:
    """What an output depends on beyond its recording: the model, and every setting of the replay path."""
    import dataclasses

    return {"model": spec.tag, "model_folder": str(spec.folder), "step_ms": cfg.step.step_ms,
            "precision": cfg.model.precision, "backend": cfg.model.backend,
            "policy": dataclasses.asdict(cfg.policy), "batch_steps": cfg.replay.batch_steps,
            "status_every_ms": cfg.publish.status_every_ms}


def check_job(out: Path, settings: dict) -> None:
    """Refuse an output folder whose outputs were made with another model or settings."""
    path = out / JOB_FILE
    if not path.is_file():
        return
    try:
        before = json.loads(read_small_text(path, 16 << 20, "batch record"))["settings"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{shown_path(path)} is not a batch record: remove it, or choose another --out") from exc
    if before != settings:
        changed = [k for k in [*settings, *before] if before.get(k) != settings.get(k)]  # the model first
        raise ConfigError(f"--out {shown_path(out)} holds labels made with other settings ({', '.join(changed)}: "
                          f"{before.get(changed[0])!r} then, {settings.get(changed[0])!r} now): choose another "
                          f"--out, or remove its outputs to label them again")


def write_job(out: Path, settings: dict, summary: dict) -> None:
    path = out / JOB_FILE
    part = path.with_name(path.name + PART)
    part.write_text(json.dumps({"settings": settings, "summary": summary}, indent=2) + "\n")
    os.replace(part, path)
