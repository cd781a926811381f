"""Typed access to config/datasets.yaml (the key reference is the header of that file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vcorr.errors import VcorrError
from vcorr.config import load_registry, registry_entry


@dataclass(frozen=True)
class DataFile:
    name: str
    url: str | None
    sha256: str | None
    type: str  # archive | file
    # The first hex digits of the sha256 where the publisher gives only those (torchvision's and
    # mmcv's file names end in `-<first 8>`, as torch.hub checks them).
    sha256_prefix: str | None = None
    required: bool = True
    alternative_to: str | None = None
    videos_to_frames: str | None = None
    inner_archives: str | None = None


    @property
    def expected_sha256(self) -> str | None:
        """What the publisher gives of the file's sha256: the whole hash, a prefix, or None."""
        return self.sha256 or self.sha256_prefix


@dataclass(frozen=True)
class Dataset:
    id: str
    title: str
    kind: str  # dataset | weights
    manual: bool
    files: list[DataFile]
    how: str = ""
    root: str = "."
    derived_from: str | None = None
    built_by: str | None = None  # a builder of vcorr.data.extract.BUILDERS writes the folder (no download)
    build: dict = field(default_factory=dict)  # the builder's settings
    flatten: bool = False
    index: dict = field(default_factory=dict)

    def where_to_get(self, downloads: Path) -> str:
        """The instructions a manual-only set prints: where to download, where to put the files."""
        folder = downloads / self.id
        wanted = [item for item in self.files if item.required]
        optional = [item for item in self.files if not item.required]
        text = f"{self.id} ({self.title}) cannot be downloaded by vcorr: {self.how.strip()}"
        text += f"; then put {', '.join(item.name for item in wanted)} in {folder}/"
        if optional:
            text += f" (optional, used when present: {', '.join(item.name for item in optional)})"
        return text + f" and run `vcorr data fetch {self.id}` again"


_FILE_KEYS = {field_name for field_name in DataFile.__dataclass_fields__}
_DATASET_KEYS = {field_name for field_name in Dataset.__dataclass_fields__} | {"size"}


def dataset(dataset_id: str) -> Dataset:
    """The registry entry `dataset_id`, checked for unknown keys and missing URLs."""
    entry = dict(registry_entry("datasets", dataset_id))
    unknown = set(entry) - _DATASET_KEYS
    if unknown:
        raise VcorrError(f"config/datasets.yaml: {dataset_id}: unknown keys {sorted(unknown)}")
    entry.pop("size", None)
    files = []
    for item in entry.pop("files", None) or []:
        if not isinstance(item, dict) or set(item) - _FILE_KEYS or "name" not in item:
            raise VcorrError(f"config/datasets.yaml: {dataset_id}: bad file entry {item!r}")
        data_file = DataFile(**{"url": None, "sha256": None, "type": "archive", **item})
        if data_file.type not in ("archive", "file"):
            raise VcorrError(f"config/datasets.yaml: {dataset_id}: {data_file.name}: type must be archive or file")
        if not entry.get("manual") and not data_file.url:
            raise VcorrError(f"config/datasets.yaml: {dataset_id}: {data_file.name} has no url and the set is not manual")
        files.append(data_file)
    return Dataset(id=dataset_id, files=files, **entry)


def dataset_ids() -> list[str]:
    return list(load_registry("datasets"))
