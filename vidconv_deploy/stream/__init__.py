"""Streaming recognition: the paper's sliding window (section 4.3.2) as a runtime over a bundle.

Only the new frame goes through the early net; the early outputs of the last L frames wait in a
ring buffer, and every ``stride`` frames the host tiles them into the collage for the later net.
"""

from vidconv_deploy.stream.backends import Backend, backends_of, open_backend
from vidconv_deploy.stream.recognizer import FloatBuffer, Int8Buffer, Prediction, StreamingRecognizer

__all__ = ["Backend", "FloatBuffer", "Int8Buffer", "Prediction", "StreamingRecognizer", "backends_of", "open_backend"]
