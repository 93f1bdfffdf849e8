"""galw_train_step builds the GALW step by its real constructor on both detectron2 builds (v0.6:
``_data_loader_iter`` an attribute; main: a read-only property, ``gather_metric_period``): it
continues the inner step's running data iterator, shares model, optimizer and grad scaler, and
keeps the build's constructor options."""
import pytest
import torch
from detectron2.engine.train_loop import AMPTrainer, SimpleTrainer
from detectron2.utils.events import EventStorage

from galw_core import compat
from galw_core.toy import ToyMultiTask
from galw_core.solver import build_optimizer
from galw_core.train_step import GALWAMPTrainer, GALWSimpleTrainer, attach_weighting, galw_train_step
from galw_helpers import toy_cfg


class CountingLoader:
    """An iterable of numbered toy batches that counts the iterators made from it."""

    def __init__(self):
        self.iterators = 0
        self.served = []

    def __len__(self):
        return 1000

    def __iter__(self):
        self.iterators += 1
        return self._batches()

    def _batches(self):
        for i in range(1000):
            self.served.append(i)
            yield torch.full((2, 3, 16, 16), float(i) / 1000)


def _inner(cls, cfg, **kwargs):
    torch.manual_seed(0)
    model = attach_weighting(ToyMultiTask(epoch_iters=cfg.MODEL.GALW.EPOCH_ITERS), cfg)
    loader = CountingLoader()
    return cls(model, loader, build_optimizer(cfg, model), **kwargs), loader


def _options(cls):
    """Options only some builds have, set to non-defaults when this build has them."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {"gather_metric_period": 3} if "gather_metric_period" in params else {}


def _steps(step, n):
    with EventStorage(0) as storage:
        step.storage = storage
        for i in range(n):
            step.iter = storage.iter = i
            step.run_step()


def test_simple_step_continues_the_inner_iterator(tmp_path):
    cfg = toy_cfg(tmp_path)
    inner, loader = _inner(SimpleTrainer, cfg, **_options(SimpleTrainer))
    _steps(inner, 2)  # the inner step has consumed batches 0, 1
    step = galw_train_step(inner, cfg)
    assert type(step) is GALWSimpleTrainer
    assert step.model is inner.model and step.optimizer is inner.optimizer
    assert step.weighting is inner.model.galw_weighting and step.probe is not None
    for name, value in _options(SimpleTrainer).items():
        assert getattr(step, name) == value
    _steps(step, 3)
    assert loader.iterators == 1 and loader.served == [0, 1, 2, 3, 4]
    assert len(step.data_loader) == 1000


def test_amp_step_shares_the_grad_scaler(tmp_path):
    cfg = toy_cfg(tmp_path)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    inner, loader = _inner(AMPTrainer, cfg, grad_scaler=scaler, **_options(AMPTrainer))
    step = galw_train_step(inner, cfg)  # before the inner step ran: main makes its iterator lazily
    assert type(step) is GALWAMPTrainer and step.grad_scaler is scaler
    step.precision = torch.bfloat16  # CPU autocast
    _steps(step, 2)
    assert loader.iterators == 1 and loader.served == [0, 1]
    for name, value in _options(AMPTrainer).items():
        assert getattr(step, name) == value


def test_compat_matches_this_build():
    """On the official build nothing is patched; on the pure-Python one, the gaps are closed."""
    from detectron2.engine import defaults

    if compat.has_compiled_ops():
        import detectron2._C as C

        assert compat.APPLIED == [] and not isinstance(C, compat._MissingCompiledOps)
        assert defaults.DefaultTrainer.state_dict is not compat._default_trainer_state_dict
        assert isinstance(SimpleTrainer.__dict__["_data_loader_iter"], property)  # main's read-only property
    else:
        assert {"detectron2._C", "DefaultTrainer.state_dict"} <= set(compat.APPLIED)
        assert "_data_loader_iter" not in SimpleTrainer.__dict__  # v0.6: an instance attribute


def _amp_cfg(tmp_path, precision):
    cfg = toy_cfg(tmp_path)
    cfg.defrost()
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.PRECISION = precision
    return cfg


def test_amp_step_bfloat16_autocasts_without_loss_scaling(tmp_path):
    """SOLVER.AMP.PRECISION bfloat16: the model's forward runs under CPU autocast in bfloat16 and the
    step scales no loss (the inner step's enabled scaler is not used); float32 master weights move."""
    cfg = _amp_cfg(tmp_path, "bfloat16")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    inner, loader = _inner(AMPTrainer, cfg, grad_scaler=scaler, **_options(AMPTrainer))
    step = galw_train_step(inner, cfg)
    assert type(step) is GALWAMPTrainer and step.precision is torch.bfloat16
    assert step.grad_scaler is not scaler and not step.grad_scaler.is_enabled()
    assert step.grad_scaler.get_scale() == 1.0  # what the probe divides Gamma by
    seen = []
    forward = step.model.forward

    def recording_forward(*args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(*args, **kwargs)

    step.model.forward = recording_forward
    before = {k: v.detach().clone() for k, v in step.model.named_parameters()}
    _steps(step, 2)
    assert seen == [(True, torch.bfloat16)] * 2
    params = dict(step.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    assert any(not torch.equal(before[k], params[k]) for k in before)
    assert loader.served == [0, 1]


def test_amp_step_float16_replaces_a_disabled_scaler(tmp_path):
    """float16 needs loss scaling: an enabled inner scaler is shared (above); a disabled one (detectron2
    builds a CUDA GradScaler, which disables itself without CUDA) becomes torch's for the model's device."""
    cfg = _amp_cfg(tmp_path, "float16")
    inner, _ = _inner(AMPTrainer, cfg, grad_scaler=torch.amp.GradScaler("cpu", enabled=False), **_options(AMPTrainer))
    step = galw_train_step(inner, cfg)
    assert step.precision is torch.float16
    assert step.grad_scaler.is_enabled() and step.grad_scaler.get_scale() == 65536.0


def test_amp_precision_outside_the_choices_is_an_error(tmp_path):
    cfg = _amp_cfg(tmp_path, "float8")
    inner, _ = _inner(AMPTrainer, cfg, grad_scaler=torch.amp.GradScaler("cpu"), **_options(AMPTrainer))
    with pytest.raises(ValueError, match=r"SOLVER.AMP.PRECISION is 'float8', expected one of \('float16', 'bfloat16'\)"):
        galw_train_step(inner, cfg)
