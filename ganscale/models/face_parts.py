"""A face-part segmenter built from MediaPipe's own TFLite networks, run with the LiteRT interpreter.

Three networks ship inside the `mediapipe==0.10.21` wheel (later releases no longer carry them):
BlazeFace short-range (face boxes and six keypoints at 128 px), FaceMesh (468 landmarks on a 192 px
crop) and the selfie segmenter (person vs background at 256 px). Only those `.tflite` files are
fetched from the registry (pinned by sha256) and run with `ai-edge-litert`'s interpreter; mediapipe
itself is never installed, because it pins numpy<2 and protobuf<5, which this project does not
downgrade for it. The plain models need no MediaPipe custom ops, take 1-4 ms each on a CPU, and the
glue MediaPipe's graphs add (anchor decoding, the rotated face crop, filling landmark polygons) is
a few dozen lines here.

Classes: background, skin, eyebrows, eyes, nose, mouth (lips and the mouth between them), hair.
Hair is rough: the person mask outside the face outline, beside or above it, and not of the face's
skin tone (hats count as hair; a background the person mask swallows can leak in).
An image where no face is found is labelled all background; `last_found` says which ones.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.path import Path as PolygonPath
from scipy.special import expit

from ganscale import assets
from ganscale.errors import GanscaleError

CLASS_NAMES = ["background", "skin", "eyebrows", "eyes", "nose", "mouth", "hair"]

_WHEEL = "pypi:mediapipe==0.10.21/mediapipe/modules/"
MODEL_FILES = {
    "detector": (_WHEEL + "face_detection/face_detection_short_range.tflite",
                 "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"),
    "landmarks": (_WHEEL + "face_landmark/face_landmark.tflite",
                  "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),
    "person": (_WHEEL + "selfie_segmentation/selfie_segmentation.tflite",
               "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"),
}

# FaceMesh landmark indices of each part's outline, as in MediaPipe's face_mesh_connections.py
# (FACEMESH_FACE_OVAL, _LIPS outer ring, _LEFT_EYE/_RIGHT_EYE, _LEFT_EYEBROW/_RIGHT_EYEBROW, _NOSE).
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
LIPS = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]
EYES = [[263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466],
        [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]]
EYEBROWS = [[276, 283, 282, 295, 285, 336, 296, 334, 293, 300],
            [46, 53, 52, 65, 55, 107, 66, 105, 63, 70]]
NOSE = [168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 294, 278, 344, 440, 275, 45, 220, 115, 48, 64]

DETECTOR_SIZE, LANDMARK_SIZE, PERSON_SIZE = 128, 192, 256
MIN_SCORE = 0.5        # MediaPipe's face_detection_short_range graph
MIN_PRESENCE = 0.5     # FaceMesh's face-presence flag
CROP_SCALE = 1.5       # the detection box is enlarged this much for the landmark crop, as MediaPipe does


def blazeface_anchors() -> np.ndarray:
    """The 896 anchor centres [x, y] of BlazeFace short range (SSD: strides 8, 16, 16, 16;
    two anchors per cell on the 16x16 grid, six on the 8x8 grid; fixed unit size)."""
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        side = DETECTOR_SIZE // stride
        ys, xs = np.meshgrid((np.arange(side) + 0.5) / side, (np.arange(side) + 0.5) / side, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], 1)
        out.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(out).astype(np.float32)


def decode_detections(regressors: np.ndarray, scores: np.ndarray, anchors: np.ndarray) -> list[dict]:
    """Boxes (normalised centre x, y, width, height), six keypoints and scores above MIN_SCORE,
    merged by MediaPipe's weighted non-maximum suppression (overlap 0.3), best first."""
    score = expit(scores.reshape(-1))
    raw = regressors.reshape(-1, 16) / DETECTOR_SIZE
    keep = np.flatnonzero(score >= MIN_SCORE)
    if not len(keep):
        return []
    centre = raw[keep, :2] + anchors[keep]
    size = raw[keep, 2:4]
    keypoints = raw[keep, 4:].reshape(-1, 6, 2) + anchors[keep, None, :]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    order = np.argsort(-score[keep])
    found, remaining = [], list(order)
    while remaining:
        best = remaining[0]
        overlap = _iou(boxes[best], boxes[remaining])
        group = [remaining[i] for i in np.flatnonzero(overlap > 0.3)]
        w = score[keep][group][:, None]
        found.append({"box": (boxes[group] * w).sum(0) / w.sum(),
                      "keypoints": (keypoints[group] * w[:, :, None]).sum(0) / w.sum(),
                      "score": float(score[keep][best])})
        remaining = [r for r, o in zip(remaining, overlap) if o <= 0.3]
    return found


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), 1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], -1)  # noqa: E731
    return inter / (area(box) + area(boxes) - inter + 1e-12)


def _sample(image: np.ndarray, grid_xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of image [H, W, 3] at pixel coordinates grid_xy [h, w, 2] (zeros outside)."""
    h, w = image.shape[:2]
    grid = torch.from_numpy(grid_xy).float()
    grid = torch.stack([grid[..., 0] / (w - 1) * 2 - 1, grid[..., 1] / (h - 1) * 2 - 1], -1)[None]
    src = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    return F.grid_sample(src, grid, align_corners=True)[0].permute(1, 2, 0).numpy()


class FacePartsSegmenter:
    """Images [B, 3, H, W] in [0, 1] -> class maps [B, H, W] (index into CLASS_NAMES)."""

    class_names = CLASS_NAMES

    def __init__(self, model_paths: dict[str, str], work_size: int = 256):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreters = {}
        for name, path in model_paths.items():
            interpreter = Interpreter(model_path=str(path), num_threads=1)
            interpreter.allocate_tensors()
            self.interpreters[name] = interpreter
        self.anchors = blazeface_anchors()
        self.work_size = work_size
        self.last_found = np.zeros(0, bool)  # per image of the last call: was a face found

    def to(self, device):  # TFLite runs on the CPU whatever the device
        return self

    def _run(self, name: str, x: np.ndarray) -> list[np.ndarray]:
        interpreter = self.interpreters[name]
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[None].astype(np.float32))
        interpreter.invoke()
        return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """468 FaceMesh landmarks [468, 2] in pixel coordinates of image [S, S, 3] in [0, 1], or None."""
        size = image.shape[0]
        small = _resize(image, DETECTOR_SIZE)
        regressors, scores = self._run("detector", small * 2 - 1)
        found = decode_detections(regressors, scores, self.anchors)
        if not found:
            return None
        face = found[0]
        x0, y0, x1, y1 = face["box"] * size
        right_eye, left_eye = face["keypoints"][0] * size, face["keypoints"][1] * size
        angle = np.arctan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0])
        across, down = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
        side = CROP_SCALE * max(x1 - x0, y1 - y0)
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        steps = (np.arange(LANDMARK_SIZE) + 0.5) / LANDMARK_SIZE - 0.5
        u, v = np.meshgrid(steps, steps)
        grid = centre + side * (u[..., None] * across + v[..., None] * down)
        crop = _sample(image, grid)
        points, presence = self._run("landmarks", crop)
        if expit(float(presence.reshape(-1)[0])) < MIN_PRESENCE:
            return None
        uv = points.reshape(468, 3)[:, :2] / LANDMARK_SIZE - 0.5
        return centre + side * (uv[:, :1] * across + uv[:, 1:] * down)

    def person(self, image: np.ndarray, size: int) -> np.ndarray:
        """Person probability [size, size] of image [S, S, 3]."""
        mask = self._run("person", _resize(image, PERSON_SIZE))[0][0, ..., 0]
        return _resize(mask[..., None], size)[..., 0]

    def segment_one(self, image: np.ndarray, out_size: int) -> np.ndarray | None:
        work = _resize(image, self.work_size)
        points = self.landmarks(work)
        if points is None:
            return None
        scale = out_size / self.work_size
        centres = np.stack(np.meshgrid(np.arange(out_size) + 0.5, np.arange(out_size) + 0.5), -1).reshape(-1, 2)

        def inside(ids, hull=False):
            poly = points[ids] * scale
            if hull:
                from scipy.spatial import ConvexHull
                poly = poly[ConvexHull(poly).vertices]
            return PolygonPath(poly).contains_points(centres).reshape(out_size, out_size)

        labels = np.zeros((out_size, out_size), np.int64)
        face = inside(FACE_OVAL)
        labels[face] = CLASS_NAMES.index("skin")
        for part, outlines in (("eyebrows", EYEBROWS), ("nose", [NOSE]), ("eyes", EYES), ("mouth", [LIPS])):
            for ids in outlines:
                labels[inside(ids, hull=part == "nose")] = CLASS_NAMES.index(part)
        labels[self._hair(work, points, face, out_size)] = CLASS_NAMES.index("hair")
        return labels

    def _hair(self, work: np.ndarray, points: np.ndarray, face: np.ndarray, out_size: int) -> np.ndarray:
        grey = _resize(work, out_size).mean(-1)
        person = self.person(work, out_size) > 0.5
        oval = points[FACE_OVAL] * out_size / self.work_size
        (fx0, fy0), (fx1, fy1) = oval.min(0), oval.max(0)
        ys, xs = np.mgrid[:out_size, :out_size] + 0.5
        near = (ys < fy1) & (xs > fx0 - 0.4 * (fx1 - fx0)) & (xs < fx1 + 0.4 * (fx1 - fx0)) & (ys > fy0 - 0.6 * (fy1 - fy0))
        skin = grey[face & (grey > 0)]
        tone = np.median(skin) if skin.size else 0.5
        not_skin = np.abs(grey - tone) > 0.12
        return person & ~face & near & not_skin

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise GanscaleError(f"face_parts: expected images [B, 3, H, W], got {tuple(images.shape)}")
        arrays = images.detach().float().clamp(0, 1).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).cpu().numpy()
        size = images.shape[-1]
        maps, found = [], []
        for image in arrays:
            labels = self.segment_one(image, size)
            found.append(labels is not None)
            maps.append(labels if labels is not None else np.zeros((size, size), np.int64))
        self.last_found = np.array(found, bool)
        return torch.from_numpy(np.stack(maps)).to(images.device)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image.astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    mode = dict(mode="bilinear", align_corners=False, antialias=size < image.shape[0])
    return F.interpolate(x, size=(size, size), **mode)[0].permute(1, 2, 0).numpy()


CLASS_COLOURS = np.array([[0, 0, 0], [236, 188, 150], [120, 72, 30], [40, 120, 255], [250, 220, 40],
                          [220, 30, 60], [150, 60, 200]], np.float32) / 255


def contact_sheet(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path, per_row: int = 8) -> None:
    """A picture of images and their face-part masks: for each (title, images [N, H, W, 3] in [0, 1],
    class maps [N, H, W], found [N]) one row of images and one of mask overlays, with a class legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(2 * len(rows), per_row, figsize=(1.25 * per_row, 2.9 * len(rows)), squeeze=False,
                             gridspec_kw=dict(wspace=0.05, hspace=0.3))
    for r, (title, images, maps, found) in enumerate(rows):
        for c in range(per_row):
            top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
            for ax in (top, bottom):
                ax.set_xticks([]), ax.set_yticks([])
            if c >= len(images):
                top.axis("off"), bottom.axis("off")
                continue
            top.imshow(images[c], interpolation="nearest")
            overlay = 0.45 * images[c] + 0.55 * CLASS_COLOURS[maps[c]]
            bottom.imshow(np.where(maps[c][..., None] > 0, overlay, 0.5 * images[c]), interpolation="nearest")
            if not found[c]:
                bottom.text(0.5, 0.5, "no face", transform=bottom.transAxes, ha="center", va="center",
                            fontsize=9, color="white", backgroundcolor="crimson")
        axes[2 * r, 0].set_title(title, loc="left", fontsize=10, pad=4)
    legend = [Patch(color=CLASS_COLOURS[i], label=name) for i, name in enumerate(CLASS_NAMES) if i]
    fig.legend(handles=legend, loc="upper center", ncol=len(legend), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, fig.subplotpars.bottom - 0.005))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def face_parts(weights: str | None = None, sha256: str | None = None) -> FacePartsSegmenter:
    """The registry entry: its files are fixed (MODEL_FILES), so `weights`/`sha256` must be empty."""
    if weights or sha256:
        raise GanscaleError("dissect.segmenter.weights: face_parts takes no weights (its TFLite files are pinned)")
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError as err:
        raise GanscaleError("dissect.segmenter.name: face_parts needs ai-edge-litert "
                            "(pip install 'ganscale[faces]')") from err
    paths = {name: assets.fetch(uri, digest, field=f"dissect.segmenter ({uri})")
             for name, (uri, digest) in MODEL_FILES.items()}
    return FacePartsSegmenter(paths)
