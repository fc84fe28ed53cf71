"""Frames for the annotation-only ILSVRC2015 fixture tree (tests/data is on the path)."""

import os
import xml.etree.ElementTree as ET

from PIL import Image


def write_frames(root, ext=".JPEG"):
    """A black image under Data/ for every XML under Annotations/, of the XML's size."""
    for folder, _, names in os.walk(os.path.join(root, "Annotations")):
        for name in names:
            size = ET.parse(os.path.join(folder, name)).getroot().find("size")
            width, height = int(size.findtext("width")), int(size.findtext("height"))
            image = os.path.join(root, "Data", os.path.relpath(folder, f"{root}/Annotations"))
            os.makedirs(image, exist_ok=True)
            Image.new("RGB", (width, height)).save(os.path.join(image, name[:-4] + ext), "JPEG")
