"""RCAN's canonical images: flat colours per semantic class under one fixed light, from the same render.

The canonical version of a randomized image shows the same scene from the same
camera at the same instant, with every appearance factor removed: no textures,
no object, tray or arm colours, no randomized light, no sensor model. Only what
the grasp depends on stays: which pixels are tray, arm, objects or background,
and the shape of the surfaces.

It is computed from buffers the randomized render already produced, rather
than by a second render with a canonical look:

- the segmentation buffer gives the class of every pixel, which a palette
  lookup turns into flat colours (PALETTE, defined here once);
- the depth buffer gives the 3-D shape: back-projected into camera space, its
  gradients are surface normals, and a fixed Lambertian light on them keeps the
  cues a flat mask loses (the edges of a box, a stack of two objects).

Why not a second render: it would double the renderer's cost, and it would
have to swap every body's colour and texture and the light back and forth per
frame. Reusing the buffers costs a few numpy operations per frame, and the
canonical image is exactly aligned with the randomized one by construction
(same camera jitter, same instant, same pixels per class).
"""

from __future__ import annotations

import numpy as np

# One flat colour per mask class (robots.world MASK_BACKGROUND, MASK_TRAY, MASK_ARM, MASK_OBJECT).
PALETTE = np.array([[70, 70, 70], [60, 110, 230], [240, 140, 30], [50, 200, 80]], np.uint8)
# The fixed light, in camera space (x right, y up, z towards the viewer): above and left of the camera.
LIGHT_DIRECTION = np.array([-0.3, 0.5, 1.0]) / np.linalg.norm([-0.3, 0.5, 1.0])
AMBIENT = 0.55
DIFFUSE = 0.45


def near_far(projection_matrix) -> tuple[float, float]:
    """The near and far clip distances of an OpenGL projection matrix (PyBullet's, column-major)."""
    a, b = float(projection_matrix[10]), float(projection_matrix[14])
    return b / (a - 1.0), b / (a + 1.0)


def camera_points(depth: np.ndarray, projection_matrix) -> np.ndarray:
    """Back-projects a depth buffer to camera-space points.

    Args:
        depth: [H, W] PyBullet depth buffer (non-linear, 0..1).
        projection_matrix: The 16 numbers the image was rendered with.

    Returns:
        [H, W, 3] float32 points in camera space (the camera looks along -z).
    """
    near, far = near_far(projection_matrix)
    distance = far * near / (far - (far - near) * np.asarray(depth, np.float64))
    height, width = distance.shape
    # Pixel centres in normalized device coordinates; image row 0 is the top (ndc y = +1).
    ndc_x = (np.arange(width) + 0.5) / width * 2.0 - 1.0
    ndc_y = 1.0 - (np.arange(height) + 0.5) / height * 2.0
    x = ndc_x[None, :] * distance / float(projection_matrix[0])
    y = ndc_y[:, None] * distance / float(projection_matrix[5])
    # float64 above (the depth buffer's precision matters near 1), float32 below: half the work.
    return np.stack([x, y, -distance], axis=-1).astype(np.float32)


def surface_normals(points: np.ndarray) -> np.ndarray:
    """Unit normals [H, W, 3] of a grid of camera-space points, turned towards the camera."""
    normals = np.cross(np.gradient(points, axis=1), np.gradient(points, axis=0))
    # The cross product's sign depends on the grid's handedness: a visible surface faces +z.
    normals *= np.where(normals[..., 2:] < 0, -1.0, 1.0)
    length = np.sqrt(np.einsum("...i,...i->...", normals, normals))
    flat = length < 1e-12  # no gradient (a one-pixel image): face the camera
    normals /= np.maximum(length, 1e-12)[..., None]
    normals[flat] = (0.0, 0.0, 1.0)
    return normals


def shading(depth: np.ndarray, projection_matrix) -> np.ndarray:
    """[H, W] brightness in AMBIENT..1 under the fixed light, from the scene's shape alone."""
    normals = surface_normals(camera_points(depth, projection_matrix))
    lambert = np.clip(normals @ LIGHT_DIRECTION, 0.0, 1.0)
    return AMBIENT + DIFFUSE * lambert


def render(mask: np.ndarray, depth: np.ndarray, projection_matrix) -> np.ndarray:
    """The canonical image of one frame.

    Args:
        mask: [H, W] uint8 class ids (robots.world MASK_*).
        depth: [H, W] depth buffer of the same render.
        projection_matrix: The projection the frame was rendered with.

    Returns:
        [H, W, 3] uint8: PALETTE[mask] shaded by the fixed light.
    """
    mask = np.asarray(mask)
    if mask.shape != np.shape(depth):
        raise ValueError(f"mask {mask.shape} and depth {np.shape(depth)} must have one shape")
    if mask.size and mask.max() >= len(PALETTE):
        raise ValueError(f"mask class {int(mask.max())} has no colour; classes are 0..3")
    flat = PALETTE[mask].astype(np.float64)
    shaded = flat * shading(depth, projection_matrix)[..., None]
    return np.clip(np.rint(shaded), 0, 255).astype(np.uint8)


def classes_of(canonical: np.ndarray) -> np.ndarray:
    """Recovers the class id of every pixel of a canonical image (the nearest palette hue).

    Shading scales a palette colour by a factor in AMBIENT..1, so the colour's
    direction identifies its class; this is how tests and refiner checks read a
    canonical image back as a mask.
    """
    colours = np.asarray(canonical, np.float64)
    colours /= np.maximum(np.linalg.norm(colours, axis=-1, keepdims=True), 1e-9)
    palette = PALETTE.astype(np.float64)
    palette /= np.linalg.norm(palette, axis=-1, keepdims=True)
    return np.argmax(colours @ palette.T, axis=-1).astype(np.uint8)
