"""Networks: the shared baseline AVNet, CIGN, AV-CIL, prompt pools, and the audio/visual encoders."""
