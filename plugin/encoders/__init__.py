"""Images -> L2-normalised float32 vectors (+ class probabilities for classifiers), built by name."""
from plugin.encoders.base import Encoder, resolve_device, to_rgb
from plugin.encoders.registry import create_encoder, list_encoders, register_encoder

__all__ = ["Encoder", "create_encoder", "list_encoders", "register_encoder", "resolve_device", "to_rgb"]
