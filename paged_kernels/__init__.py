"""Production Triton kernels for unified paged attention.

``unified_attention`` is the entry point (2D kernel, 3D split-KV kernel and segment reduction
behind one dispatcher). Never imports ``reference``.
"""

from .api import interpreting, make_plan, unified_attention
from .plan import LaunchPlan, plan_call, plan_launch
from .spec import CallSpec, KVQuant
from .validate import check_arguments, describe_call, validate_metadata
from .workspace import Workspace

__all__ = [
    "CallSpec",
    "KVQuant",
    "LaunchPlan",
    "Workspace",
    "check_arguments",
    "describe_call",
    "interpreting",
    "make_plan",
    "plan_call",
    "plan_launch",
    "unified_attention",
    "validate_metadata",
]
