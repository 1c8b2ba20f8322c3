"""The camera model ROS defines (sensor_msgs/CameraInfo, as image_geometry.PinholeCameraModel reads it).

Pixel coordinates are ROS/OpenCV ones: the centre of the top-left pixel is (0, 0), the convention
K and P use. A pixel (u, v) of an image of `image_size (H, W)` becomes a 3D point in the optical
frame (REP-103: x right, y down, z forward) at a depth z (metres along the optical axis):

1. Size. CameraInfo describes images of `reduced_size`: the ROI (or the full `width x height` when
   the ROI is all zero) divided by `binning_x/y`. An image of that size is used as it is; an image
   whose size is an exact resize of it (both axes by the same factor, up to rounding, as
   image_proc's resize node makes) is mapped back like a further binning (u / s); any other size
   gets no 3D point (CameraModelError with the reason).
2. ROI and binning, as image_geometry applies them: cx' = (cx - roi.x_offset) / binning_x (same for
   cy), fx' = fx / binning_x, for both K and P.
3. Rectified images (`image_is_rectified` true, e.g. `image_rect`): the intrinsics are P[:3, :3]
   (K when P is all zero). Raw images: the pixel is first undistorted with K, D, R, P for the
   plumb_bob, rational_polynomial and equidistant models (what image_geometry's rectifyPoint does
   with cv::undistortPoints / cv::fisheye::undistortPoints), then deprojected with P.

Differences from image_geometry, on purpose: the undistortion iterates to convergence (OpenCV's
default stops after a few iterations, which leaves pixels of a wide lens off by pixels near the
corners); an all-zero R (an uncalibrated CameraInfo) is read as the identity; P's Tx/Ty (the stereo
baseline of a right camera) are not applied, so the point stays in the image's own optical frame.
No ROS imports: `from_camera_info` takes anything shaped like a CameraInfo.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

PLUMB_BOB_MODELS = ("plumb_bob", "rational_polynomial")
EQUIDISTANT = "equidistant"
# Numbers of coefficients cv::undistortPoints accepts; cv::fisheye needs exactly 4.
_PINHOLE_COEFFICIENT_COUNTS = (4, 5, 8, 12, 14)
# Iterate the undistortion to convergence (OpenCV's default stops after 5 / 10 iterations).
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14)


class CameraModelError(ValueError):
    """No 3D point can be computed from this camera_info for this image; the message says why."""


@dataclasses.dataclass(frozen=True)
class CameraModel:
    width: int  # full sensor resolution the calibration is for
    height: int
    k: np.ndarray  # (3, 3) full-resolution camera matrix
    d: np.ndarray  # (N,) distortion coefficients
    r: np.ndarray  # (3, 3) rectification rotation
    p: np.ndarray  # (3, 4) full-resolution projection matrix
    distortion_model: str
    binning_x: int = 1
    binning_y: int = 1
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)  # x_offset, y_offset, width, height (all 0 = full)
    rectified: bool = True  # True: images are rectified (use P); False: raw (undistort with K, D, R, P)

    @classmethod
    def from_camera_info(cls, info, rectified: bool = True) -> CameraModel:
        """From a sensor_msgs/CameraInfo (or anything with its fields)."""
        roi = info.roi
        return cls(
            width=int(info.width),
            height=int(info.height),
            k=np.asarray(info.k, dtype=np.float64).reshape(3, 3),
            d=np.asarray(info.d, dtype=np.float64).reshape(-1),
            r=np.asarray(info.r, dtype=np.float64).reshape(3, 3),
            p=np.asarray(info.p, dtype=np.float64).reshape(3, 4),
            distortion_model=str(info.distortion_model),
            binning_x=max(1, int(info.binning_x)),
            binning_y=max(1, int(info.binning_y)),
            roi=(int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)),
            rectified=bool(rectified),
        )

    # ---- sizes -------------------------------------------------------------------------------------
    @property
    def reduced_size(self) -> tuple[int, int]:
        """(H, W) of the images this camera_info describes: the ROI (or full frame) / binning."""
        x_offset, y_offset, roi_w, roi_h = self.roi
        if not (x_offset or y_offset or roi_w or roi_h):
            roi_w, roi_h = self.width, self.height
        return roi_h // self.binning_y, roi_w // self.binning_x

    def image_scale(self, image_size: tuple[int, int]) -> tuple[float, float]:
        """(s_x, s_y) from the camera_info's `reduced_size` to an image of `image_size (H, W)`:
        (1, 1) for the same size, the resize factors for an exact resize, else CameraModelError."""
        height, width = int(image_size[0]), int(image_size[1])
        reduced_h, reduced_w = self.reduced_size
        if reduced_h <= 0 or reduced_w <= 0:
            raise CameraModelError(
                f"camera_info describes no image (width {self.width}, height {self.height}, roi {self.roi})"
            )
        if (height, width) == (reduced_h, reduced_w):
            return 1.0, 1.0
        scale_x, scale_y = width / reduced_w, height / reduced_h
        # An exact resize: each side is the other side's factor applied to camera_info's, rounded.
        if height > 0 and width > 0 and round(reduced_w * scale_y) == width and round(reduced_h * scale_x) == height:
            return scale_x, scale_y
        raise CameraModelError(
            f"image is {width}x{height} but camera_info describes {reduced_w}x{reduced_h} images "
            f"(width {self.width}, height {self.height}, binning {self.binning_x}x{self.binning_y}, roi {self.roi}), "
            "and it is not an exact resize of them"
        )

    # ---- intrinsics ----------------------------------------------------------------------------------
    def _adjusted(self, matrix: np.ndarray) -> np.ndarray:
        """K or P with the ROI offset and the binning applied (image_geometry's order)."""
        matrix = matrix.copy()
        x_offset, y_offset = self.roi[0], self.roi[1]
        matrix[0, 2] = (matrix[0, 2] - x_offset) / self.binning_x
        matrix[1, 2] = (matrix[1, 2] - y_offset) / self.binning_y
        matrix[0, 0] /= self.binning_x
        matrix[1, 1] /= self.binning_y
        return matrix

    def camera_matrix(self) -> np.ndarray:
        """(3, 3) K for `reduced_size` images (ROI and binning applied)."""
        return self._adjusted(self.k)

    def projection_matrix(self) -> np.ndarray:
        """(3, 3) intrinsics of the rectified image for `reduced_size`: P[:3, :3], or K when P is all zero."""
        if not np.any(self.p):
            return self.camera_matrix()
        return self._adjusted(self.p[:, :3])

    def _rectification(self) -> np.ndarray:
        return self.r if np.any(self.r) else np.eye(3)

    def _check(self) -> None:
        for name, matrix in (("K", self.camera_matrix()), ("P", self.projection_matrix())):
            if not np.all(np.isfinite(matrix)) or matrix[0, 0] <= 0 or matrix[1, 1] <= 0:
                raise CameraModelError(
                    f"camera_info {name} has non-positive or non-finite focal lengths "
                    f"(fx={matrix[0, 0]}, fy={matrix[1, 1]})"
                )

    # ---- pixels to rays and points -------------------------------------------------------------------
    def rectify_pixels(self, uv: np.ndarray) -> np.ndarray:
        """`uv (N, 2)` raw pixels of a `reduced_size` image -> (N, 2) rectified pixels (in P's image)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        coefficients = self.d
        if not np.any(coefficients):  # no distortion: K -> (R) -> P is a homography
            coefficients = np.zeros(0)
        model = self.distortion_model
        if coefficients.size and model not in (*PLUMB_BOB_MODELS, EQUIDISTANT):
            raise CameraModelError(
                f"camera_info distortion_model {model!r} is not supported for raw images "
                "(plumb_bob, rational_polynomial, equidistant); rectify the image or set image_is_rectified"
            )
        if not np.all(np.isfinite(coefficients)):
            raise CameraModelError(f"camera_info D has non-finite coefficients: {coefficients.tolist()}")
        k, r, p = self.camera_matrix(), self._rectification(), self.projection_matrix()
        points = uv.reshape(-1, 1, 2)
        if model == EQUIDISTANT and coefficients.size:
            if coefficients.size != 4:
                raise CameraModelError(
                    f"equidistant distortion needs 4 coefficients, camera_info has {coefficients.size}"
                )
            try:
                rectified = cv2.fisheye.undistortPoints(points, k, coefficients, R=r, P=p, criteria=_UNDISTORT_CRITERIA)
            except TypeError:  # OpenCV without the criteria argument
                rectified = cv2.fisheye.undistortPoints(points, k, coefficients, R=r, P=p)
        else:
            if coefficients.size and coefficients.size not in _PINHOLE_COEFFICIENT_COUNTS:
                raise CameraModelError(
                    f"{model} distortion needs {_PINHOLE_COEFFICIENT_COUNTS} coefficients, "
                    f"camera_info has {coefficients.size}"
                )
            if hasattr(cv2, "undistortPointsIter"):  # OpenCV 4: the iterative variant takes the criteria
                rectified = cv2.undistortPointsIter(points, k, coefficients, r, p, _UNDISTORT_CRITERIA)
            else:
                rectified = cv2.undistortPoints(points, k, coefficients, None, r, p, _UNDISTORT_CRITERIA)
        return np.asarray(rectified, dtype=np.float64).reshape(-1, 2)

    def pixels_to_points(self, uv: np.ndarray, depth_m: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """`uv (N, 2)` pixels of an image of `image_size (H, W)` at `depth_m (N,)` metres (z) ->
        (N, 3) points in the optical frame. CameraModelError when this image cannot be deprojected."""
        self._check()
        scale_x, scale_y = self.image_scale(image_size)
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2) / np.array([scale_x, scale_y])
        if not self.rectified:
            uv = self.rectify_pixels(uv)
        intrinsics = self.projection_matrix()
        fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
        depth = np.asarray(depth_m, dtype=np.float64).reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            points = np.stack([(uv[:, 0] - cx) / fx * depth, (uv[:, 1] - cy) / fy * depth, depth], axis=1)
        if not np.all(np.isfinite(points[np.isfinite(depth)])):  # e.g. a subnormal focal length: 1/fx overflows
            raise CameraModelError(
                f"camera_info's intrinsics (fx={fx:g}, fy={fy:g}, cx={cx:g}, cy={cy:g}) give non-finite points"
            )
        return points

    def pixel_to_point(
        self, u: float, v: float, depth_m: float, image_size: tuple[int, int]
    ) -> tuple[float, float, float]:
        x, y, z = self.pixels_to_points(np.array([[u, v]]), np.array([depth_m]), image_size)[0]
        return float(x), float(y), float(z)
