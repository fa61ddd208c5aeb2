"""Embedded default dataset: deterministic synthetic scenes with COCO annotations.

The generator draws 1-4 shapes of four categories (circle, square, triangle, star) in their
canonical pose (rotated by at most 15 degrees), at 25-60% of the image's short side, on
textured backgrounds (gradients, fractal noise, stripes, checkers), each filled with a colour
and a texture (solid, stripes, dots, noise, gradient) drawn according to ``appearance``:

* ``"category"`` (the default): as in natural categories, appearance goes with the class as
  well as shape. Each category has its own hue distribution (a centre per category, a quarter
  turn apart, with a spread that lets neighbours overlap) and a preferred texture (drawn 60% of
  the time). An object's mean hue names its class ~71% of the time and its texture at best
  62.5%, so the cues a label-free method can pick up by matching objects across views (colour
  and texture, the cheapest) carry the class, and shape is still needed for the rest.
* ``"independent"``: colour and texture are drawn independently of the category, so only the
  shape tells the categories apart and a probe or detector that separates them has learnt
  shape. These are the scenes of generator 2.0, byte for byte (every figure measured before
  the setting existed was made with them).

The constants and why they were chosen: :mod:`.scene` (``CATEGORY_APPEARANCE``). Every image
has its own size (128-176 px by default: small enough for pretraining and fine-tuning on a
CPU). Annotations are written in COCO "instances" format so that Detectron2's
``load_coco_json`` (and pycocotools) read them directly.

Modules: :mod:`.drawing` (backgrounds, fills, shapes), :mod:`.scene` (object layout and one
scene), :mod:`.dataset` (the files, jsons and manifest).

Layout written under ``out_dir``::

    out_dir/
        train/000000.jpg ...
        val/000000.jpg ...
        annotations/instances_train.json
        annotations/instances_val.json
        manifest.json          # written last; marks a complete dataset

Design notes
------------
* **Masks are exact.**  Each object is a single simple polygon and its pixels are
  produced by rasterising *that same polygon* (coordinates rounded to 0.01 px, i.e.
  exactly the numbers stored in the json) with pycocotools, the rasteriser that
  Detectron2 and ``COCO.annToMask`` use.  So the drawn pixels, ``annToMask`` and
  Detectron2's ``polygons_to_bitmask`` agree pixel for pixel.  (``cv2.fillPoly``
  was not used for this: it fills the boundary inclusively and is offset by half a
  pixel relative to the COCO convention, e.g. a 40x30 px box fills 41x31 px.)
  Objects never overlap (a 2 px gap is kept between masks, and boxes overlap
  with IoU <= 0.1), so no visible-region bookkeeping is needed.
* ``bbox`` is the tight box ``[x, y, w, h]`` of the drawn pixels (pixel ``i`` spans
  ``[i, i+1)``); ``area`` is the polygon (shoelace) area.
* **Deterministic.**  Every image has its own ``numpy.random.Generator`` seeded
  from ``(seed, split, index)``, so identical arguments give byte-identical files
  (on the same library versions) and images don't depend on how many others are
  generated.  Nothing time- or host-dependent is written.
* **Atomic.**  Everything is written into a sibling temporary folder
  ``<out_dir>.tmp-XXXX`` (manifest last) which is then renamed to ``out_dir``; a
  killed generation therefore never looks complete.  Calling the generator again
  with identical arguments on a complete dataset is a cheap no-op; different
  arguments raise ``ValueError`` unless ``overwrite=True``.
"""

from .dataset import (
    DEFAULTS,
    GENERATOR_VERSION,
    MANIFEST_NAME,
    SPLITS,
    generate_synthetic_dataset,
    read_synthetic_manifest,
    synthetic_split_paths,
)
from .scene import APPEARANCES, SYNTHETIC_CATEGORIES, render_synthetic_scene
