"""Reading one model output of the evaluation passes into checked numpy arrays (gallery and query)."""
import numpy as np

GALLERY_FIELDS = ("pred_boxes", "scores", "embeddings")


def instances_arrays(inp, out, role):
    """(boxes [N,4], scores [N], embeddings [N,D], attribute probabilities [N,A] or None) of an
    output's ``instances``; ``role`` ("gallery" / "query") names the pass in errors."""
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


def count_unnormalised(emb):
    """Embeddings longer than unit norm (a model that forgot to normalise); shorter ones are legal:
    score-weighted gallery embeddings (NAE's CWS) have norm = detection score."""
    if not len(emb):
        return 0
    return int((np.linalg.norm(emb, axis=1) > 1.0 + 1e-3).sum())


def oracle_embeddings(inp, out, num_gt):
    """[num_gt, D] the model's embeddings of a gallery record's GT boxes, in annotation order."""
    if "oracle_embeddings" not in out:
        raise ValueError(f"Model output for gallery image {inp['file_name']} has no 'oracle_embeddings' "
                         "(gt_box_oracle needs the GT boxes embedded: oracle_instances in the input).")
    emb = out["oracle_embeddings"].detach().float().cpu().numpy()
    if emb.ndim != 2 or len(emb) != num_gt or not np.isfinite(emb).all():
        raise ValueError(f"Model output for gallery image {inp['file_name']}: 'oracle_embeddings' "
                         f"{tuple(emb.shape)} must be finite [{num_gt}, D], one per GT box of the record.")
    return emb


def closest_query_records(inp, qi, indices, query_records):
    """The records (of one image and person) whose box, scaled to the input, is nearest the input's box.

    Several when their boxes are equal: they are the same query and share the output.
    """
    h, w = qi.image_size
    scale = np.array([w / inp["width"], h / inp["height"]] * 2)
    given = qi.gt_boxes.tensor[0].detach().cpu().double().numpy()
    dist = [float(np.abs(np.asarray(query_records[i]["query"]["bbox"]) * scale - given).sum()) for i in indices]
    return [i for i, d in zip(indices, dist) if d == min(dist)]
