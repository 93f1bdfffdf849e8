"""Person-search datasets (CUHK-SYSU, PRW, synthetic), their registration and the mapper.

Importing registers ``cuhk_sysu_*``, ``prw_*``, ``synth_prw_*`` and ``synth_cuhk_*`` (train, gallery,
query) under ``$DETECTRON2_DATASETS``.
"""
from .attributes import AttributeFileError, attach_attributes, load_attribute_file
from .build import build_person_search_test_loader, build_person_search_train_loader
from .builtin import current_metadata, register_all, register_person_search
from .cuhk_sysu import CUHKSYSU
from .mapper import PersonSearchDatasetMapper
from .matlab import MatFormatError
from .prw import PRW

register_all()

__all__ = [
    "AttributeFileError",
    "CUHKSYSU",
    "MatFormatError",
    "PRW",
    "PersonSearchDatasetMapper",
    "attach_attributes",
    "build_person_search_test_loader",
    "build_person_search_train_loader",
    "current_metadata",
    "load_attribute_file",
    "register_person_search",
]
