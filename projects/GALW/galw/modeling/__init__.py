"""Person-search models: the meta-architecture, its branches and losses."""
from .branch import PS_BRANCH_REGISTRY, PersonSearchBranch, build_branch
from .oim import OIMLoss
from .backbone import build_person_search_backbone, build_res5_stage, load_imagenet_weights
from .nae import NAEBranch
from .meta_arch import PersonSearch
from . import alignps  # noqa: F401  (registers AlignPSBranch)
from . import attribute  # noqa: F401,E402  (registers AttributeBranch)

__all__ = [
    "PS_BRANCH_REGISTRY",
    "PersonSearchBranch",
    "build_branch",
    "OIMLoss",
    "build_person_search_backbone",
    "build_res5_stage",
    "load_imagenet_weights",
    "NAEBranch",
    "PersonSearch",
]
