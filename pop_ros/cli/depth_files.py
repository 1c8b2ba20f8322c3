"""Files for a single image's 3D point without ROS: a depth image, a camera_info YAML, a PLY/PCD cloud.

Depth: a 16-bit PNG/TIFF in millimetres (0 = invalid, REP-118 16UC1), a 32-bit float TIFF in metres, or
a `.npy` (H, W) array in metres. camera_info: the YAML camera_calibration / camera_info_manager write
(`image_width`, `camera_matrix: {data: [...]}`, ...) or a sensor_msgs/CameraInfo as `ros2 topic echo`
prints it (`width`, `k`, `d`, `r`, `p`, ...). Numpy, OpenCV and YAML only (no torch: checked before
any model loads)."""

from __future__ import annotations

import pathlib
import types

import cv2
import numpy as np
import yaml

from pop_ros.cli.common import CliError

CLOUD_SUFFIXES = (".ply", ".pcd")


def read_depth_m(path: pathlib.Path) -> np.ndarray:
    """(H, W) float32 metres, NaN where invalid."""
    if not path.is_file():
        raise CliError(f"--depth {path}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise CliError(f"--depth {path}: {error}") from error
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise CliError(f"--depth {path}: expected an (H, W) array of metres, got {array.dtype} {array.shape}")
        metres = array.astype(np.float32)
    else:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None or array.ndim != 2:
            raise CliError(f"--depth {path}: not a single-channel depth image (16-bit mm PNG, float TIFF, .npy)")
        if array.dtype == np.uint16:
            metres = array.astype(np.float32) / 1000.0
            metres[array == 0] = np.nan
        elif array.dtype == np.float32:
            metres = array.copy()
        else:
            raise CliError(f"--depth {path}: {array.dtype} pixels; use 16-bit millimetres or 32-bit float metres")
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


def _matrix(data: dict, key: str, size: int, path) -> list[float]:
    value = data.get(key)
    if isinstance(value, dict):
        value = value.get("data")
    if value is None:
        return []
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError) as error:
        raise CliError(f"--camera-info {path}: {key} is not a list of numbers") from error
    if size and len(values) != size:
        raise CliError(f"--camera-info {path}: {key} has {len(values)} numbers, expected {size}")
    return values


def read_camera_info(path: pathlib.Path):
    """A CameraInfo-shaped namespace from either YAML layout."""
    if not path.is_file():
        raise CliError(f"--camera-info {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CliError(f"--camera-info {path}: not YAML ({str(error).splitlines()[0]})") from error
    if not isinstance(data, dict):
        raise CliError(f"--camera-info {path}: expected a mapping (camera_calibration YAML or CameraInfo fields)")
    calibration = "camera_matrix" in data
    k = _matrix(data, "camera_matrix" if calibration else "k", 9, path)
    if not k:
        raise CliError(f"--camera-info {path}: no camera_matrix (or k)")
    p = _matrix(data, "projection_matrix" if calibration else "p", 12, path) or [*k[:3], 0.0, *k[3:6], 0.0, *k[6:], 0.0]
    r = _matrix(data, "rectification_matrix" if calibration else "r", 9, path) or [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    d = _matrix(data, "distortion_coefficients" if calibration else "d", 0, path)
    roi = data.get("roi") or {}
    return types.SimpleNamespace(
        width=int(data.get("image_width" if calibration else "width", 0)),
        height=int(data.get("image_height" if calibration else "height", 0)),
        k=k,
        d=d,
        r=r,
        p=p,
        distortion_model=str(data.get("distortion_model", "plumb_bob")),
        binning_x=int(data.get("binning_x", 0)),
        binning_y=int(data.get("binning_y", 0)),
        roi=types.SimpleNamespace(
            x_offset=int(roi.get("x_offset", 0)),
            y_offset=int(roi.get("y_offset", 0)),
            width=int(roi.get("width", 0)),
            height=int(roi.get("height", 0)),
        ),
    )


def check_cloud_output(path: pathlib.Path, flag: str) -> None:
    if path.suffix.lower() not in CLOUD_SUFFIXES:
        raise CliError(f"{flag} {path}: needs a cloud file name ending in {', '.join(CLOUD_SUFFIXES)}")
    if not path.parent.is_dir():
        raise CliError(f"{flag} folder {path.parent} does not exist")


def write_cloud(path: pathlib.Path, points: np.ndarray, intensity: np.ndarray) -> str:
    """ASCII PLY or PCD of `points (N, 3)` metres with `intensity (N,)`."""
    rows = "\n".join(f"{x:.6f} {y:.6f} {z:.6f} {i:.6f}" for (x, y, z), i in zip(points, intensity, strict=True))
    count = len(points)
    if path.suffix.lower() == ".ply":
        header = (
            "ply\nformat ascii 1.0\n"
            f"element vertex {count}\n"
            "property float x\nproperty float y\nproperty float z\nproperty float intensity\nend_header\n"
        )
    else:
        header = (
            "VERSION .7\nFIELDS x y z intensity\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
            f"WIDTH {count}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {count}\nDATA ascii\n"
        )
    path.write_text(header + rows + ("\n" if count else ""))
    return str(path)
