"""Person-search models: the meta-architecture, its branches and losses."""
from .branch import PS_BRANCH_REGISTRY, PersonSearchBranch, build_branch
from .oim import OIMLoss
from . import alignps  # noqa: F401  (registers AlignPSBranch)
from . import attribute  # noqa: F401,E402  (registers AttributeBranch)

__all__ = ["PS_BRANCH_REGISTRY", "PersonSearchBranch", "build_branch", "OIMLoss"]
