"""Geometry-exact image IO: NIfTI (RAS) via nibabel and SimpleITK (LPS) conversion.

A :class:`Volume` is a 3-D array in nibabel (i, j, k) order plus its ``voxel_to_ras`` affine (voxel indices →
RAS world mm).  Every writer goes through a temporary file in the destination folder followed by an atomic
rename, so an interrupted run never leaves a half-written image behind.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from infanite.io.atomic import atomic_output
from infanite.geometry import LPS_TO_RAS, RAS_TO_LPS, as_matrix, direction_cosines, voxel_spacing


class ImageReadError(ValueError):
    """An image file is missing, unreadable, corrupt or not a 3-D volume. ``kind`` names the failure."""

    def __init__(self, path, kind: str, detail: str):
        self.path = str(path)
        self.kind = kind
        self.detail = detail
        super().__init__(f"{path}: {detail}")


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (i, j, k) and ``voxel_to_ras`` (4x4, voxel indices → RAS mm)."""

    shape: tuple
    voxel_to_ras: np.ndarray

    @property
    def spacing_mm(self) -> np.ndarray:
        return voxel_spacing(self.voxel_to_ras)

    def voxel_centres_ras(self) -> np.ndarray:
        """RAS mm of every voxel centre, shape (*shape, 3)."""
        ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in self.shape], indexing="ij"), -1)
        return ijk @ self.voxel_to_ras[:3, :3].T + self.voxel_to_ras[:3, 3]


@dataclass
class Volume:
    """A 3-D image: ``array`` indexed (i, j, k) and ``voxel_to_ras`` (4x4, voxel indices → RAS mm)."""

    array: np.ndarray
    voxel_to_ras: np.ndarray

    def __post_init__(self):
        self.voxel_to_ras = as_matrix(self.voxel_to_ras, "voxel_to_ras")
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3-D, got shape {self.array.shape}")
        if abs(np.linalg.det(self.voxel_to_ras[:3, :3])) < 1e-12:
            raise ValueError("voxel_to_ras is singular")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size (mm) along i, j, k."""
        return voxel_spacing(self.voxel_to_ras)

    @property
    def ras_to_voxel(self) -> np.ndarray:
        """Inverse affine: RAS mm → continuous voxel indices."""
        return np.linalg.inv(self.voxel_to_ras)

    @property
    def grid(self) -> Grid:
        return Grid(self.shape, self.voxel_to_ras.copy())

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same grid, new voxel values."""
        return Volume(np.asarray(array), self.voxel_to_ras.copy())


def _squeeze_to_3d(array: np.ndarray, path) -> np.ndarray:
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ImageReadError(path, "not_3d", f"expected a 3-D image, got shape {tuple(array.shape)}")
    return array


def _gzip_damage(path: Path) -> str | None:
    """Why the gzip stream of a ``.gz`` file cannot be decoded; None when it decodes or is not ``.gz``."""
    if not path.name.lower().endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        return str(exc)
    return None


def read_header(path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and ``voxel_to_ras`` of a NIfTI file without reading its voxels."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "missing", "file does not exist")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types, and wraps gzip errors in ImageFileError
        damage = _gzip_damage(path)
        if damage is not None:
            raise ImageReadError(path, "corrupt_gzip", f"corrupt gzip stream ({damage})") from exc
        raise ImageReadError(path, "unreadable", f"not a readable NIfTI image ({exc})") from exc
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ImageReadError(path, "not_3d", f"expected a 3-D image, got shape {shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ImageReadError(path, "singular_affine", "the header's voxel-to-world affine is singular or not "
                                                      "finite (no valid geometry: check the qform/sform)")
    return shape, affine


def load_nifti(path, dtype=np.float32) -> Volume:
    """Read a NIfTI image (``.nii`` / ``.nii.gz``) as a :class:`Volume` in RAS.

    ``dtype=None`` keeps the stored integer type (use it for label maps); otherwise scaled values are returned
    as ``dtype``.  A trailing singleton 4th dimension is dropped.  Raises :class:`ImageReadError`.
    """
    path = Path(path)
    read_header(path)
    img = nib.load(str(path))
    try:
        if dtype is None:
            array = np.asanyarray(img.dataobj)
        else:
            array = img.get_fdata(dtype=np.float64).astype(dtype, copy=False)
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise ImageReadError(path, "corrupt_gzip", f"corrupt or truncated gzip stream ({exc})") from exc
    except OSError as exc:  # nibabel: fewer voxel bytes in the file than the header announces
        raise ImageReadError(path, "unreadable", f"truncated or damaged voxel data ({exc})") from exc
    except Exception as exc:
        raise ImageReadError(path, "unreadable", f"cannot read voxel data ({exc})") from exc
    return Volume(_squeeze_to_3d(np.asarray(array), path), np.asarray(img.affine, dtype=np.float64))


def load_labels(path) -> Volume:
    """Read a label map as integers (values rounded; raises if they are not whole numbers)."""
    vol = load_nifti(path, dtype=None)
    arr = vol.array
    if not np.issubdtype(arr.dtype, np.integer):
        rounded = np.rint(arr)
        if not np.all(np.isfinite(arr)) or np.abs(arr - rounded).max(initial=0) > 1e-3:
            raise ImageReadError(path, "not_labels", "label map holds non-integer values")
        arr = rounded
    return vol.with_array(arr.astype(np.int16 if arr.max(initial=0) < 32768 else np.int32))


def save_nifti(volume: Volume, path, dtype=None) -> Path:
    """Write ``volume`` to ``path`` (NIfTI-1), qform and sform both set to its affine (code 1, scanner).

    The write is atomic.  ``dtype`` overrides the stored data type (e.g. ``np.int16`` for labels).
    """
    array = np.asarray(volume.array if dtype is None else volume.array.astype(dtype))
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return save_nifti_array(array, volume.voxel_to_ras, path)


def save_nifti_array(array: np.ndarray, voxel_to_ras: np.ndarray, path) -> Path:
    """Write an array of any dimension (3-D volume, 4-D maps) with ``voxel_to_ras`` as qform and sform (code 1),
    units mm; atomic (temp file, then rename)."""
    img = nib.Nifti1Image(array, voxel_to_ras)
    img.set_qform(voxel_to_ras, code=1)
    img.set_sform(voxel_to_ras, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_output(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def _set_sitk_geometry(img: sitk.Image, voxel_to_ras: np.ndarray) -> sitk.Image:
    directions = direction_cosines(voxel_to_ras)
    if not np.allclose(directions.T @ directions, np.eye(3), atol=1e-5):
        raise ValueError("affine has shear; ITK images need orthogonal axes")
    img.SetSpacing([float(s) for s in voxel_spacing(voxel_to_ras)])
    img.SetOrigin([float(v) for v in (RAS_TO_LPS[:3, :3] @ voxel_to_ras[:3, 3])])
    img.SetDirection([float(v) for v in (RAS_TO_LPS[:3, :3] @ directions).ravel()])
    return img


def sitk_reference_image(grid: Grid, pixel_id=sitk.sitkUInt8) -> sitk.Image:
    """An empty SimpleITK image with the geometry of ``grid`` (for use as a resampling reference)."""
    return _set_sitk_geometry(sitk.Image([int(s) for s in grid.shape], pixel_id), grid.voxel_to_ras)


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """Convert to a SimpleITK image (LPS physical space) with no loss of geometry.

    Raises ``ValueError`` for sheared affines, which ITK images cannot represent.
    """
    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    return _set_sitk_geometry(img, volume.voxel_to_ras)


def sitk_voxel_to_ras(image: sitk.Image) -> np.ndarray:
    """The RAS ``voxel_to_ras`` affine of a SimpleITK image (which stores LPS geometry)."""
    d = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS[:3, :3] @ d @ np.diag(image.GetSpacing())
    m[:3, 3] = LPS_TO_RAS[:3, :3] @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return m


def sitk_to_volume(image: sitk.Image) -> Volume:
    """Convert a 3-D SimpleITK image (LPS) to a :class:`Volume` (RAS)."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D image, got {image.GetDimension()}-D")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return Volume(np.ascontiguousarray(array), sitk_voxel_to_ras(image))
