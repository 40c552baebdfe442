"""Data sets for keras_siglip."""

from keras_siglip.data.shapes import (BACKGROUND_RGB, BACKGROUNDS, COLOR_RGB,
                                      COLORS, POSITIONS, PROMPT_TEMPLATES,
                                      SHAPES, SIZES, ShapeAttributes,
                                      ShapesDataset, caption, class_id,
                                      class_label, class_names, class_prompts,
                                      render, sample_attributes, with_article)
from keras_siglip.data.packing import (FirstFitPacker, PackingStats, pack_dataset,
                                       token_drop_indices)
from keras_siglip.data.tasks import (COUNT_WORDS, SHAPES_TASKS, mix_tasks,
                                     shapes_task_arrays, shapes_task_datasets)
from keras_siglip.data.resolution_sampling import (draw_side_lengths, sample_resolutions,
                                                   token_budget)
from keras_siglip.data.m4 import (BalanceReport, balance_weights, balanced_subsample,
                                  statistics, weighted_dataset)
from keras_siglip.data.views import silc_views
from keras_siglip.data.recipe import draw_tasks, recipe_dataset, shapes_recipe_examples
from keras_siglip.data.naflex_continuation import (draw_sequence_lengths, naflex_batches,
                                                   naflex_continuation_dataset, per_length_batch_sizes)
