"""The images of a search gallery: the images and videos of a folder, or one video, whose frames
are sampled at a rate and named by index and time."""
import logging
import math
import os

import cv2

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def list_gallery(gallery):
    """Sorted image and video paths of a gallery folder (directly inside it; other files are counted
    and logged), or ``[gallery]`` for one video file."""
    if os.path.isfile(gallery) and gallery.lower().endswith(VIDEO_EXTENSIONS):
        return [gallery]
    if not os.path.isdir(gallery):
        raise FileNotFoundError(f"search: gallery {gallery!r} is neither a folder nor a video ({', '.join(VIDEO_EXTENSIONS)})")
    names = sorted(os.listdir(gallery))
    sources = [os.path.join(gallery, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)]
    others = len([n for n in names if os.path.isfile(os.path.join(gallery, n))]) - len(sources)
    if others:
        logger.info("search: %d file(s) neither image nor video in %s ignored", others, gallery)
    if not sources:
        raise ValueError(
            f"search: no images ({', '.join(IMAGE_EXTENSIONS)}) or videos ({', '.join(VIDEO_EXTENSIONS)}) "
            f"in gallery folder {gallery!r}"
        )
    return sources


def is_video(path):
    return path.lower().endswith(VIDEO_EXTENSIONS)


def starts_sample(index, fps, sample_fps):
    """Whether frame ``index`` of a ``fps`` video is the first of its 1/``sample_fps`` s slot
    (``sample_fps`` 0: every frame is taken)."""
    if sample_fps <= 0 or index == 0:
        return True
    return math.floor(index * sample_fps / fps + 1e-9) != math.floor((index - 1) * sample_fps / fps + 1e-9)


def timestamp(seconds):
    """``H:MM:SS.mmm`` of a time in seconds."""
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def sample_video(path, sample_fps):
    """Yield (frame index, time in s, BGR frame) of the frames of ``path`` taken at ``sample_fps``."""
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise ValueError(f"search: OpenCV cannot open video {path!r}")
    fps = cap.get(cv2.CAP_PROP_FPS)
    if not fps > 0:
        cap.release()
        raise ValueError(f"search: video {path!r} states no frame rate (got {fps}); frame times are unknown")
    index = 0
    try:
        while cap.grab():
            if starts_sample(index, fps, sample_fps):
                ok, frame = cap.retrieve()
                if not ok:
                    raise ValueError(f"search: video {path!r}: frame {index} cannot be decoded")
                yield index, index / fps, frame
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise ValueError(f"search: video {path!r} has no frames that OpenCV can read")


def read_video_frame(path, index):
    """Frame ``index`` of the video ``path`` (BGR), read in order from the start (exact for every codec)."""
    cap = cv2.VideoCapture(path)
    try:
        for _ in range(index):
            if not cap.grab():
                break
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise ValueError(f"search: video {path!r} has no frame {index}")
    return frame


def gallery_images(gallery, sample_fps):
    """(source path, frame index or None, time or None, image path or BGR frame) of every gallery image."""
    for source in list_gallery(gallery):
        source = os.path.abspath(source)
        if not is_video(source):
            yield source, None, None, source
            continue
        count = 0
        for index, time, frame in sample_video(source, sample_fps):
            count += 1
            yield source, index, time, frame
        logger.info("search: %d frames of %s taken (%s)", count, source,
                    "every frame" if sample_fps <= 0 else f"{sample_fps:g} per second")
