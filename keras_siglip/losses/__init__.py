from keras_siglip.losses.sigmoid import SigmoidLoss, sigmoid_labels
