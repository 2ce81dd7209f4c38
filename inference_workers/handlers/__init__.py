"""Model handlers: one class per kind of model, all behind `base.ModelHandler`."""

from .base import InferenceOutput, ModelHandler, RequestRejected
from .echo import EchoHandler
from .image import ImageHandler
from .speech import SpeechHandler
from .text import TextHandler

#: manifest `handler` field -> class; the registry stores these names
HANDLER_CLASSES: dict[str, type[ModelHandler]] = {
    cls.__name__: cls for cls in (EchoHandler, TextHandler, ImageHandler, SpeechHandler)
}

__all__ = [
    "HANDLER_CLASSES", "EchoHandler", "ImageHandler", "InferenceOutput", "ModelHandler",
    "RequestRejected", "SpeechHandler", "TextHandler",
]
