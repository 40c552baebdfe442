from keras_siglip.losses.captioning import (
    CaptioningLoss,
    TokenAccuracy,
    caption_log_likelihood,
    chunked_token_nll,
    per_caption_mean,
)
from keras_siglip.losses.distributed import (
    cross_device_setup,
    gathered_sigmoid_loss,
    matching_pairs_sigmoid_loss,
    ring_sigmoid_loss,
)
from keras_siglip.losses.sigmoid import (
    SigmoidLoss,
    chunked_sigmoid_loss,
    pairwise_sigmoid_losses,
    sigmoid_labels,
    sigmoid_loss_from_embeddings,
)
from keras_siglip.losses.self_distillation import (
    distillation_cross_entropy,
    ema_update,
    local_to_global_loss,
    masked_prediction_loss,
    random_patch_mask,
    updated_center,
)
from keras_siglip.losses.softmax import softmax_loss_from_embeddings, softmax_loss_from_logits
