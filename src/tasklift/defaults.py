"""Grids shared by the library and the command line; torch-free, so that building the `tasklift`
argument parser (and `--help`) imports nothing heavy."""

#: per-class training sizes of the data-scaling experiment
PER_CLASS = (1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 512, 768, 1024)
#: training fractions: the paper's 20% chunks, plus 1% and 5%
FRACTIONS = (0.01, 0.05, 0.2, 0.4, 0.6, 0.8, 1.0)
#: the largest image side tasklift resizes to (a ViT-H at 896 px is far below it)
MAX_IMAGE_SIZE = 4096
#: how a layer's tokens become one vector (`extract.iter_embeddings` says what each does)
POOLS = ("cls", "first", "mean", "last", "cls+mean")
