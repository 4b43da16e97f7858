"""sskd-deploy: semi-supervised foundation-model distillation for instance segmentation.

The top-level package stays import-light (no torch, no numpy) so the CLI starts fast;
heavy modules are imported by the commands that need them.
"""

__version__ = "0.1.0"
