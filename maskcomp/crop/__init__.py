"""The crop stage: the images to crop (items), MTCNN detection with resume (detect), the box policy and its
fallbacks (boxes), crop files, records and the stage itself (stage)."""

from .stage import crop_dir, crop_faces, load_crops, require_current_crops

__all__ = ["crop_dir", "crop_faces", "load_crops", "require_current_crops"]
