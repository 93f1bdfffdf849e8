"""Person search on your own images: index a gallery of images and videos with a trained model (or
its exported programs), then rank its people for a query box. ``tools/search.py`` is the command line."""
from .gallery import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_gallery, read_video_frame, starts_sample, timestamp
from .index import INDEX_FORMAT, build_index, load_index, save_index
from .models import (ExportedSearchModel, SearchModel, inference_resize_sizes, load_search_model,
                     model_source)
from .query import answer_query, rank

__all__ = [
    "ExportedSearchModel",
    "IMAGE_EXTENSIONS",
    "INDEX_FORMAT",
    "SearchModel",
    "VIDEO_EXTENSIONS",
    "answer_query",
    "build_index",
    "inference_resize_sizes",
    "list_gallery",
    "load_index",
    "load_search_model",
    "model_source",
    "rank",
    "read_video_frame",
    "save_index",
    "starts_sample",
    "timestamp",
]
