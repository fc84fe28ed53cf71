import random
from unittest import mock

from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils

from vod_d2.data import build_video_test_loader


def test_test_loader_walks_videos_in_frame_order_reading_each_frame_once(cfg, records):
    records = records
    shuffled = random.Random(0).sample(records, len(records))
    DatasetCatalog.register("_test_loader_order", lambda: shuffled)
    MetadataCatalog.get("_test_loader_order").set(thing_classes=["a", "b"])
    try:
        reads = []
        read_image = detection_utils.read_image

        def counting(path, format=None):
            reads.append(path)
            return read_image(path, format)

        with mock.patch("vod_d2.data.mapper.utils.read_image", counting):
            frames = [batch[0] for batch in build_video_test_loader(cfg, "_test_loader_order")]
        order = [(f["video_id"], f["frame_idx"]) for f in frames]
        assert order == [(r["video_id"], r["frame_idx"]) for r in records]
        assert sorted(reads) == sorted(r["file_name"] for r in records)
    finally:
        DatasetCatalog.remove("_test_loader_order")
        MetadataCatalog.remove("_test_loader_order")
