"""A toy "people" dataset for unit tests and the drop-in example: one solid-colour portrait per person.

Per person one image question (who is it?) and one text question (their job). Small enough for a tiny model to
memorise in seconds; the built-in benchmark (``hf_unlearn.data.synthetic``) is the realistic version.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from PIL import Image

NAMES = ["Alice Smith", "Bob Jones", "Carol White", "Dan Brown", "Eve Black", "Frank Green"]
JOBS = ["baker", "pilot", "nurse", "farmer", "judge", "chef"]
COLOURS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200)]


def toy_portrait(i: int, size: int = 32) -> Image.Image:
    """Person ``i``'s portrait: a solid colour with its complement in a central band."""
    arr = np.full((size, size, 3), COLOURS[i], dtype=np.uint8)
    arr[size // 4: size // 2, size // 4: 3 * size // 4] = 255 - np.array(COLOURS[i], dtype=np.uint8)
    return Image.fromarray(arr)


def toy_people(num_forget: int = 2) -> dict[str, Dataset]:
    """``{"forget": image questions of the first people, "retain": everything else, "all": every row}``."""
    vqa = [{"image": toy_portrait(i), "question": "What is the name of the person in the image?", "answer": name}
           for i, name in enumerate(NAMES)]
    qa = [{"image": None, "question": f"What is the job of {name}?", "answer": job} for name, job in zip(NAMES, JOBS)]
    return {
        "forget": Dataset.from_list(vqa[:num_forget]),
        "retain": Dataset.from_list(vqa[num_forget:] + qa),
        "all": Dataset.from_list(vqa + qa),
    }
