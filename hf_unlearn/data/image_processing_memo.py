"""Pictures preprocessed once per distinct picture while a scoring run lasts.

Multiple-choice scoring asks about each picture once per candidate answer (the true one, four options, five
perturbed ones), and the processor resizes and normalises it every time: 1.6 s of a 9 s v3 evaluation on the demo's
model, measured. ``memoized_image_processing`` keeps each picture's pixel values while it is active, for image
processors that give one row of ``pixel_values`` per picture and nothing else (LLaVA's CLIP / DINOv2 / SigLIP
processors); any other layout (Qwen2-VL's patches with ``image_grid_thw``, tiled LLaVA-NeXT pictures) runs as usual.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from contextlib import contextmanager

import torch
from PIL import Image
from transformers import BatchFeature

MAX_MEMOIZED_BYTES = 256 * 2**20  # about 430 LLaVA-1.5 pictures (336 px), 7000 of the demo's


def _picture_key(image: Image.Image) -> tuple:
    return image.mode, image.size, hashlib.sha1(image.tobytes()).digest()


@contextmanager
def memoized_image_processing(processing_class):
    """While active, ``processing_class.image_processor`` preprocesses each distinct picture (with the same
    settings) once. A no-op for a processing class without an image processor."""
    image_processor = getattr(processing_class, "image_processor", None)
    if image_processor is None or "preprocess" in vars(image_processor):  # none, or memoised already
        yield
        return
    original = image_processor.preprocess
    cache: OrderedDict = OrderedDict()
    held = 0  # bytes in cache
    per_picture = True

    def preprocess(images, *args, **kwargs):
        nonlocal per_picture, held
        pictures = images if isinstance(images, (list, tuple)) else [images]
        if not per_picture or args or not pictures or not all(isinstance(p, Image.Image) for p in pictures):
            return original(images, *args, **kwargs)
        settings = repr(sorted(kwargs.items()))
        rows = []
        for picture in pictures:
            key = (settings, _picture_key(picture))
            if key not in cache:
                out = original([picture], **kwargs)
                values = out.get("pixel_values")
                if set(out.keys()) != {"pixel_values"} or not isinstance(values, torch.Tensor) or len(values) != 1:
                    per_picture = False  # not one row per picture: this processor runs as usual from now on
                    return original(images, *args, **kwargs)
                cache[key] = values
                held += values.nbytes
                while held > MAX_MEMOIZED_BYTES and len(cache) > 1:
                    held -= cache.popitem(last=False)[1].nbytes
            cache.move_to_end(key)
            rows.append(cache[key])
        return BatchFeature({"pixel_values": torch.cat(rows)})

    image_processor.preprocess = preprocess
    try:
        yield
    finally:
        del image_processor.preprocess  # back to the class's method
