"""Analysis: what any model costs (``profile``), what one conv does (``explain``), and what each
alternative for a layer would cost instead (``compare``)."""

from leanconv.analysis.comparison import Candidate, Comparison, compare
from leanconv.analysis.explanation import Explanation, explain
from leanconv.analysis.profiling import LayerRow, Profile, conv_kind, profile

__all__ = ["Candidate", "Comparison", "Explanation", "LayerRow", "Profile", "compare", "conv_kind", "explain", "profile"]
