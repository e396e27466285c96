"""Tune Studio: a browser studio for fine-tuning language models.

The package is layered (see README "Architecture"): `studio/ui/` is the only place that knows
Gradio; everything else is plain Python that a terminal, a test or `accelerate launch` can drive.
"""

__version__ = "0.1.0"
