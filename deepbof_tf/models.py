"""Model builders: the local-feature (bag-of-features) encoder and the song-level DNN.

Two sections, one per stage of SPEC: §3–4 (local features, encoder) and §5 (DNN).
"""

from __future__ import annotations

# --- Local feature encoder (SPEC §3–4) -------------------------------------------------

# --- Song-level DNN (SPEC §5) ----------------------------------------------------------
