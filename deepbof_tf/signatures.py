"""The signature names of a ``deepbof-export`` SavedModel: the one place they are written.

They are the export's contract with its clients (``serving/export_lib.py`` writes them;
``deepbof_tf.exported``, ``serving/client.py`` and the tagging tools call them; what
each takes and returns: ``serving/export_lib.py`` and serving/README.md). Plain
constants, so a client imports them without TensorFlow.
"""

from __future__ import annotations

# One-shot tagging of equal-length clips (TF Serving's default signature name).
DEFAULT_SIGNATURE = "serving_default"
# One-shot tagging of zero-padded clips with their lengths.
PADDED_SIGNATURE = "serving_padded"
# One-shot tagging of whole WAV files.
WAV_SIGNATURE = "predict_wav"
# The model's ordered tag names.
TAGS_SIGNATURE = "tags"
# The two passes of chunked (streaming) tagging, and their variants that keep the STFT
# magnitudes of the first pass for the second.
STREAM_PEAK_SIGNATURE = "stream_peak"
STREAM_ENCODE_SIGNATURE = "stream_encode"
STREAM_SPECTRUM_SIGNATURE = "stream_spectrum"
STREAM_ENCODE_SPECTRUM_SIGNATURE = "stream_encode_spectrum"
# The classifier head on a combined bag-of-features embedding.
HEAD_SIGNATURE = "probabilities_from_embedding"
