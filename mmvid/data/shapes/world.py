"""The synthetic world: scenes of coloured shapes that act over time, and their renderer.

A `Scene` is the whole ground truth of one video: background, and 1-4 objects, each with a shape,
a colour (distinct within a scene, so a colour names an object), a size, an action with a speed,
and at most one event (it appears or leaves mid-clip). `sample_scene(seed, ...)` draws one
deterministically; `object_states(obj, T)` gives each object's per-frame centre, scale, angle and
visibility; `render(scene)` draws the frames. Coordinates are fractions of the frame, x to the
right and y down; sizes are circumradii as fractions of the frame side.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

# ----------------------------------------------------------------------------------------------
# Vocabulary of the world
# ----------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = {  # bright, saturated and far apart; every one is far from every background
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "cyan": (40, 215, 225),
    "orange": (250, 140, 20),
    "white": (240, 240, 240),
}
BACKGROUNDS = {  # dark, so objects always stand out
    "black": (15, 15, 18),
    "grey": (55, 55, 58),
    "navy": (18, 24, 58),
    "forest": (18, 48, 28),
    "brown": (58, 38, 22),
}
TEXTURES = ("plain", "noise", "gradient", "stripes")
SIZES = {"small": 0.1, "large": 0.15}  # circumradius, fraction of the frame side
SPEEDS = ("slow", "fast")
MOVES = {  # linear moves: unit direction (dx, dy), y down
    "move_left": (-1.0, 0.0),
    "move_right": (1.0, 0.0),
    "move_up": (0.0, -1.0),
    "move_down": (0.0, 1.0),
    "move_up_left": (-1 / math.sqrt(2), -1 / math.sqrt(2)),
    "move_up_right": (1 / math.sqrt(2), -1 / math.sqrt(2)),
    "move_down_left": (-1 / math.sqrt(2), 1 / math.sqrt(2)),
    "move_down_right": (1 / math.sqrt(2), 1 / math.sqrt(2)),
}
ACTIONS = (
    "stay_still", *MOVES, "bounce", "grow", "shrink", "blink",  # the main world
    "zigzag", "orbit", "shake", "spin", "pulse",  # held out by default for few-shot recognition
)
DEFAULT_HELD_OUT = ("zigzag", "orbit", "shake", "spin", "pulse")
EVENTS = ("appear", "leave")
# Actions whose motion still reads clearly when the object is on screen for only part of the clip.
EVENT_ACTIONS = ("stay_still", *MOVES, "grow", "shrink")
# Rotational symmetry of each shape in degrees (a circle cannot visibly spin).
SYMMETRY = {"circle": 0.0, "square": 90.0, "triangle": 120.0, "star": 72.0, "diamond": 180.0, "cross": 90.0}

MARGIN = 0.03  # kept between objects, and between objects and the frame edge


# ----------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------


@dataclass
class ObjectSpec:
    shape: str
    colour: str
    size: str  # "small" | "large"
    action: str
    speed: str  # "slow" | "fast"
    x: float  # centre at the start of the action, fraction of the width
    y: float  # fraction of the height
    angle: float = 0.0  # initial rotation, degrees
    clockwise: bool = True  # orbit and spin direction
    event: str | None = None  # "appear" | "leave" | None
    event_frame: int = 0  # the first frame shown ("appear") or the first frame gone ("leave")

    def visible_frames(self, num_frames: int) -> np.ndarray:
        """bool (T,): when the object is on screen (events and blinking)."""
        visible = np.ones(num_frames, bool)
        if self.event == "appear":
            visible[: self.event_frame] = False
        elif self.event == "leave":
            visible[self.event_frame :] = False
        if self.action == "blink":
            period = max(1, round(num_frames / (4 if self.speed == "slow" else 8)))
            visible &= (np.arange(num_frames) // period) % 2 == 0
        return visible


@dataclass
class Scene:
    seed: int
    num_frames: int
    height: int
    width: int
    background: str
    texture: str
    objects: list[ObjectSpec] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        data = dict(data)
        data["objects"] = [ObjectSpec(**o) for o in data["objects"]]
        return cls(**data)


@dataclass
class ObjectStates:
    """Per-frame state of one object, all arrays (T,)."""

    x: np.ndarray  # centre, fraction of the width
    y: np.ndarray  # centre, fraction of the height
    scale: np.ndarray  # multiplies the size's circumradius
    angle: np.ndarray  # degrees
    visible: np.ndarray  # bool


def object_states(obj: ObjectSpec, num_frames: int) -> ObjectStates:
    """The motion model: where the object is, how big and how turned, in each frame."""
    T = num_frames
    t = np.linspace(0.0, 1.0, T) if T > 1 else np.zeros(1)
    fast = obj.speed == "fast"
    x = np.full(T, obj.x)
    y = np.full(T, obj.y)
    scale = np.ones(T)
    angle = np.full(T, obj.angle)
    turn = -1.0 if obj.clockwise else 1.0
    a = obj.action
    if a in MOVES:
        dx, dy = MOVES[a]
        distance = MOVE_DISTANCE[obj.speed]
        x, y = obj.x + dx * distance * t, obj.y + dy * distance * t
    elif a == "bounce":  # a ball bouncing on the floor at y
        bounces, height = (3, 0.3) if fast else (2, 0.22)
        y = obj.y - height * np.abs(np.sin(math.pi * bounces * t))
    elif a == "zigzag":  # travels sideways while swinging up and down
        side = 1.0 if obj.clockwise else -1.0
        x = obj.x + side * 0.4 * t
        y = obj.y + 0.1 * _triangle_wave((3 if fast else 2) * t)
    elif a == "orbit":  # circles around (x, y)
        radius, turns = ORBIT_RADIUS, (2.0 if fast else 1.0)
        phase = math.radians(obj.angle) + turn * 2 * math.pi * turns * t
        x, y = obj.x + radius * np.cos(phase), obj.y + radius * np.sin(phase)
    elif a == "shake":  # quick small side-to-side oscillation
        x = obj.x + 0.06 * np.sin(2 * math.pi * (4 if fast else 3) * t)
    elif a == "spin":
        total = 360.0 if fast else 180.0
        total = min(total, 30.0 * max(1, T - 1))  # at most 30 degrees a frame, so it reads as turning
        angle = obj.angle + turn * total * t
    elif a == "grow":
        scale = 0.6 + 0.8 * t
    elif a == "shrink":
        scale = 1.4 - 0.8 * t
    elif a == "pulse":
        scale = 1.0 + 0.35 * np.sin(2 * math.pi * (3 if fast else 2) * t)
    elif a not in ("stay_still", "blink"):
        raise ValueError(f"unknown action {a!r}; known: {list(ACTIONS)}")
    return ObjectStates(np.asarray(x, float), np.asarray(y, float), scale, angle, obj.visible_frames(T))


MOVE_DISTANCE = {"slow": 0.35, "fast": 0.5}
ORBIT_RADIUS = 0.16


def _triangle_wave(u: np.ndarray) -> np.ndarray:
    """Period 1, range [-1, 1], starting at 0 going up."""
    return 2 * np.abs(2 * ((u + 0.25) % 1.0) - 1) - 1


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def sample_scene(
    seed: int,
    num_frames: int = 16,
    height: int = 64,
    width: int = 64,
    actions: tuple[str, ...] | None = None,
    num_objects: int | None = None,
    max_objects: int = 4,
    event_probability: float = 0.35,
) -> Scene:
    """Draw a scene deterministically from `seed`.

    Args:
        actions: the actions objects may take (default: every action not held out by default).
        num_objects: exactly this many objects; default 1..max_objects uniformly. Objects that
            cannot be placed without overlapping are dropped (rare below 4).
        event_probability: chance that an object whose action allows it appears or leaves mid-clip.
    """
    if num_frames < 2:
        raise ValueError(f"a scene needs at least 2 frames, got {num_frames}")
    if min(height, width) < 16:
        raise ValueError(f"frames must be at least 16x16, got {height}x{width}")
    actions = tuple(a for a in ACTIONS if a not in DEFAULT_HELD_OUT) if actions is None else tuple(actions)
    unknown = set(actions) - set(ACTIONS)
    if unknown or not actions:
        raise ValueError(f"unknown or no actions {sorted(unknown)}; known: {list(ACTIONS)}")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, max_objects + 1)) if num_objects is None else num_objects
    scene = Scene(
        seed=seed,
        num_frames=num_frames,
        height=height,
        width=width,
        background=str(rng.choice(list(BACKGROUNDS))),
        texture=str(rng.choice(TEXTURES)),
    )
    colours = [str(c) for c in rng.permutation(list(COLOURS))[:n]]
    placed: list[tuple[ObjectSpec, ObjectStates]] = []
    for colour in colours:
        for _ in range(60):  # rejection sampling until the object fits among the others
            obj = _sample_object(rng, colour, actions, num_frames, event_probability)
            states = object_states(obj, num_frames)
            if _fits(obj, states, placed, height, width):
                placed.append((obj, states))
                break
    scene.objects = [obj for obj, _ in placed]
    return scene


def _sample_object(rng, colour, actions, T, event_probability) -> ObjectSpec:
    action = str(rng.choice(actions))
    shape = str(rng.choice([s for s in SHAPES if not (action == "spin" and SYMMETRY[s] == 0)]))
    obj = ObjectSpec(
        shape=shape,
        colour=colour,
        size=str(rng.choice(list(SIZES))),
        action=action,
        speed=str(rng.choice(SPEEDS)),
        x=float(rng.uniform(0.15, 0.85)),
        y=float(rng.uniform(0.15, 0.85)),
        angle=float(rng.uniform(0, 360)) if action == "orbit" else 0.0,
        clockwise=bool(rng.integers(2)),
    )
    if action in EVENT_ACTIONS and T >= 8 and rng.random() < event_probability:
        obj.event = str(rng.choice(EVENTS))
        # On screen for at least 60% of the clip, so its action still reads: it appears within
        # [20%, 40%] of the frames, or leaves within [60%, 80%].
        lo, hi = (0.2, 0.4) if obj.event == "appear" else (0.6, 0.8)
        obj.event_frame = int(rng.integers(math.ceil(lo * T), math.floor(hi * T) + 1))
    return obj


def _fits(obj: ObjectSpec, states: ObjectStates, placed, height: int, width: int) -> bool:
    """Inside the frame in every frame, and clear of every placed object whenever both show."""
    r = SIZES[obj.size] * states.scale  # (T,) circumradius, fraction of the short side
    short = min(height, width)
    rx, ry = r * short / width, r * short / height
    v = states.visible
    if np.any((states.x - rx < MARGIN) & v) or np.any((states.x + rx > 1 - MARGIN) & v):
        return False
    if np.any((states.y - ry < MARGIN) & v) or np.any((states.y + ry > 1 - MARGIN) & v):
        return False
    for other, o in placed:
        both = v & o.visible
        gap = np.hypot((states.x - o.x) * width, (states.y - o.y) * height) / short
        needed = r + SIZES[other.size] * o.scale + MARGIN
        if np.any((gap < needed) & both):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Geometry and rendering
# ----------------------------------------------------------------------------------------------


def _regular(n: int, radius: float = 1.0, start: float = -90.0) -> np.ndarray:
    angles = np.radians(start + 360.0 * np.arange(n) / n)
    return radius * np.stack([np.cos(angles), np.sin(angles)], 1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular(points)
    inner_pts = _regular(points, inner, start=-90.0 + 180.0 / points)
    return np.stack([outer, inner_pts], 1).reshape(-1, 2)


_ARM = 0.32
POLYGONS = {  # unit circumradius, centroid at the origin
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) / math.sqrt(2),
    "triangle": _regular(3),
    "star": _star(),
    "diamond": np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]]),
    "cross": np.array(
        [[-_ARM, -1], [_ARM, -1], [_ARM, -_ARM], [1, -_ARM], [1, _ARM], [_ARM, _ARM],
         [_ARM, 1], [-_ARM, 1], [-_ARM, _ARM], [-1, _ARM], [-1, -_ARM], [-_ARM, -_ARM]]
    ),
}
CIRCLE_RADIUS = 0.85  # a circle of circumradius 1 would look bigger than the polygons


def shape_distance(shape: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from points in unit shape coordinates to the outline."""
    if shape == "circle":
        return np.hypot(px, py) - CIRCLE_RADIUS
    poly = POLYGONS[shape].astype(px.dtype)
    a, b = poly, np.roll(poly, -1, axis=0)  # edges a -> b
    p = np.stack([px, py], -1)[..., None, :]  # (..., 1, 2)
    ab = b - a
    w = p - a  # (..., E, 2)
    h = np.clip((w * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
    gap = w - h[..., None] * ab
    dist = np.sqrt((gap * gap).sum(-1).min(-1))
    # Even-odd rule: count the edges a horizontal ray from the point crosses.
    ay, by = a[:, 1], b[:, 1]
    pyy, pxx = p[..., 1], p[..., 0]
    crosses = ((ay > pyy) != (by > pyy)) & (
        pxx < a[:, 0] + (pyy - ay) * ab[:, 0] / np.where(ab[:, 1] == 0, 1e-12, ab[:, 1]))
    inside = crosses.sum(-1) % 2 == 1
    return np.where(inside, -dist, dist)


def coverage(shape: str, cx: float, cy: float, radius_px: float, angle, height: int, width: int,
             box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Antialiased coverage in [0, 1] of a shape drawn in pixel space.

    Args:
        cx, cy: centre in pixels (pixel centres at integer + 0.5).
        radius_px: circumradius in pixels.
        angle: degrees, counter-clockwise on screen; a float, or an array of A angles.
        box: (top, left, bottom, right) to evaluate only that window; default the whole frame.

    Returns:
        float32 (h, w) with h = bottom - top and w = right - left, or (A, h, w) for A angles.
    """
    top, left, bottom, right = box if box is not None else (0, 0, height, width)
    ys, xs = np.mgrid[top:bottom, left:right].astype(np.float64) + 0.5
    theta = np.radians(np.asarray(angle, np.float64))[..., None, None]  # (..., 1, 1)
    c, s = np.cos(theta), np.sin(theta)
    dx, dy = xs - cx, ys - cy
    # Rotate back into the shape's frame (screen y is down, so counter-clockwise is -angle).
    ux = ((c * dx - s * dy) / radius_px).astype(np.float32)
    uy = ((s * dx + c * dy) / radius_px).astype(np.float32)
    d = shape_distance(shape, ux, uy) * radius_px  # pixels
    return np.clip(0.5 - d, 0.0, 1.0).astype(np.float32)


def background_image(scene: Scene) -> np.ndarray:
    """float32 (H, W, 3): the static background (texture drawn from the scene's seed)."""
    H, W = scene.height, scene.width
    base = np.array(BACKGROUNDS[scene.background], np.float32)
    image = np.broadcast_to(base, (H, W, 3)).copy()
    rng = np.random.default_rng([scene.seed, 7])
    if scene.texture == "noise":
        image += rng.normal(0.0, 5.0, (H, W, 1)).astype(np.float32)
    elif scene.texture == "gradient":
        direction = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:H, 0:W] / max(H, W)
        image += (12.0 * (math.cos(direction) * xs + math.sin(direction) * ys))[..., None].astype(np.float32)
    elif scene.texture == "stripes":
        period = rng.uniform(0.15, 0.3) * max(H, W)
        ys, xs = np.mgrid[0:H, 0:W]
        image += (8.0 * np.sign(np.sin(2 * math.pi * (xs + ys) / period)))[..., None].astype(np.float32)
    return np.clip(image, 0, 255)


def render(scene: Scene) -> np.ndarray:
    """uint8 (T, H, W, 3): the scene's frames."""
    T, H, W = scene.num_frames, scene.height, scene.width
    frames = np.repeat(background_image(scene)[None], T, axis=0)
    short = min(H, W)
    for obj in scene.objects:
        st = object_states(obj, T)
        colour = np.array(COLOURS[obj.colour], np.float32)
        for t in np.flatnonzero(st.visible):
            radius = SIZES[obj.size] * st.scale[t] * short
            cx, cy = st.x[t] * W, st.y[t] * H
            box = (max(0, int(cy - radius) - 2), max(0, int(cx - radius) - 2),
                   min(H, int(cy + radius) + 3), min(W, int(cx + radius) + 3))
            alpha = coverage(obj.shape, cx, cy, radius, st.angle[t], H, W, box)[..., None]
            window = frames[t, box[0] : box[2], box[1] : box[3]]
            window *= 1.0 - alpha
            window += alpha * colour
    return np.round(frames).clip(0, 255).astype(np.uint8)
