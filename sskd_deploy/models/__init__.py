"""The networks and their PyTorch-side companions.

Student and same-family teachers (DINOv2 encoder -> DPT pixel decoder -> Mask2Former decoder),
the set criterion, checkpoints, pretrained-weight loading and the exportable deploy wrapper. Import
the submodules directly (``sskd_deploy.models.encoder`` ...): this package imports nothing itself,
so importing one model file never pulls in the others.
"""
