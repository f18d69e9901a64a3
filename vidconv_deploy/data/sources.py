"""Where the videos come from: a folder (optionally one sub-folder per class) or an annotation list.

An annotation list is MMAction2's video list format: one ``relative/path.mp4 LABEL`` per line,
paths relative to a root folder. A dataset folder written by ``vidconv-make-data`` holds one list
per split (``train.txt``, ``val.txt``, ``test.txt``), ``classes.txt`` and ``dataset.json``.
Missing or broken video files are not an error here: the dataset skips and counts them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from vidconv_deploy.errors import UserError

#: File endings taken as videos when scanning a folder.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
#: Label of a video whose class is unknown (a folder without class sub-folders).
NO_LABEL = -1


@dataclasses.dataclass(frozen=True)
class VideoItem:
    """One video and its class index (``NO_LABEL`` when unknown)."""

    path: Path
    label: int


@dataclasses.dataclass(frozen=True)
class VideoSource:
    """The videos of one split, the class names, and the sampling protocol the dataset declares (if any)."""

    items: tuple[VideoItem, ...]
    classes: tuple[str, ...]
    protocol: str | None = None


def _is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".")


def scan_folder(root: str | os.PathLike[str]) -> VideoSource:
    """Videos in ``root``: either all at the top (no labels) or in class sub-folders (sorted names = class indices)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"video folder {root} does not exist: give a folder of videos or of class sub-folders")
    top = sorted(p for p in root.iterdir() if _is_video(p))
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_dirs = [d for d in class_dirs if any(_is_video(p) for p in d.rglob("*"))]
    if top and class_dirs:
        raise UserError(f"{root} holds videos both at the top and in sub-folders ({class_dirs[0].name}/): "
                        f"move the top-level videos into class folders, or the class folders' videos out")
    if top:
        return VideoSource(tuple(VideoItem(p, NO_LABEL) for p in top), ())
    if not class_dirs:
        raise UserError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {root}: put videos there or in one sub-folder per class")
    items = [VideoItem(p, label) for label, d in enumerate(class_dirs) for p in sorted(d.rglob("*")) if _is_video(p)]
    return VideoSource(tuple(items), tuple(d.name for d in class_dirs))


def list_digest(source: VideoSource, root: str | os.PathLike[str]) -> str:
    """A short hash of which videos ``source`` lists (paths relative to ``root``) with which labels.

    A resumed training run compares it with its state's: a dataset regenerated in the same folder
    (another seed gives the same file names with other labels) must not silently continue a run.
    """
    text = "".join(f"{os.path.relpath(item.path, root)} {item.label}\n" for item in source.items)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _read_text(path: Path, what: str, fix: str) -> str:
    """A text file's contents; unreadable or non-UTF-8 files are a one-line :class:`UserError` naming the fix."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read {what} {path} ({err.strerror}): {fix}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): "
                        f"save it as UTF-8") from None


def read_classes(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Class names, one per line (line i = class i)."""
    path = Path(path)
    text = _read_text(path, "class list", "write one class name per line")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise UserError(f"class list {path} is empty: write one class name per line")
    return names


def read_annotations(
    list_file: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    classes: tuple[str, ...] | None = None,
) -> VideoSource:
    """An MMAction2 video list: ``relative/path.mp4 LABEL`` per line, paths relative to ``root``.

    ``root`` defaults to the list's folder. Blank lines are ignored; the path may contain spaces
    (the label is the last field). Without ``classes`` the names are ``class_0 ... class_{max}``.
    """
    list_file = Path(list_file)
    root = list_file.parent if root is None else Path(root)
    lines = _read_text(list_file, "annotation list", "check the path").splitlines()
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.rsplit(maxsplit=1)
        where = f"{list_file}:{number}"
        if len(fields) != 2 or not fields[1].isdigit():
            raise UserError(f"{where}: expected 'relative/path.mp4 LABEL' with a non-negative integer label, "
                            f"got {line.strip()!r}: fix or delete the line")
        rel, label = fields[0].strip(), int(fields[1])
        if Path(rel).is_absolute():
            raise UserError(f"{where}: path {rel!r} is absolute: write it relative to the root folder {root}")
        if classes is not None and label >= len(classes):
            raise UserError(f"{where}: label {label} but there are only {len(classes)} classes: "
                            f"fix the label or add the class to the class list")
        items.append(VideoItem(root / rel, label))
    if not items:
        raise UserError(f"annotation list {list_file} has no entries: write one 'relative/path.mp4 LABEL' per line")
    if classes is None:
        classes = tuple(f"class_{i}" for i in range(max(item.label for item in items) + 1))
    return VideoSource(tuple(items), classes)


def open_split(dataset_dir: str | os.PathLike[str], split: str) -> VideoSource:
    """One split of a dataset folder: ``{split}.txt`` with ``classes.txt`` and ``dataset.json`` when present."""
    dataset_dir = Path(dataset_dir)
    list_file = dataset_dir / f"{split}.txt"
    if not list_file.is_file():
        have = sorted(p.stem for p in dataset_dir.glob("*.txt") if p.name != "classes.txt")
        hint = f"splits here: {', '.join(have)}" if have else "make one with vidconv-make-data --out DIR"
        raise UserError(f"no annotation list {list_file}: {hint}")
    classes_file = dataset_dir / "classes.txt"
    classes = read_classes(classes_file) if classes_file.is_file() else None
    source = read_annotations(list_file, dataset_dir, classes)
    meta_file = dataset_dir / "dataset.json"
    protocol = None
    if meta_file.is_file():
        text = _read_text(meta_file, "dataset description", "regenerate the dataset or delete the file")
        try:
            protocol = json.loads(text).get("protocol")
        except (json.JSONDecodeError, AttributeError):
            raise UserError(f"{meta_file} is not a JSON object: regenerate the dataset or delete the file") from None
        if protocol is not None and not isinstance(protocol, str):
            raise UserError(f"{meta_file}: 'protocol' is {protocol!r}, not a name: write \"ssv2\" or \"kinetics\"")
    return dataclasses.replace(source, protocol=protocol)
