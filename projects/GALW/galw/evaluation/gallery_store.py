"""All kept gallery detections of a dataset, concatenated once so a query's gallery is an index array."""
import numpy as np

from ..data.protocol_table import concatenated_ranges


class SearchGalleryStore:
    """Detections with score >= the search threshold of every gallery image, in record order.

    Image ``i`` owns rows ``starts[i] : starts[i] + counts[i]`` of ``boxes`` and ``embeddings``,
    so a gallery (a list of image indices) becomes detection indices without copying features.
    """

    def __init__(self, boxes_per_image, embeddings_per_image, dim):
        self.counts = np.array([len(b) for b in boxes_per_image], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        total = int(self.counts.sum())
        # images without detections left out (their empty arrays may have any shape), the others as they are
        self.boxes = (
            np.concatenate([b for b in boxes_per_image if len(b)]).astype(np.float32, copy=False).reshape(-1, 4)
            if total
            else np.zeros((0, 4), np.float32)
        )
        self.embeddings = (
            np.concatenate([e for e in embeddings_per_image if len(e)]).astype(np.float32, copy=False)
            if total
            else np.zeros((0, dim), np.float32)
        )

    @property
    def image_of(self):
        """[num detections] the image index of every detection."""
        if getattr(self, "_image_of", None) is None:
            self._image_of = np.repeat(np.arange(len(self.counts), dtype=np.int64), self.counts)
        return self._image_of

    @property
    def num_images(self):
        return len(self.counts)

    def detection_indices(self, images):
        """(detection indices of ``images`` in that order, offset of each image inside them)."""
        images = np.asarray(images, dtype=np.int64)
        counts = self.counts[images]
        offsets = np.cumsum(counts) - counts
        return concatenated_ranges(self.starts[images], counts), offsets
