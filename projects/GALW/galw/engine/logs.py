"""Log set-up for every entry point: the packages' loggers ("galw", "galw_core": groups, s*, phase
switches, resumes, files written, records loaded) beside detectron2's, on the console with timestamps and
in ``OUTPUT_DIR/log.txt``, as detectron2's own projects do (DensePose: ``name="densepose"``)."""
import logging
from typing import Optional

import detectron2.utils.comm as comm
from detectron2.utils.logger import setup_logger

__all__ = ["setup_galw_logger", "setup_logging"]


def setup_galw_logger(output: Optional[str] = None) -> logging.Logger:
    """The "galw" and "galw_core" (the GALW hook's groups and phases) loggers, for scripts whose
    detectron2 loggers ``default_setup`` already made; returns "galw"."""
    setup_logger(output, distributed_rank=comm.get_rank(), name="galw_core")
    return setup_logger(output, distributed_rank=comm.get_rank(), name="galw")


def setup_logging(output: Optional[str] = None) -> logging.Logger:
    """detectron2's and the package's loggers, for scripts without ``default_setup``."""
    setup_logger(output, distributed_rank=comm.get_rank(), name="detectron2")
    return setup_galw_logger(output)
