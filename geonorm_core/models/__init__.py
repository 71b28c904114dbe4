"""Which model and which text a run reads: the offline models by short name, checkpoints and
cached ids (:mod:`.registry`), what loading any model needs first (:mod:`.loading`), Whisper base
from its CTranslate2 file with its speech input (:mod:`.whisper`, :mod:`.ct2`), and text to token
batches (:mod:`.corpus`).

``from geonorm_core.models import load_model, MODELS`` is the registry's API, as before the
package had rooms.
"""
from .loading import ModelNotFoundError
from .registry import MODELS, ModelInfo, load_model, model_cache_dir, resolve_model

__all__ = ["MODELS", "ModelInfo", "ModelNotFoundError", "load_model", "model_cache_dir", "resolve_model"]
