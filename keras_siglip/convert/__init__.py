from keras_siglip.convert.keras_hub import assign_weights, keras_hub_weights
