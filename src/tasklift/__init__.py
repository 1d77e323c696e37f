"""tasklift: move a fine-tuned model's skill onto another model without fine-tuning again."""

__version__ = "0.1.0"
