from keras_siglip.models.three_towers.three_towers_backbone import (
    FrozenTower,
    ThreeTowersBackbone,
    precompute_third_tower_embeddings,
    resolve_third_tower,
    three_towers_loss,
)
