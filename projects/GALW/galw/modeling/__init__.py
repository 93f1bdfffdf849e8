"""Person-search models: the meta-architecture, its branches and losses."""
from .branch import PS_BRANCH_REGISTRY, PersonSearchBranch, build_branch

__all__ = ["PS_BRANCH_REGISTRY", "PersonSearchBranch", "build_branch"]
from . import alignps  # noqa: E402,F401  (registers AlignPSBranch)
