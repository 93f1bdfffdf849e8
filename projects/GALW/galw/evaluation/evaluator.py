"""``PersonSearchEvaluator``: search (CUHK-SYSU / PRW protocols), detection and attribute metrics."""
import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from .cbgm import SEQNET_CBGM, query_context
from .gallery_metrics import gallery_attribute_metrics, gallery_detection_metrics, gt_arrays
from .gallery_store import SearchGalleryStore
from .model_outputs import closest_query_records, count_unnormalised, instances_arrays, oracle_embeddings
from .protocol_search import search_protocols
from .query_galleries import PrwQueryGalleries, cuhk_query_galleries
from .search_json import write_search_json
from .search_metrics import box_iou

logger = logging.getLogger(__name__)

CUHK_PROTOCOLS = (
    "TestG50", "TestG100", "TestG500", "TestG1000", "TestG2000", "TestG4000",
    "Occlusion", "Resolution", "WholeGallery",
)
QUERY_FEATURES = ("gt_box", "best_iou_detection")


def _merged(parts):
    """One dict of the per-process dicts; a key output by several processes keeps the first value."""
    out = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, v)
    return out


class PersonSearchEvaluator(DatasetEvaluator):
    """Feed it the outputs of a gallery pass and a query pass (see ``inference_person_search``).

    Per-process outputs are gathered and all metrics are computed once on the main process, in
    gallery-record order, so 1 and N processes give identical numbers. Returns
    ``{"search": {...}, "search_<protocol>": {...}, "detection": {...}[, "attributes": {...}]}``
    (percent) and writes ``<output_dir>/search_<dataset>.json`` with per-query results of the
    default protocol.
    """

    @configurable
    def __init__(
        self,
        dataset_name,
        *,
        output_dir=None,
        search_score_thresh=0.5,
        detection_score_thresh=0.01,
        detection_iou_thresh=0.5,
        query_feature="gt_box",
        cuhk_gallery_size=100,
        cuhk_protocols=CUHK_PROTOCOLS,
        prw_multi_view=True,
        query_batch_size=256,
        attribute_thresh=0.5,
        cbgm=False,
        cbgm_top_detections=0,
        cbgm_context=0,
        gt_box_oracle=False,
        prw_same_camera=False,
        distributed=True,
    ):
        """
        Args:
            dataset_name: the registered GALLERY dataset; its metadata names the query set.
            search_score_thresh: gallery detections used for search have score >= this.
            detection_score_thresh: detections scored for detection AP / recall.
            query_feature: "gt_box" (the model's embedding of the query box) or
                "best_iou_detection" (the query-image detection with the highest IoU to it).
            cuhk_gallery_size: the TestG size reported as "search" on CUHK-SYSU.
            cuhk_protocols: further CUHK-SYSU protocols reported as "search_<name>".
            prw_multi_view: also report PRW's cross-camera setting as "search_MultiView".
            query_batch_size: queries per similarity matrix product (memory vs speed).
            cbgm: also report the default protocol with SeqNet's CBGM re-scoring as "search_CBGM"
                (needs the query images' detections, ``instances``, in the query outputs).
            cbgm_top_detections, cbgm_context: CBGM's k1 (gallery images of the k1 most similar
                detections are re-scored) and k2 (the query person and k2 - 1 other people of the
                query image); 0 = SeqNet's values (10, 3 on CUHK-SYSU; 30, 4 on PRW).
            gt_box_oracle: also report the default protocol searched over the ground-truth gallery
                boxes, embedded by the model (gallery outputs' ``oracle_embeddings``), as
                "search_GTOracle": the re-id upper bound without detection errors.
            prw_same_camera: also report PRW's same-camera setting (gallery = the other frames of
                the query's camera) as "search_SameCamera".
        """
        if query_feature not in QUERY_FEATURES:
            raise ValueError(f"query_feature must be one of {QUERY_FEATURES}, got {query_feature!r}.")
        unknown = [p for p in cuhk_protocols if p not in CUHK_PROTOCOLS]
        if unknown:
            raise ValueError(f"Unknown CUHK-SYSU protocols {unknown}; known: {CUHK_PROTOCOLS}.")
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._search_thresh = float(search_score_thresh)
        self._det_thresh = float(detection_score_thresh)
        self._det_iou = float(detection_iou_thresh)
        self._query_feature = query_feature
        self._default_protocol = f"TestG{int(cuhk_gallery_size)}"
        self._cuhk_protocols = tuple(cuhk_protocols)
        self._prw_multi_view = bool(prw_multi_view)
        self._batch = int(query_batch_size)
        self._attr_thresh = float(attribute_thresh)
        self._cbgm = bool(cbgm)
        self._gt_oracle = bool(gt_box_oracle)
        self._prw_same_camera = bool(prw_same_camera)
        self._distributed = distributed

        # Loading a registered split replaces its Metadata object (galw.data sets the file-derived
        # fields anew), so the records are loaded first and the metadata looked up afterwards.
        self._type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if self._type not in ("cuhk_sysu", "prw"):
            raise ValueError(
                f"MetadataCatalog['{dataset_name}'].evaluator_type must be 'cuhk_sysu' or 'prw', got {self._type!r}."
            )
        query_set = MetadataCatalog.get(dataset_name).get("query_set", None)
        if query_set is None:
            raise ValueError(f"MetadataCatalog['{dataset_name}'] has no 'query_set'.")
        self._query_set = query_set
        self._gallery_records = DatasetCatalog.get(dataset_name)
        self._query_records = DatasetCatalog.get(query_set)
        self._meta = MetadataCatalog.get(dataset_name)
        self._gallery_index = {}
        for i, r in enumerate(self._gallery_records):
            base = os.path.basename(r["file_name"])
            if base in self._gallery_index:
                raise ValueError(f"Gallery '{dataset_name}': image name {base} occurs twice.")
            self._gallery_index[base] = i
        self._query_index = {}  # (file_name, person_id) -> record indices (PRW repeats some with other boxes)
        for i, r in enumerate(self._query_records):
            if "query" not in r:
                raise ValueError(f"Query set '{query_set}': record {i} ({r.get('file_name')}) has no 'query'.")
            self._query_index.setdefault((r["file_name"], int(r["query"]["person_id"])), []).append(i)
        k1, k2 = SEQNET_CBGM[self._type]
        self._cbgm_top = int(cbgm_top_detections) or k1
        self._cbgm_context = int(cbgm_context) or k2
        if self._cbgm_top < 1 or self._cbgm_context < 1:
            raise ValueError(f"CBGM needs cbgm_top_detections >= 1 and cbgm_context >= 1 (0 = SeqNet's), got "
                             f"{cbgm_top_detections} and {cbgm_context}.")
        if self._type == "cuhk_sysu":
            protocols = self._meta.get("gallery_protocols", None)
            if protocols is None or self._default_protocol not in protocols:
                raise ValueError(
                    f"MetadataCatalog['{dataset_name}'].gallery_protocols lacks the default protocol "
                    f"{self._default_protocol}."
                )

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None):
        ps = cfg.TEST.PERSON_SEARCH
        return {
            "dataset_name": dataset_name,
            "output_dir": output_dir or os.path.join(cfg.OUTPUT_DIR, "inference"),
            "search_score_thresh": ps.SEARCH_SCORE_THRESH,
            "detection_score_thresh": ps.DETECTION_SCORE_THRESH,
            "detection_iou_thresh": ps.DETECTION_IOU_THRESH,
            "query_feature": ps.QUERY_FEATURE,
            "cuhk_gallery_size": ps.CUHK_GALLERY_SIZE,
            "cuhk_protocols": tuple(ps.CUHK_PROTOCOLS),
            "prw_multi_view": ps.PRW_MULTI_VIEW,
            "query_batch_size": ps.QUERY_BATCH_SIZE,
            "attribute_thresh": ps.ATTRIBUTE_THRESH,
            "cbgm": ps.CBGM,
            "cbgm_top_detections": ps.CBGM_TOP_DETECTIONS,
            "cbgm_context": ps.CBGM_CONTEXT,
            "gt_box_oracle": ps.GT_BOX_ORACLE,
            "prw_same_camera": ps.PRW_SAME_CAMERA,
        }

    @property
    def timings(self):
        """Wall-clock seconds per stage of the last ``evaluate()``: detection, similarity, each protocol."""
        return dict(self._timings)

    @property
    def cpu_timings(self):
        """Process CPU seconds per stage of the last ``evaluate()`` (all threads; same keys as ``timings``)."""
        return dict(self._cpu_timings)

    # ------------------------------------------------------------------ collection
    def reset(self):
        self._gallery = {}
        self._queries = {}
        self._contexts = {}
        self._dim = None
        self._counts = {"unnormalised_embeddings": 0, "query_fallback_to_gt": 0, "duplicate_outputs": 0}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "query_instances" in inp:
                self._process_query(inp, out)
            else:
                self._process_gallery(inp, out)

    def _check_dim(self, dim, name):
        if self._dim is None:
            self._dim = dim
        elif dim != self._dim:
            raise ValueError(f"Embedding dimension {dim} for image {name} differs from the earlier {self._dim}.")

    def _process_gallery(self, inp, out):
        boxes, scores, emb, attr = instances_arrays(inp, out, "gallery")
        name = os.path.basename(inp["file_name"])
        if name not in self._gallery_index:
            raise ValueError(f"Gallery image {inp['file_name']} is not a record of '{self._dataset_name}'.")
        if name in self._gallery:
            self._counts["duplicate_outputs"] += 1
            return
        if len(emb):
            self._check_dim(emb.shape[1], name)
        det = scores >= self._det_thresh
        srch = scores >= self._search_thresh
        self._counts["unnormalised_embeddings"] += count_unnormalised(emb[srch])
        self._gallery[name] = {
            "det_boxes": boxes[det],
            "det_scores": scores[det],
            "det_attr": None if attr is None else attr[det],
            "search_boxes": boxes[srch],
            "search_emb": emb[srch],
        }
        if self._gt_oracle:
            self._gallery[name]["oracle_emb"] = self._oracle_embeddings(inp, out, name)

    def _oracle_embeddings(self, inp, out, name):
        num_gt = len(self._gallery_records[self._gallery_index[name]].get("annotations", []))
        emb = oracle_embeddings(inp, out, num_gt)
        if num_gt:
            self._check_dim(emb.shape[1], name)
        return emb

    def _process_query(self, inp, out):
        name = inp.get("file_name", "?")
        qi = inp["query_instances"]
        if len(qi) != 1:
            raise ValueError(f"Query input {name}: query_instances must hold exactly one box, got {len(qi)}.")
        key = (inp["file_name"], int(qi.gt_pids[0]))
        if key not in self._query_index:
            raise ValueError(f"Query input {key} is not a record of '{self._query_set}'.")
        indices = self._query_index[key]
        if len(indices) > 1:
            indices = closest_query_records(inp, qi, indices, self._query_records)
        if all(i in self._queries for i in indices):
            self._counts["duplicate_outputs"] += 1
            return
        index = indices[0]
        emb = None
        if self._query_feature == "best_iou_detection":
            boxes, _, dets, _ = instances_arrays(inp, out, "query")
            if len(boxes):
                qbox = self._query_records[index]["query"]["bbox"]
                emb = dets[int(np.argmax(box_iou(boxes, qbox)))]
            else:
                self._counts["query_fallback_to_gt"] += 1
        if emb is None:
            if "query_embedding" not in out:
                raise ValueError(f"Model output for query image {name} has no 'query_embedding'.")
            emb = out["query_embedding"].detach().float().cpu().numpy().reshape(-1)
        if not np.isfinite(emb).all():
            raise ValueError(f"Model output for query image {name}: query embedding contains NaN or inf.")
        self._check_dim(emb.shape[0], name)
        self._counts["unnormalised_embeddings"] += count_unnormalised(emb[None])
        for i in indices:
            self._queries[i] = emb
        if self._cbgm:
            boxes, scores, dets, _ = instances_arrays(inp, out, "query")
            for i in indices:
                qbox = self._query_records[i]["query"]["bbox"]
                self._contexts[i] = query_context(qbox, boxes, scores, dets, self._cbgm_context - 1)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self):
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            galleries = comm.gather(self._gallery, dst=0)
            queries = comm.gather(self._queries, dst=0)
            contexts = comm.gather(self._contexts, dst=0)
            counts = comm.gather(self._counts, dst=0)
            if not comm.is_main_process():
                return {}
        else:
            galleries, queries, contexts, counts = [self._gallery], [self._queries], [self._contexts], [self._counts]
        gallery, query_embs, query_contexts = _merged(galleries), _merged(queries), _merged(contexts)
        totals = {k: sum(c[k] for c in counts) for k in counts[0]}
        totals["duplicate_outputs"] += sum(len(p) for p in galleries) - len(gallery)
        totals["duplicate_outputs"] += sum(len(p) for p in queries) - len(query_embs)
        for k, v in totals.items():
            if v:
                logger.warning(f"Person-search evaluation on {self._dataset_name}: {k} = {v}.")
        return self.compute(gallery, query_embs, query_contexts)

    def compute(self, gallery, query_embs, query_contexts=None):
        """All metrics from merged outputs: {image basename: arrays}, {query index: embedding} and,
        for CBGM, {query index: [C, D] embeddings of the other people in the query image}."""
        names = list(self._gallery_index)  # the records' basenames, in record order
        missing = [n for n in names if n not in gallery]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(self._gallery_records)} gallery images of '{self._dataset_name}' have no "
                f"model output (e.g. {missing[:3]}); run the gallery pass over the whole dataset."
            )
        dims = {v["search_emb"].shape[1] for v in gallery.values() if len(v["search_emb"])}
        dims |= {len(e) for e in query_embs.values()}
        if len(dims) > 1:
            raise ValueError(f"Embedding dimensions differ between processes/images: {sorted(dims)}.")
        dim = dims.pop() if dims else 1
        ordered = [gallery[n] for n in names]
        self._timings, self._cpu_timings = {}, {}
        with ThreadPoolExecutor(max_workers=1) as beside:  # detection AP beside the search (numpy frees the GIL)
            detection = beside.submit(self._timed, "detection", gallery_detection_metrics, self._gallery_records, ordered,
                                      self._det_iou)
            per_protocol, names, default, store = self._search_all(ordered, query_embs, query_contexts, dim)
            results = OrderedDict(detection=detection.result())
        attributes = gallery_attribute_metrics(self._gallery_records, ordered, self._det_iou, self._attr_thresh,
                                               self._meta.get("attribute_names", None), self._dataset_name)
        if attributes is not None:
            results["attributes"] = attributes
        default_queries = None
        for name in names:
            metrics, per_query = per_protocol[name]
            if name == default:
                results["search"] = metrics
                default_queries = per_query
            if name != "standard":
                results[f"search_{name}"] = metrics
        if self._output_dir and default_queries is not None:
            write_search_json(self._output_dir, self._dataset_name, results, default_queries, store,
                              self._query_records, self._gallery_records)
        return results

    def _timed(self, key, fn, *args):
        """``fn(*args)``, its wall and thread CPU seconds recorded under ``key``."""
        t0, c0 = time.perf_counter(), time.thread_time()
        out = fn(*args)
        self._timings[key], self._cpu_timings[key] = time.perf_counter() - t0, time.thread_time() - c0
        return out

    def _search_all(self, ordered, query_embs, query_contexts, dim):
        """(metrics and per-query results per protocol name, names in report order, the default name, the store)."""
        store = SearchGalleryStore([g["search_boxes"] for g in ordered], [g["search_emb"] for g in ordered], dim)
        if self._type == "cuhk_sysu":
            protocols = cuhk_query_galleries(self._meta.gallery_protocols, self._cuhk_protocols, self._default_protocol,
                                             self._gallery_index, self._query_set, len(self._query_records))
            names = [self._default_protocol] + [p for p in self._cuhk_protocols if p != self._default_protocol]
            default = self._default_protocol
        else:
            modes = {"standard": "standard", "MultiView": "multi_view", "SameCamera": "same_camera"}
            wanted = ["standard"] + ["MultiView"] * self._prw_multi_view + ["SameCamera"] * self._prw_same_camera
            protocols = {n: PrwQueryGalleries(self._gallery_records, self._query_records, self._gallery_index, modes[n])
                         for n in wanted}
            names = list(protocols)
            default = "standard"
        names = [n for n in names if n in protocols]
        if self._cbgm:
            protocols["CBGM"] = protocols[default]
            names.append("CBGM")
        per_protocol = self._search({n: protocols[n] for n in names}, store, query_embs, default, query_contexts)
        if self._gt_oracle:
            boxes = [gt_arrays(r)[0] for r in self._gallery_records]
            oracle = SearchGalleryStore(boxes, [g["oracle_emb"] for g in ordered], dim)
            per_protocol.update(self._search({"GTOracle": protocols[default]}, oracle, query_embs, None))
            names.append("GTOracle")
        return per_protocol, names, default, store

    def _search(self, protocols, store, query_embs, default, query_contexts=None):
        """``search_protocols`` with this evaluator's options, its stage times added to ``timings``."""
        return search_protocols(protocols, store, query_embs, default, query_contexts=query_contexts,
                                cbgm_top=self._cbgm_top, batch_size=self._batch, timings=self._timings,
                                cpu_timings=self._cpu_timings, query_set=self._query_set,
                                dataset_name=self._dataset_name)
