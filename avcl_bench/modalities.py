"""The three modalities a run trains and reports, in the papers' column order: the one
definition every module uses (it imports nothing, so anything may import it)."""

MODALITIES = ("audio", "visual", "audio-visual")
