"""Medical image I/O, geometry and the mask-delta value type."""

from claraseg.io.geometry import (
    apply_matrix,
    bounding_box,
    box_slices,
    box_to_physical,
    check_points_inside,
    crop,
    from_sitk,
    index_to_physical,
    lps_to_ras,
    paste,
    physical_box_to_index,
    physical_to_index,
    ras_to_lps,
    resample_to,
    resample_to_spacing,
    to_sitk,
    world_to_ijk_matrix,
    world_to_voxel,
)
from claraseg.io.image import Image, LabelInfo, check_finite
from claraseg.io.maskdelta import MaskDelta
from claraseg.io.phantom import make_phantom
from claraseg.io.readwrite import (
    as_label_map,
    atomic_path,
    list_dicom_series,
    read_dicom_series,
    read_image,
    read_labels_json,
    write_bytes_atomic,
    write_dicom_series,
    write_image,
    write_text_atomic,
)

__all__ = [
    "Image", "LabelInfo", "MaskDelta", "apply_matrix", "as_label_map", "atomic_path", "bounding_box", "box_slices",
    "box_to_physical", "check_finite", "check_points_inside", "crop", "from_sitk", "index_to_physical",
    "list_dicom_series", "lps_to_ras", "make_phantom", "paste", "physical_box_to_index", "physical_to_index",
    "ras_to_lps", "read_dicom_series", "read_image", "read_labels_json", "resample_to", "resample_to_spacing",
    "to_sitk", "world_to_ijk_matrix", "world_to_voxel", "write_bytes_atomic", "write_dicom_series", "write_image",
    "write_text_atomic",
]
