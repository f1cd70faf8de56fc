"""Fine-tuning: the lower bound. Trains on each new experience only, cross-entropy over the logits
of all classes seen so far, no memory and no regularisation (CIGN Sec. 4.2; AV-CIL release)."""

from . import register
from .base import AVCLStrategy


@register("finetune")
class FineTuning(AVCLStrategy):
    """The base strategy as is: every mechanism of the others is absent."""
