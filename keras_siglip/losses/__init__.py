from keras_siglip.losses.sigmoid import SigmoidLoss, chunked_sigmoid_loss, sigmoid_labels
