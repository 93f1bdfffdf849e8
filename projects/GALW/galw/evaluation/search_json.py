"""The per-query results file of an evaluation: ``<output_dir>/search_<dataset>.json``."""
import json
import logging
import os

import numpy as np
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)


def write_search_json(output_dir, dataset_name, results, default_queries, store, query_records, gallery_records):
    """Metrics, each query's AP and top-10 list under the default protocol, the queries without a
    positive and the similarity histogram; returns the path written."""
    img_of_det = np.repeat(np.arange(store.num_images), store.counts)
    queries = []
    for qi, res in default_queries["results"]:
        q = query_records[qi]
        queries.append({
            "query_image": q["file_name"],
            "query_box": [float(v) for v in q["query"]["bbox"]],
            "person_id": int(q["query"]["person_id"]),
            "ap": res.ap,
            "count_gt": res.count_gt,
            "top10": [{
                "image": gallery_records[img_of_det[t["det"]]]["file_name"],
                "box": [float(v) for v in store.boxes[t["det"]]],
                "similarity": t["similarity"],
                "correct": t["correct"],
            } for t in res.top],
        })
    PathManager.mkdirs(output_dir)
    path = os.path.join(output_dir, f"search_{dataset_name}.json")
    with PathManager.open(path, "w") as f:
        json.dump({
            "dataset": dataset_name,
            "metrics": results,
            "queries": queries,
            "queries_without_positives": [int(q) for q in default_queries["skipped"]],
            "similarity_histogram": default_queries["similarity_histogram"],
        }, f)
    logger.info(f"Per-query search results written to {path}")
    return path
