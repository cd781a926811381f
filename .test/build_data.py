"""Build the tiny configuration's data: archives with the real internal layouts, a few frames each.

    python .test/build_data.py DEST [--weights-seed N]

writes `DEST/<id>/<file name>` for every entry of .test/config/datasets.yaml: DAVIS-2017
(two sequences, two and one objects), JHMDB (two clips with joint positions), VIP_Fine (two
videos with part labels), YouTube-VOS 2018 valid (two videos, server-scored: propagated in
shards, exported), the training sets (COCO train2017 images, an ImageNet train tar of per-class
tars, YouTube-VOS 2018 train clips; image counts that the tiny batches divide) and a
videowalk/CRW-format checkpoint (`{"model": ...}` with
`encoder.model.` keys of a torchvision ResNet-18, random values from `--weights-seed`). That tree
is both what a local mirror serves (the registry's URLs are http://vcorr-test.invalid/<id>/<name>)
and what `resources/downloads/` holds when the archives are placed by hand, so

    python .test/build_data.py resources/downloads

lets the workflow run the tiny configuration without any server. Frames show textured squares
moving a pixel or two per frame, so propagation has something to follow.
"""

from __future__ import annotations

import argparse
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

DAVIS_SEQUENCES = {"blackswan": 2, "bmx-trees": 1}  # sequence -> objects
JHMDB_CLIPS = ["brush_hair/clip_a", "brush_hair/clip_b"]
VIP_VIDEOS = ["videos1", "videos2"]
YTVOS_VIDEOS = {"0a2f2bd294": 2, "0b6db1c6fd": 1}  # video -> objects
COCO_IMAGES = 4
IMAGENET_CLASSES = {"n01440764": 4, "n01443537": 4}  # wnid -> images
YTVOS_TRAIN_VIDEOS = ["003234408d", "0043f083b5", "0044fa5fba", "005a527edd"]  # 3 frames each
FRAMES = 4
HEIGHT, WIDTH = 48, 64


def _palette() -> list[int]:
    from vcorr.io import DAVIS_PALETTE

    return DAVIS_PALETTE


def _png_bytes(ids: np.ndarray) -> bytes:
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _image_bytes(rgb: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _scene(rng: np.random.Generator, objects: int, frames: int = FRAMES):
    """Per frame: an RGB image and its id map; object k is a textured square moving right/down."""
    background = rng.integers(0, 80, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    starts = [(6 + 16 * k, 6 + 20 * k) for k in range(objects)]
    colours = rng.integers(120, 255, size=(objects, 3))
    for t in range(frames):
        rgb, ids = background.copy(), np.zeros((HEIGHT, WIDTH), np.uint8)
        for k, (top, left) in enumerate(starts):
            y, x = top + t, left + 2 * t
            texture = rng.integers(-20, 20, size=(14, 14, 3))
            rgb[y : y + 14, x : x + 14] = np.clip(colours[k] + texture, 0, 255)
            ids[y : y + 14, x : x + 14] = k + 1
        yield rgb, ids


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _write_targz(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def build_davis(dest: Path, rng: np.random.Generator) -> None:
    members = {}
    for sequence, objects in DAVIS_SEQUENCES.items():
        for t, (rgb, ids) in enumerate(_scene(rng, objects)):
            members[f"DAVIS/JPEGImages/480p/{sequence}/{t:05d}.jpg"] = _image_bytes(rgb, "JPEG")
            members[f"DAVIS/Annotations/480p/{sequence}/{t:05d}.png"] = _png_bytes(ids)
    names = "\n".join(DAVIS_SEQUENCES) + "\n"
    for year in ("2017", "2016"):
        members[f"DAVIS/ImageSets/{year}/val.txt"] = (names if year == "2017" else "blackswan\n").encode()
        members[f"DAVIS/ImageSets/{year}/train.txt"] = b""
    _write_zip(dest / "davis17" / "DAVIS-2017-trainval-480p.zip", members)


def build_jhmdb(dest: Path, rng: np.random.Generator) -> None:
    from scipy.io import savemat

    frames, joints = {}, {}
    for clip in JHMDB_CLIPS:
        for t, (rgb, _ids) in enumerate(_scene(rng, 1)):
            frames[f"Rename_Images/{clip}/{t + 1:05d}.png"] = _image_bytes(rgb, "PNG")
        # 15 joints drifting with the square, 1-based (x, y) as JHMDB stores them.
        base = rng.uniform([8, 8], [30, 20], size=(15, 2))
        positions = np.stack([base + [2 * t + 1, t + 1] for t in range(FRAMES)], axis=-1)  # [15, 2, T]
        buffer = io.BytesIO()
        savemat(buffer, {"pos_img": positions.transpose(1, 0, 2), "scale": np.ones(FRAMES)})
        joints[f"joint_positions/{clip}/joint_positions.mat"] = buffer.getvalue()
    _write_zip(dest / "jhmdb" / "joint_positions.zip", joints)
    _write_targz(dest / "jhmdb" / "Rename_Images.tar.gz", frames)


def build_vip(dest: Path, rng: np.random.Generator) -> None:
    members = {}
    for video in VIP_VIDEOS:
        for t, (rgb, ids) in enumerate(_scene(rng, 2)):
            stem = f"{25 * t + 1:012d}"
            members[f"VIP_Fine/Images/{video}/{stem}.jpg"] = _image_bytes(rgb, "JPEG")
            members[f"VIP_Fine/Annotations/Category_ids/{video}/{stem}.png"] = _png_bytes(ids * 3)  # part classes 3, 6
    members["VIP_Fine/lists/val_videos.txt"] = ("\n".join(VIP_VIDEOS) + "\n").encode()
    _write_zip(dest / "vip" / "VIP_Fine.zip", members)


def build_ytvos(dest: Path, rng: np.random.Generator) -> None:
    """YouTube-VOS 2018 `valid.zip`: every 5th frame, first-frame labels only, meta.json."""
    import json

    members, videos = {}, {}
    for video, objects in YTVOS_VIDEOS.items():
        stems = [f"{5 * t:05d}" for t in range(FRAMES)]
        for stem, (rgb, ids) in zip(stems, _scene(rng, objects)):
            members[f"valid/JPEGImages/{video}/{stem}.jpg"] = _image_bytes(rgb, "JPEG")
            if stem == stems[0]:
                members[f"valid/Annotations/{video}/{stem}.png"] = _png_bytes(ids)
        videos[video] = {"objects": {str(k + 1): {"category": "thing", "frames": stems} for k in range(objects)}}
    members["valid/meta.json"] = json.dumps({"videos": videos}).encode()
    _write_zip(dest / "ytvos18" / "valid.zip", members)


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _frames(rng: np.random.Generator, count: int) -> list[bytes]:
    return [_image_bytes(rgb, "JPEG") for rgb, _ids in _scene(rng, 1, frames=count)]


def build_training_sets(dest: Path, rng: np.random.Generator) -> None:
    """COCO `train2017.zip` (train2017/*.jpg), ImageNet `ILSVRC2012_img_train.tar` (one inner
    <wnid>.tar of JPEGs per class) and YouTube-VOS 2018 `train.zip` (train/JPEGImages/<video>/)."""
    images = _frames(rng, COCO_IMAGES)
    _write_zip(dest / "coco" / "train2017.zip",
               {f"train2017/{number + 1:012d}.jpg": data for number, data in enumerate(images)})
    inner = {
        f"{wnid}.tar": _tar_bytes({f"{wnid}_{number + 1}.JPEG": data for number, data in enumerate(_frames(rng, count))})
        for wnid, count in IMAGENET_CLASSES.items()
    }
    target = dest / "imagenet" / "ILSVRC2012_img_train.tar"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(_tar_bytes(inner))
    clips = {}
    for video in YTVOS_TRAIN_VIDEOS:
        for t, data in enumerate(_frames(rng, 3)):
            clips[f"train/JPEGImages/{video}/{5 * t:05d}.jpg"] = data
    _write_zip(dest / "ytvos18_train" / "train.zip", clips)


def write_crw_checkpoint(path: Path, seed: int) -> None:
    """videowalk's layout: {"model": {"encoder.model.<torchvision resnet18 key>", "selfsim_fc.*"}}.

    Layers past layer3 are left out (the CRW encoder removes them) to keep the file small.
    """
    import torch
    import torchvision

    torch.manual_seed(seed)
    state = {
        f"encoder.model.{key}": value
        for key, value in torchvision.models.resnet18().state_dict().items()
        if not key.startswith(("layer4.", "fc."))
    }
    state["selfsim_fc.0.weight"] = torch.randn(128, 256)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "epoch": 0}, path)


def build(dest: Path, weights_seed: int = 7) -> None:
    """Every archive and the checkpoint; the default seed differs from tiny_random's (0), so
    the two tiny methods have different weights and different scores."""
    rng = np.random.default_rng(0)
    build_davis(dest, rng)
    build_jhmdb(dest, rng)
    build_vip(dest, rng)
    build_ytvos(dest, rng)
    build_training_sets(dest, rng)
    write_crw_checkpoint(dest / "crw" / "pretrained.pth", weights_seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="folder receiving <id>/<file name>")
    parser.add_argument("--weights-seed", type=int, default=7)
    args = parser.parse_args()
    build(args.dest, args.weights_seed)
    print(f"tiny data written under {args.dest}")


if __name__ == "__main__":
    main()
