from keras_siglip.models.cappa.cappa_backbone import CapPaBackbone
from keras_siglip.models.cappa.cappa_captioner import CapPaCaptioner
from keras_siglip.models.cappa.cappa_preprocessor import CapPaPreprocessor
from keras_siglip.models.cappa.locca import LocCaCaptioner
from keras_siglip.models.cappa.locca_preprocessor import LocCaPreprocessor, locca_examples
from keras_siglip.presets import cappa_parameter_count
