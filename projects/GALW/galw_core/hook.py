"""Algorithm 1 of the paper as a detectron2 hook: probe, group, switch to grouped weighting.

Phases (kept in the hook's state, hence in checkpoints, so ``--resume`` continues in place):

* ``probing``: Gamma per task is measured every PROBE_PERIOD iterations and averaged per
  epoch, with PROBE_WEIGHTING per task. When PROBE_EPOCHS epochs are recorded (or, with
  PROBE_EPOCHS = 0, when the training ends) the tasks are clustered (Eqs. 7-8) on rank 0,
  the groups broadcast and written to ``OUTPUT_DIR/galw_groups.json``. Then, in
  ``single_run`` mode, the weighting switches in place to WEIGHTING over the groups
  (sigmas reset to 1, their optimizer state cleared), phase ``grouped``; in ``two_phase``
  mode (the paper's first training) the phase becomes ``recorded`` and weighting is untouched.
* ``grouped``: WEIGHTING over the groups (from the clustering, GROUPS_FILE, or a fixed grouping).
"""
import json
import logging
import os
from typing import Dict, List, Optional

import torch

import detectron2.utils.comm as comm
from detectron2.config import configurable
from detectron2.engine.train_loop import HookBase
from detectron2.utils.events import get_event_storage

from . import grouping as G
from .config import GROUPINGS, MODES
from .files import atomic_write
from .probe import GradientProbe
from .validation import (check_choice, check_epoch_iters, check_galw_config, check_num_groups, check_probe_schedule,
                         load_groups_file)
from .weighting import LossWeighting

__all__ = ["GALWHook", "GROUPS_FILENAME", "fixed_groups_from_config"]

logger = logging.getLogger(__name__)

GROUPS_FILENAME = "galw_groups.json"


def fixed_groups_from_config(cfg, tasks) -> Optional[List[List[str]]]:
    """Groups known before training (GROUPS_FILE or a fixed GROUPING); None for GALW's clustering.

    Per-task grouping returns ``[[t] for t in tasks]``.
    """
    g = cfg.MODEL.GALW
    if g.GROUPS_FILE:
        return load_groups_file(g.GROUPS_FILE, tasks)
    check_choice("GROUPING", g.GROUPING, GROUPINGS)
    if g.GROUPING == "galw":
        return None
    if g.GROUPING == "per_task":
        return G.per_task_groups(tasks)
    if g.GROUPING == "all":
        return G.single_group(tasks)
    if g.GROUPING == "branch":
        return G.groups_by_prefix(tasks, g.BRANCH_PREFIXES)
    if g.GROUPING == "random":
        return G.random_groups(tasks, g.NUM_GROUPS, g.RANDOM_SEED)
    if not g.GROUPS:
        raise ValueError("MODEL.GALW.GROUPING is 'explicit' but MODEL.GALW.GROUPS is empty")
    return [list(x) for x in g.GROUPS]


class GALWHook(HookBase):
    """Drives the probe and the grouping of a GALW train step (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        weighting: LossWeighting,
        probe: GradientProbe,
        optimizer: torch.optim.Optimizer,
        output_dir: str,
        epoch_iters: int,
        fixed_groups: Optional[List[List[str]]] = None,
        mode: str = "two_phase",
        method: str = "rulwf",
        probe_method: str = "equal",
        num_groups: int = 4,
        linkage: str = "ward",
        probe_period: int = 100,
        probe_epochs: int = 0,
    ):
        check_choice("MODE", mode, MODES)
        if fixed_groups is None:
            # Only a probing run measures Gamma; fixed groups (e.g. the manual baseline) never probe.
            check_probe_schedule(mode, epoch_iters, probe_period, probe_epochs)
            check_num_groups(num_groups, len(weighting.tasks))
        else:
            check_epoch_iters(epoch_iters)
            weighting.configure(method, fixed_groups)
        self.weighting = weighting
        self.probe = probe
        self.optimizer = optimizer
        self.output_dir = output_dir
        self.epoch_iters = int(epoch_iters)
        self.fixed_groups = fixed_groups
        self.mode = mode
        self.method = method
        self.probe_method = probe_method
        self.num_groups = num_groups
        self.linkage = linkage
        self.probe_period = int(probe_period)
        self.probe_epochs = int(probe_epochs)
        # State (checkpointed).
        self.phase = "grouped" if fixed_groups is not None else "probing"
        self.groups: Optional[List[List[str]]] = fixed_groups
        self.gamma_history: Dict[str, List[float]] = {t: [] for t in weighting.tasks}
        self._epoch_sum = {t: 0.0 for t in weighting.tasks}
        self._epoch_count = 0
        self._epoch_rejected = 0  # probes not recorded (AMP-skipped step, non-finite Gamma)
        self.probes_rejected = 0
        self._retry_probe = False
        self.slopes: Dict[str, float] = {}
        self.s_star: Dict[str, float] = {}
        self.switch_iter: Optional[int] = None
        self._restored = False

    @classmethod
    def from_config(cls, cfg, trainer, epoch_iters: int):
        """``trainer``: a trainer whose ``_trainer`` (or itself) is a GALW train step."""
        check_galw_config(cfg, epoch_iters)
        step = getattr(trainer, "_trainer", trainer)
        g = cfg.MODEL.GALW
        return {
            "weighting": step.weighting,
            "probe": step.probe,
            "optimizer": step.optimizer,
            "output_dir": cfg.OUTPUT_DIR,
            "epoch_iters": epoch_iters,
            "fixed_groups": fixed_groups_from_config(cfg, step.weighting.tasks),
            "mode": g.MODE,
            "method": g.WEIGHTING,
            "probe_method": g.PROBE_WEIGHTING,
            "num_groups": g.NUM_GROUPS,
            "linkage": g.LINKAGE,
            "probe_period": g.PROBE_PERIOD,
            "probe_epochs": g.PROBE_EPOCHS,
        }

    # ------------------------------------------------------------------ hook API
    def before_train(self):
        if self._restored:
            logger.info("GALW: resumed in phase '%s' with groups %s", self.phase, self.groups)
            return
        if self.phase == "grouped":
            self.weighting.configure(self.method, self.groups)
            logger.info("GALW: %s weighting over fixed groups %s", self.method, self.groups)
            self._write_groups_file(self.trainer.iter)
        else:
            self.weighting.configure(self.probe_method, None)
            logger.info(
                "GALW: probing %d tasks every %d iterations, epoch = %d iterations (%s weighting meanwhile)",
                len(self.weighting.tasks), self.probe_period, self.epoch_iters, self.probe_method,
            )

    def before_step(self):
        due = self.trainer.iter % self.probe_period == 0 or self._retry_probe
        self.probe.due = self.phase == "probing" and due

    def after_step(self):
        it = self.trainer.iter
        if self.probe.due:
            self.probe.due = False
            self._record_probe(it)
        if self.phase == "probing" and (it + 1) % self.epoch_iters == 0:
            self._close_epoch()
            if self.probe_epochs > 0 and self._num_epochs() >= self.probe_epochs:
                self._finish_probing(it)

    def _record_probe(self, it: int):
        """Add the probe's Gamma to the epoch, unless it was rejected: then count, log, and probe
        again at the next iteration."""
        gammas = self.probe.last
        self._retry_probe = self.probe.rejected is not None
        if self._retry_probe:
            self._epoch_rejected += 1
            self.probes_rejected += 1
            logger.warning("GALW: probe at iteration %d not recorded: %s; probing again next iteration", it,
                           self.probe.rejected)
            if comm.is_main_process():
                get_event_storage().put_scalar("galw/probes_rejected", self.probes_rejected, smoothing_hint=False)
            return
        for t in self.weighting.tasks:
            self._epoch_sum[t] += gammas[t]
        self._epoch_count += 1
        if comm.is_main_process():
            get_event_storage().put_scalars(**{f"galw/gamma/{t}": v for t, v in gammas.items()}, smoothing_hint=False)

    def after_train(self):
        finished = self.trainer.iter >= self.trainer.max_iter  # train() leaves iter = max_iter on success
        if self.phase == "probing" and self.probe_epochs == 0 and finished:
            if self._epoch_count:
                logger.info(
                    "GALW: the last, incomplete epoch (%d probes) is left out of the history",
                    self._epoch_count,
                )
            self._finish_probing(self.trainer.iter)

    # ------------------------------------------------------------------ phases
    def _num_epochs(self) -> int:
        return len(next(iter(self.gamma_history.values())))

    def _close_epoch(self):
        rejected, self._epoch_rejected, self._retry_probe = self._epoch_rejected, 0, False
        if self._epoch_count == 0 and rejected:
            epoch = self.trainer.iter // self.epoch_iters
            raise FloatingPointError(
                f"GALW: epoch {epoch} (iterations {epoch * self.epoch_iters}..{self.trainer.iter}) has no valid "
                f"Gamma: all its {rejected} probes were rejected (last: {self.probe.rejected}); under AMP, "
                "losses overflow float16 on every iteration of the epoch"
            )
        if self._epoch_count == 0:  # e.g. a run started mid-epoch: nothing measured
            logger.warning(
                "GALW: no Gamma measured in the epoch ending at iteration %d; left out",
                self.trainer.iter,
            )
            return
        for t in self.weighting.tasks:
            self.gamma_history[t].append(self._epoch_sum[t] / self._epoch_count)
            self._epoch_sum[t] = 0.0
        self._epoch_count = 0

    def _finish_probing(self, it: int):
        """Cluster on rank 0, broadcast, write the groups file, switch (single_run) or stop probing."""
        result = None
        if comm.is_main_process():
            slopes, s_star = G.slopes_and_s_star(self.gamma_history)
            result = (G.cluster_s_star(s_star, self.num_groups, self.linkage), slopes, s_star)
        result = comm.all_gather(result)[0]
        self.groups, self.slopes, self.s_star = [list(g) for g in result[0]], dict(result[1]), dict(result[2])
        logger.info("GALW: s* = %s -> groups %s", {t: round(v, 4) for t, v in self.s_star.items()}, self.groups)
        self._write_groups_file(it)
        if self.mode == "single_run":
            self._switch_to_groups(it + 1)
        else:
            self.phase = "recorded"

    def _switch_to_groups(self, next_iter: int):
        self.weighting.configure(self.method, self.groups)
        self.weighting.reset_sigmas()
        self.optimizer.state.pop(self.weighting.log_sigma, None)  # fresh momentum for new sigmas
        self.phase = "grouped"
        self.switch_iter = next_iter
        logger.info("GALW: from iteration %d, %s weighting over %d groups", next_iter, self.method, len(self.groups))

    def _write_groups_file(self, it: int):
        if not comm.is_main_process() or not self.output_dir:
            return
        data = {
            "groups": self.groups,
            "num_groups": len(self.groups),
            "linkage": self.linkage,
            "slopes": self.slopes,
            "s_star": self.s_star,
            "gamma_history": self.gamma_history,
            "iteration": int(it),
        }
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, GROUPS_FILENAME)
        atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()))
        logger.info("GALW: wrote %s", path)

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self):
        return {
            "phase": self.phase,
            "groups": self.groups,
            "gamma_history": self.gamma_history,
            "epoch_sum": self._epoch_sum,
            "epoch_count": self._epoch_count,
            "epoch_rejected": self._epoch_rejected,
            "probes_rejected": self.probes_rejected,
            "retry_probe": self._retry_probe,
            "slopes": self.slopes,
            "s_star": self.s_star,
            "switch_iter": self.switch_iter,
        }

    def load_state_dict(self, state):
        saved = state.get("groups")
        if saved is not None and self.fixed_groups is not None and saved != self.fixed_groups:
            logger.warning(
                "GALW: the checkpoint's groups %s replace the configured %s", saved, self.fixed_groups
            )
        self.phase = state["phase"]
        self.groups = state["groups"]
        self.gamma_history = {t: list(v) for t, v in state["gamma_history"].items()}
        self._epoch_sum = dict(state["epoch_sum"])
        self._epoch_count = int(state["epoch_count"])
        self._epoch_rejected = int(state.get("epoch_rejected", 0))
        self.probes_rejected = int(state.get("probes_rejected", 0))
        self._retry_probe = bool(state.get("retry_probe", False))
        self.slopes = dict(state["slopes"])
        self.s_star = dict(state["s_star"])
        self.switch_iter = state["switch_iter"]
        if self.phase == "grouped":
            self.weighting.configure(self.method, self.groups)
        else:
            self.weighting.configure(self.probe_method, None)
        self._restored = True

