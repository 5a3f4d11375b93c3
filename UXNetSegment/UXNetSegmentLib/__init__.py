"""UXNetSegmentLib: a pure-Python 3D UX-Net segmentation engine (no slicer, no qt).

Public API (see ``api.py``): ``segment_image``, ``segment_file``; models: ``catalogue.get_model``,
``checkpoint.load_network``; the CLI is ``uxnet-segment`` (``python -m UXNetSegmentLib``).
"""
__version__ = "0.1.0"
