"""Analysis: what any model costs (``profile``), what one conv does (``explain``), and what each
alternative for a layer would cost instead (``compare``); per-layer input sizes
(``traced_shapes``), the share of the MACs some layers hold (``mac_share``) and MACs per output
pixel (``pixel_macs``)."""

from leanconv.analysis.comparison import Candidate, Comparison, compare
from leanconv.analysis.counting import MetaFallbackWarning, layer_macs, mac_share, pixel_macs, traced_shapes
from leanconv.analysis.explanation import Explanation, explain
from leanconv.analysis.profiling import LayerRow, Profile, conv_kind, profile

__all__ = ["Candidate", "Comparison", "Explanation", "LayerRow", "MetaFallbackWarning", "Profile", "compare",
           "conv_kind", "explain", "layer_macs", "mac_share", "pixel_macs", "profile", "traced_shapes"]
