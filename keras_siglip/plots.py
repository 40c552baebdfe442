"""Pictures of results, written to files."""

import numpy as np


def prediction_grid(images, titles, path, correct=None, columns=6):
    """Save a grid of images with a title under each (green correct, red wrong).

    Args:
        images: sequence of uint8 `(H, W, 3)` images.
        titles: one string per image.
        path: output PNG path.
        correct: optional booleans colouring the titles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = int(np.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, title) in enumerate(zip(images, titles)):
        ax = axes.flat[i]
        ax.imshow(image)
        color = "black" if correct is None else ("green" if correct[i] else "red")
        ax.set_title(title, fontsize=8, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
