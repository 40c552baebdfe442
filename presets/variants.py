"""big_vision's ViT size names (`decode_variant`), without a framework import."""

# big_vision `decode_variant`: name -> (width, depth, mlp_dim, num_heads).
VARIANTS = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "g-opt": (1536, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "G-opt": (1536, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}


def decode_variant(variant):
    """`"So400m/14"` -> dict(width, depth, mlp_dim, num_heads[, patch_size])."""
    name, _, patch = variant.partition("/")
    if name not in VARIANTS:
        raise ValueError(f"Unknown ViT variant {name!r}; known: {sorted(VARIANTS)}.")
    width, depth, mlp_dim, num_heads = VARIANTS[name]
    config = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
    if patch:
        config["patch_size"] = int(patch)
    return config
