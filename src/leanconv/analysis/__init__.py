"""Analysis: what any model costs (``profile``), what one conv does (``explain``), and what each
alternative for a layer would cost instead (``compare``)."""

from leanconv.analysis.compare import Candidate, Comparison, compare
from leanconv.analysis.explain import Explanation, explain
from leanconv.analysis.profile import LayerRow, Profile, conv_kind, profile

__all__ = ["Candidate", "Comparison", "Explanation", "LayerRow", "Profile", "compare", "conv_kind", "explain", "profile"]
