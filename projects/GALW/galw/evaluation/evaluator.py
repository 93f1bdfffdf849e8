"""``PersonSearchEvaluator``: search (CUHK-SYSU / PRW protocols), detection and attribute metrics."""
import json
import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .attribute_metrics import evaluate_attributes
from .cbgm import SEQNET_CBGM, cbgm_rescore, query_context
from .detection_metrics import evaluate_detection_arrays, mutual_argmax_matches
from .gallery_store import SearchGalleryStore
from .gallery_similarity import full_product, layout_similarities, prefers_full_product
from .query_galleries import CuhkQueryGalleries, PrwQueryGalleries
from .search_metrics import (TOPK, GalleryLayout, SimilarityHistogram, box_iou, evaluate_layout, evaluate_query,
                             pick_positives)

logger = logging.getLogger(__name__)

CUHK_PROTOCOLS = (
    "TestG50", "TestG100", "TestG500", "TestG1000", "TestG2000", "TestG4000",
    "Occlusion", "Resolution", "WholeGallery",
)
QUERY_FEATURES = ("gt_box", "best_iou_detection")
GALLERY_FIELDS = ("pred_boxes", "scores", "embeddings")
#: Gallery detections laid out per chunk of queries (memory vs the per-call overhead; same results).
LAYOUT_ENTRIES = 2_000_000
#: Mean gallery detections per query above which a protocol that needs every entry (the default one:
#: top-10 lists and histogram; CBGM) is scored query by query from the full product (same results):
#: measured, PRW's ~40k per query take half the time that way (one query's arrays fill the caches).
LARGE_GALLERY = 20000


def _image_maxima(sims, store):
    """[images, queries] the highest similarity of each image's detections (-inf for an image without
    any): one in-place maximum per detection rank over the images that have that many, kept sorted
    by detection count so each step is a contiguous slice."""
    by_count = np.argsort(-store.counts, kind="stable")
    ranked, starts = store.counts[by_count], store.starts[by_count]
    ordered = np.full((store.num_images, sims.shape[1]), -np.inf, dtype=np.float32)
    for k in range(int(ranked.max(initial=0))):
        m = int(np.count_nonzero(ranked > k))
        np.maximum(ordered[:m], sims[starts[:m] + k], out=ordered[:m])
    out = np.empty_like(ordered)
    out[by_count] = ordered
    return out


def _pairs_that_can_rank(batch, rows, sims, image_max, store):
    """[pairs] the gallery images that can matter for AP and top-k: the positive ones, and those with
    a detection scoring at least the query's lowest matched positive (picked as ``evaluate_layout``
    picks them); an entry below it is never counted (AP) or ranked above a positive (top-k)."""
    nq = len(batch.n_img)
    pair_start = np.cumsum(batch.n_img) - batch.n_img
    pair = pair_start[batch.pos_query] + batch.pos_list
    pimg = batch.images[pair]
    counts = store.counts[pimg]
    dets = np.repeat(store.starts[pimg] - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
    groups = np.repeat(np.arange(len(pair)), counts)
    scores = sims[dets, rows[batch.pos_query][groups]]
    chosen = pick_positives(scores, store.boxes[dets], groups, batch.pos_box)
    hit = chosen >= 0
    floor = np.full(nq, np.inf, dtype=np.float32)
    np.minimum.at(floor, batch.pos_query[hit], scores[chosen[hit]])
    q_of = np.repeat(np.arange(nq), batch.n_img)
    keep = image_max[batch.images, rows[q_of]] >= floor[q_of]
    keep[pair] = True
    return keep


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

    def _instances_arrays(self, inp, out, role):
        name = inp.get("file_name", "?")
        if "instances" not in out:
            raise ValueError(f"Model output for {role} image {name} has no 'instances'.")
        inst = out["instances"].to("cpu")
        for f in GALLERY_FIELDS:
            if not inst.has(f):
                raise ValueError(f"Model output for {role} image {name}: instances lack field '{f}'.")
        boxes = inst.pred_boxes.tensor.float().numpy()
        scores = inst.scores.float().numpy()
        emb = inst.embeddings.float().numpy()
        if emb.ndim != 2 or len(emb) != len(boxes) or len(scores) != len(boxes):
            raise ValueError(
                f"Model output for {role} image {name}: embeddings {tuple(emb.shape)}, scores {tuple(scores.shape)} "
                f"and boxes {tuple(boxes.shape)} must be [N,D], [N], [N,4]."
            )
        for field, arr in (("pred_boxes", boxes), ("scores", scores), ("embeddings", emb)):
            if not np.isfinite(arr).all():
                raise ValueError(f"Model output for {role} image {name}: '{field}' contains NaN or inf.")
        attr = None
        if inst.has("attribute_probs"):
            attr = inst.attribute_probs.float().numpy()
            if len(attr) != len(boxes) or not np.isfinite(attr).all():
                raise ValueError(f"Model output for {role} image {name}: bad 'attribute_probs' {tuple(attr.shape)}.")
        return boxes, scores, emb, attr

    def _check_dim(self, dim, name):
        if self._dim is None:
            self._dim = dim
        elif dim != self._dim:
            raise ValueError(f"Embedding dimension {dim} for image {name} differs from the earlier {self._dim}.")

    def _count_unnormalised(self, emb):
        """Embeddings longer than unit norm (a model that forgot to normalise); shorter ones are legal:
        score-weighted gallery embeddings (NAE's CWS) have norm = detection score."""
        if len(emb):
            self._counts["unnormalised_embeddings"] += int((np.linalg.norm(emb, axis=1) > 1.0 + 1e-3).sum())

    def _process_gallery(self, inp, out):
        boxes, scores, emb, attr = self._instances_arrays(inp, out, "gallery")
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
        self._count_unnormalised(emb[srch])
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
        """The model's embeddings of the record's GT boxes, in annotation order."""
        num_gt = len(self._gallery_records[self._gallery_index[name]].get("annotations", []))
        if "oracle_embeddings" not in out:
            raise ValueError(f"Model output for gallery image {inp['file_name']} has no 'oracle_embeddings' "
                             "(gt_box_oracle needs the GT boxes embedded: oracle_instances in the input).")
        emb = out["oracle_embeddings"].detach().float().cpu().numpy()
        if emb.ndim != 2 or len(emb) != num_gt or not np.isfinite(emb).all():
            raise ValueError(f"Model output for gallery image {inp['file_name']}: 'oracle_embeddings' "
                             f"{tuple(emb.shape)} must be finite [{num_gt}, D], one per GT box of the record.")
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
            indices = self._closest_query_records(inp, qi, indices)
        if all(i in self._queries for i in indices):
            self._counts["duplicate_outputs"] += 1
            return
        index = indices[0]
        emb = None
        if self._query_feature == "best_iou_detection":
            boxes, _, dets, _ = self._instances_arrays(inp, out, "query")
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
        self._count_unnormalised(emb[None])
        for i in indices:
            self._queries[i] = emb
        if self._cbgm:
            boxes, scores, dets, _ = self._instances_arrays(inp, out, "query")
            for i in indices:
                qbox = self._query_records[i]["query"]["bbox"]
                self._contexts[i] = query_context(qbox, boxes, scores, dets, self._cbgm_context - 1)

    def _closest_query_records(self, inp, qi, indices):
        """The records (of one image and person) whose box, scaled to the input, is nearest the input's box.

        Several when their boxes are equal: they are the same query and share the output.
        """
        h, w = qi.image_size
        scale = np.array([w / inp["width"], h / inp["height"]] * 2)
        given = qi.gt_boxes.tensor[0].detach().cpu().double().numpy()
        dist = [float(np.abs(np.asarray(self._query_records[i]["query"]["bbox"]) * scale - given).sum()) for i in indices]
        return [i for i, d in zip(indices, dist) if d == min(dist)]

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
        gallery, query_embs = {}, {}
        for part in galleries:
            for k, v in part.items():
                gallery.setdefault(k, v)
        for part in queries:
            for k, v in part.items():
                query_embs.setdefault(k, v)
        query_contexts = {}
        for part in contexts:
            for k, v in part.items():
                query_contexts.setdefault(k, v)
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
            detection = beside.submit(self._timed, "detection", self._detection_metrics, ordered)
            per_protocol, names, default, store = self._search_all(ordered, query_embs, query_contexts, dim)
            results = OrderedDict(detection=detection.result())
        attributes = self._attribute_metrics(ordered)
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
        self._write_json(results, default_queries, store)
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
            protocols = self._cuhk_query_galleries()
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
            boxes = [self._gt(r)[0] for r in self._gallery_records]
            oracle = SearchGalleryStore(boxes, [g["oracle_emb"] for g in ordered], dim)
            per_protocol.update(self._search({"GTOracle": protocols[default]}, oracle, query_embs, None))
            names.append("GTOracle")
        return per_protocol, names, default, store

    # -- protocols: name -> CuhkQueryGalleries / PrwQueryGalleries
    def _cuhk_query_galleries(self):
        raw = self._meta.gallery_protocols
        protocols = {}
        for name in dict.fromkeys([self._default_protocol, *self._cuhk_protocols]):
            source = "TestG50" if name == "WholeGallery" else name
            if source not in raw:
                logger.warning(f"CUHK-SYSU protocol {name} is not in the gallery metadata; not reported.")
                continue
            try:  # galw.data parses a protocol file on first access
                protocols[name] = CuhkQueryGalleries(raw[source], self._gallery_index, self._query_set,
                                                     len(self._query_records), source, name == "WholeGallery")
            except FileNotFoundError as e:
                if name == self._default_protocol:
                    raise
                logger.warning(f"CUHK-SYSU protocol {name} skipped: {e}")
        return protocols

    def _query_chunks(self, queries, entries_per_query):
        """``queries`` in chunks whose gallery layouts hold about ``LAYOUT_ENTRIES`` detections."""
        size = max(1, int(LAYOUT_ENTRIES // max(entries_per_query, 1.0)))
        return [queries[i : i + size] for i in range(0, len(queries), size)]

    def _search(self, protocols, store, query_embs, default, query_contexts=None):
        """Metrics of every protocol (name -> its query galleries).

        Small galleries are scored from per-image products (``layout_similarities``); large ones
        from rows of the full product, computed once per batch of queries and shared by all of
        them. The protocol named "CBGM" is re-scored with CBGM (``query_contexts``) before it is ranked.
        """
        queries = np.array(sorted(set().union(*[set(p.queries.tolist()) for p in protocols.values()])), np.int64)
        missing = [q for q in queries.tolist() if q not in query_embs]
        if missing:
            raise ValueError(
                f"{len(missing)} queries of '{self._query_set}' (e.g. {missing[:5]}) have no model output; "
                "run the query pass over all queries."
            )
        if "CBGM" in protocols:
            missing = [q for q in queries.tolist() if q not in (query_contexts or {})]
            if missing:
                raise ValueError(f"CBGM: {len(missing)} queries (e.g. {missing[:5]}) have no query-image detections; "
                                 "the query outputs need 'instances'.")
        row_of = np.full(int(queries.max(initial=-1)) + 1, -1, dtype=np.int64)
        row_of[queries] = np.arange(len(queries))
        embs = np.stack([query_embs[q] for q in queries.tolist()]).astype(np.float32) if len(queries) else None
        per_query = {name: [] for name in protocols}
        skipped = {name: [] for name in protocols}
        duplicates = dict.fromkeys(protocols, 0)
        histogram = SimilarityHistogram()
        for key in ["similarity", *protocols]:
            self._timings.setdefault(key, 0.0)
            self._cpu_timings.setdefault(key, 0.0)
        dets_per_image = float(store.counts.mean()) if store.num_images else 0.0
        entries = {name: g.mean_gallery_length() * dets_per_image for name, g in protocols.items()}
        # One protocol with large galleries makes the full product worth computing; then all read it.
        any_large = any(prefers_full_product(e, len(store.embeddings)) for e in entries.values())
        full = list(protocols) if any_large else []

        def score(name, batch, layout, y):
            if name == "CBGM":
                ends = np.cumsum(np.bincount(layout.q_of, minlength=layout.num_queries)).tolist()
                for qi, a, b in zip(batch.queries.tolist(), [0, *ends[:-1]], ends):
                    y[a:b] = cbgm_rescore(y[a:b], layout.det_idx[a:b], query_embs[qi], query_contexts[qi], store,
                                          self._cbgm_top)
            results = evaluate_layout(y, layout, batch.pos_query, batch.pos_list, batch.pos_box, store,
                                      want_top=name == default, histogram=histogram if name == default else None)
            per_query[name].extend(zip(batch.queries.tolist(), results))
            skipped[name].extend(batch.skipped)
            duplicates[name] += batch.duplicates

        def one_by_one(name, batch, sims, rows):  # sims: [queries, detections]
            pair_start = np.cumsum(batch.n_img) - batch.n_img
            for i, qi in enumerate(batch.queries.tolist()):
                imgs = batch.images[pair_start[i]:pair_start[i] + batch.n_img[i]]
                det_idx, offsets = store.detection_indices(imgs)
                row = sims[rows[i]]
                if name == "CBGM":
                    row = row.copy()
                    row[det_idx] = cbgm_rescore(row[det_idx], det_idx, query_embs[qi], query_contexts[qi], store,
                                                self._cbgm_top)
                mine = np.flatnonzero(batch.pos_query == i)
                pos = list(zip(batch.pos_list[mine].tolist(), imgs[batch.pos_list[mine]].tolist(), batch.pos_box[mine]))
                res = evaluate_query(row, det_idx, offsets, pos, store, want_top=name == default)
                if name == default:
                    histogram.add(row[det_idx], res.positive_scores)
                per_query[name].append((qi, res))
            skipped[name].extend(batch.skipped)
            duplicates[name] += batch.duplicates

        for name, g in protocols.items():
            if name in full:
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            for chunk in self._query_chunks(g.queries, entries[name]):
                batch = g.batch(chunk)
                layout = GalleryLayout.build(batch.images, batch.n_img, store)
                score(name, batch, layout, layout_similarities(embs[row_of[batch.queries]], layout, store,
                                                               workers=torch.get_num_threads()))
            self._timings[name] += time.perf_counter() - t0
            self._cpu_timings[name] += time.process_time() - c0
        for b in range(0, len(queries) if full else 0, self._batch):
            rows = np.arange(b, min(b + self._batch, len(queries)))
            t0, c0 = time.perf_counter(), time.process_time()
            sims = full_product(embs[rows], store)
            self._timings["similarity"] += time.perf_counter() - t0
            self._cpu_timings["similarity"] += time.process_time() - c0
            image_max = by_query = None
            for name in full:
                t0, c0 = time.perf_counter(), time.process_time()
                g = protocols[name]
                mine = queries[rows][np.isin(queries[rows], g.queries)]
                for chunk in self._query_chunks(mine, entries[name]):
                    batch = g.batch(chunk)
                    batch_rows = row_of[batch.queries] - b
                    if name != default and name != "CBGM":  # no top-10 list, histogram or re-scoring
                        if image_max is None:
                            image_max = _image_maxima(sims, store)
                        batch = batch.keep_pairs(_pairs_that_can_rank(batch, batch_rows, sims, image_max, store))
                    elif entries[name] > LARGE_GALLERY:
                        if by_query is None:
                            # one query's similarities contiguous; torch's transposing copy is ~2x numpy's
                            by_query = torch.from_numpy(sims).t().contiguous().numpy()
                        one_by_one(name, batch, by_query, batch_rows)
                        continue
                    layout = GalleryLayout.build(batch.images, batch.n_img, store)
                    y = sims[layout.det_idx, batch_rows[layout.q_of]]
                    score(name, batch, layout, y)
                self._timings[name] += time.perf_counter() - t0
                self._cpu_timings[name] += time.process_time() - c0
        for name, d in duplicates.items():
            if d:
                logger.warning(f"CUHK-SYSU {name}: {d} duplicate gallery entries skipped.")
        out = {}
        for name in protocols:
            if skipped[name]:
                logger.warning(
                    f"Person search {name} on {self._dataset_name}: {len(skipped[name])} queries have no positive "
                    f"in their gallery and are left out of mAP/top-k (first: {skipped[name][:5]})."
                )
            if not per_query[name]:
                raise ValueError(f"Person search {name} on {self._dataset_name}: no query has a positive in its gallery.")
            aps = np.array([r.ap for _, r in per_query[name]])
            hits = np.array([r.hits for _, r in per_query[name]], dtype=np.float64)
            metrics = {"mAP": 100.0 * float(aps.mean())}
            for j, k in enumerate(TOPK):
                metrics[f"top{k}"] = 100.0 * float(hits[:, j].mean())
            out[name] = (metrics, {"results": per_query[name], "skipped": skipped[name]})
        if default in out:
            out[default][1]["similarity_histogram"] = histogram.as_dict()
        return out

    # -- detection / attributes
    def _gt(self, record):
        annos = record.get("annotations", [])
        boxes = np.array([a["bbox"] for a in annos], dtype=np.float64).reshape(-1, 4)
        pids = np.array([int(a["person_id"]) for a in annos], dtype=np.int64)
        return boxes, pids

    def _detection_metrics(self, ordered):
        annos = [r.get("annotations", []) for r in self._gallery_records]
        gt_boxes = np.array([a["bbox"] for an in annos for a in an], dtype=np.float64).reshape(-1, 4)
        gt_pids = np.array([int(a["person_id"]) for an in annos for a in an], dtype=np.int64)
        gt_image = np.repeat(np.arange(len(annos)), [len(an) for an in annos])
        det_boxes = np.concatenate([np.zeros((0, 4))] + [g["det_boxes"] for g in ordered]).astype(np.float64)
        det_scores = np.concatenate([np.zeros(0)] + [g["det_scores"] for g in ordered]).astype(np.float64)
        det_image = np.repeat(np.arange(len(ordered)), [len(g["det_scores"]) for g in ordered])
        args = (det_boxes, det_scores, det_image, gt_boxes, gt_pids, gt_image, self._det_iou)
        full = evaluate_detection_arrays(*args)
        labeled = evaluate_detection_arrays(*args, labeled_only=True)
        return {"AP": 100.0 * full["AP"], "recall": 100.0 * full["recall"], "recall_labeled": 100.0 * labeled["recall"]}

    def _attribute_metrics(self, ordered):
        with_probs = [g["det_attr"] is not None for g in ordered]
        if not any(with_probs):
            return None
        if not all(with_probs):
            raise ValueError(f"Only {sum(with_probs)} of {len(ordered)} gallery outputs have 'attribute_probs'.")
        if not any("attributes" in a for r in self._gallery_records for a in r.get("annotations", [])):
            logger.info(f"'{self._dataset_name}' records carry no attributes: attribute metrics not computed.")
            return None
        probs, labels = [], []
        for r, g in zip(self._gallery_records, ordered):
            gt_boxes, _ = self._gt(r)
            match = mutual_argmax_matches(g["det_boxes"], gt_boxes, self._det_iou)
            annos = r.get("annotations", [])
            for d in np.nonzero(match >= 0)[0]:
                a = annos[match[d]]
                if "attributes" in a:
                    probs.append(g["det_attr"][d])
                    labels.append(a["attributes"])
        if not probs:  # e.g. an early or untrained model: its search metrics still count
            logger.warning(
                f"Attribute metrics not computed: none of the {sum(len(g['det_boxes']) for g in ordered)} "
                f"gallery detections of '{self._dataset_name}' matched an annotated gallery box."
            )
            return None
        num = len(labels[0])
        names = self._meta.get("attribute_names", None) or [f"attr{i}" for i in range(num)]
        return evaluate_attributes(np.stack(probs), np.array(labels), names, self._attr_thresh)

    # -- output
    def _write_json(self, results, default_queries, store):
        if not self._output_dir or default_queries is None:
            return
        img_of_det = np.repeat(np.arange(store.num_images), store.counts)
        queries = []
        for qi, res in default_queries["results"]:
            q = self._query_records[qi]
            queries.append({
                "query_image": q["file_name"],
                "query_box": [float(v) for v in q["query"]["bbox"]],
                "person_id": int(q["query"]["person_id"]),
                "ap": res.ap,
                "count_gt": res.count_gt,
                "top10": [{
                    "image": self._gallery_records[img_of_det[t["det"]]]["file_name"],
                    "box": [float(v) for v in store.boxes[t["det"]]],
                    "similarity": t["similarity"],
                    "correct": t["correct"],
                } for t in res.top],
            })
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, f"search_{self._dataset_name}.json")
        with PathManager.open(path, "w") as f:
            json.dump({
                "dataset": self._dataset_name,
                "metrics": results,
                "queries": queries,
                "queries_without_positives": [int(q) for q in default_queries["skipped"]],
                "similarity_histogram": default_queries["similarity_histogram"],
            }, f)
        logger.info(f"Per-query search results written to {path}")

