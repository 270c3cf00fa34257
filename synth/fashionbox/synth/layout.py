"""Scene plans: which garments, with which attributes and colours, where, in paint order.

Two kinds of scene:

* **flat-lay**: garments scattered at varied sizes and small rotations, overlapping at most
  ``SceneConfig.max_overlap`` of their extent;
* **outfit**: one standing figure dressed from head to toe (hat over head, top over the waist of
  pants or skirt, shoes over the hems, a bag in one hand), so occlusion is natural; garments
  left in the budget are scattered beside it.

Plans are made in *image units* (the image's long side is 1), never pixels, and draw only from
``rnd``, so the same seed gives the same picture at any resolution.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from fashionbox.contract.labels import LabelMap

from .canvas import Affine, Drawing, Paint, Point
from .colours import RGB, distance, hair_colour, mix, pick_distinct, scaled, skin_tone
from .config import SceneConfig
from .figure import FIGURE_FLOOR_Y, FIGURE_TOP_Y, HAT_TOP_Y, draw_body, figure_placement
from .garments import (
    NECKLINE_GROUP,
    NECKLINES,
    SLEEVE_COVER,
    SLEEVE_GROUP,
    GarmentKind,
    GarmentParams,
    Neckline,
    Role,
)
from .identity import GarmentIdentity
from .patterns import PATTERN_GROUP, PATTERN_LABELS, PatternKind, PatternSpec, sample_pattern

__all__ = ["Placed", "plan_product", "plan_scene"]

_MIN_GROUND_CONTRAST = 80.0
"""Fabric against skin and background: enough that a sleeve end and a silhouette are visible."""
_ACCENTS: tuple[RGB, ...] = ((245, 245, 240), (25, 25, 28), (200, 160, 60), (120, 80, 50), (170, 170, 175))
_INNERS: tuple[RGB, ...] = ((248, 248, 245), (225, 230, 240), (30, 30, 35), (150, 150, 155), (210, 195, 170))
_WHITE: RGB = (255, 255, 255)
_CLOSEUP_PROBABILITY = 0.25
_EXTRA_CHANCE = {Role.FEET: 0.8, Role.HEAD: 0.35, Role.HAND: 0.6}
"""Chance a figure wears shoes, a hat, carries a bag (when the budget allows): keeps categories balanced."""


_Rect = tuple[float, float, float, float]
_Obstacle = tuple[_Rect, float]
"""An extent already taken, and how much of it (or of the newcomer) a new garment may cover."""


@dataclass(frozen=True)
class Placed:
    """One drawing placed in the image, with its colours; ``category`` is ``None`` for the figure's body."""

    drawing: Drawing
    transform: Affine
    """Garment units to image units (long side = 1)."""
    colours: Mapping[Paint, RGB]
    pattern: PatternSpec
    category: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    identity: int | None = None
    """The :class:`GarmentIdentity` this garment is, when the scene was asked to place one."""


@dataclass(frozen=True)
class _Context:
    rnd: random.Random
    label_map: LabelMap
    catalogue: Mapping[str, GarmentKind]
    config: SceneConfig
    width: float
    """Image width in image units (1 when landscape)."""
    height: float
    background: tuple[RGB, ...]
    identities: tuple[GarmentIdentity, ...] = ()


def plan_scene(rnd: random.Random, label_map: LabelMap, catalogue: Mapping[str, GarmentKind], config: SceneConfig,
               size: tuple[int, int], background: Sequence[RGB],
               identities: Sequence[GarmentIdentity] = ()) -> list[Placed]:
    """Everything to paint, in paint order (later covers earlier).

    ``identities`` are placed first (worn by the figure where their role is free, else laid
    flat), drawn as themselves; the rest of the garment budget is random as usual.
    """
    long_side = max(size)
    ctx = _Context(rnd, label_map, catalogue, config, size[0] / long_side, size[1] / long_side, tuple(background),
                   tuple(identities))
    budget = rnd.randint(config.min_garments, config.max_garments)
    if rnd.random() < config.outfit_probability:
        placed = _plan_outfit(ctx, budget)
        if placed:
            garments = sum(1 for p in placed if p.category is not None)
            # Garments scattered beside a figure never cover it: nothing floats in front of a person.
            figure = _union([_extent(p) for p in placed])
            worn = {p.identity for p in placed if p.identity is not None}
            rest = [i for i in ctx.identities if i.identity not in worn]
            return placed + _plan_flat_lay(ctx, budget - garments, [(figure, 0.0)], rest)
    return _plan_flat_lay(ctx, budget, [], ctx.identities)


def plan_product(rnd: random.Random, catalogue: Mapping[str, GarmentKind], size: tuple[int, int],
                 identity: GarmentIdentity, fill: float, rotation_deg: float) -> Placed:
    """A product photo's one garment: ``identity`` centred, its box's long side ``fill`` of the frame's."""
    long_side = max(size)
    width, height = size[0] / long_side, size[1] / long_side
    arms = (rnd.uniform(0.15, 0.45), rnd.uniform(0.15, 0.45))
    params = GarmentParams(identity.sleeve_cover, identity.neckline, arms, rnd.uniform(0.24, 0.34))
    drawing = catalogue[identity.category].draw(params, random.Random(identity.shape_seed))
    x0, y0, x1, y1 = drawing.bounds()
    scale = min(fill * width / max(x1 - x0, 1e-6), fill * height / max(y1 - y0, 1e-6))
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    jitter = (1 - fill) * 0.25
    cx = width / 2 + rnd.uniform(-jitter, jitter) * width
    cy = height / 2 + rnd.uniform(-jitter, jitter) * height
    transform = Affine.place((cx, cy), scale, math.radians(rotation_deg)).then(
        Affine.translation(-centre[0], -centre[1]))
    colours = {**identity.colours, Paint.SKIN: skin_tone(rnd), Paint.HAIR: hair_colour(rnd)}
    return Placed(drawing, transform, colours, identity.pattern, identity.category, dict(identity.attributes),
                  identity.identity)


# -- garments: attributes, geometry, colours ------------------------------------------------------


def _attributes(ctx: _Context, category: str) -> dict[str, str]:
    return {group: ctx.rnd.choice(ctx.label_map.group(group).labels) for group in ctx.label_map.groups_for(category)}


def _params(ctx: _Context, attributes: Mapping[str, str], arms: tuple[float, float], legs: float) -> GarmentParams:
    """Geometry from the labels; what a category is not labelled with is still drawn, at random."""
    sleeve = attributes.get(SLEEVE_GROUP) or ctx.rnd.choice(sorted(SLEEVE_COVER))
    neckline = attributes.get(NECKLINE_GROUP)
    neck = NECKLINES[neckline] if neckline else ctx.rnd.choice(list(Neckline))
    return GarmentParams(SLEEVE_COVER[sleeve], neck, arms, legs)


def _colours(ctx: _Context, attributes: Mapping[str, str], skin: RGB, hair: RGB,
             ) -> tuple[dict[Paint, RGB], PatternSpec]:
    rnd = ctx.rnd
    ground = pick_distinct(rnd, [skin, *ctx.background], _MIN_GROUND_CONTRAST)
    label = attributes.get(PATTERN_GROUP)
    kind = PATTERN_LABELS[label] if label else PatternKind.PLAIN
    pattern = sample_pattern(kind, rnd, ground, avoid=[skin])
    # Seams and ribbing are darker than the fabric, or lighter where the fabric is too dark for that.
    dark = sum(ground) < 180
    colours = {
        Paint.PATTERN: ground,
        Paint.SHADE: mix(ground, _WHITE, 0.22) if dark else scaled(ground, 0.7),
        Paint.OUTLINE: mix(ground, _WHITE, 0.4) if dark else scaled(ground, 0.5),
        Paint.ACCENT: max(_ACCENTS, key=lambda c: distance(c, ground) + rnd.uniform(0, 150)),
        Paint.INNER: max(_INNERS, key=lambda c: distance(c, ground) + rnd.uniform(0, 150)),
        Paint.SKIN: skin,
        Paint.HAIR: hair,
    }
    return colours, pattern


_PlaceFn = Callable[[Drawing], Affine | None]
"""Where a drawing goes (garment units to image units), or ``None`` where there is no room."""

_IDENTITY = Affine.translation(0.0, 0.0)


def _garment(ctx: _Context, category: str, place: _PlaceFn, skin: RGB, hair: RGB,
             arms: tuple[float, float], legs: float, identity: GarmentIdentity | None = None) -> Placed | None:
    if identity is not None:
        # The identity's own labels, shape draws, colours and pattern; only the pose is the scene's.
        params = GarmentParams(identity.sleeve_cover, identity.neckline, arms, legs)
        drawing = ctx.catalogue[category].draw(params, random.Random(identity.shape_seed))
        transform = place(drawing)
        if transform is None:
            return None
        colours = {**identity.colours, Paint.SKIN: skin, Paint.HAIR: hair}
        return Placed(drawing, transform, colours, identity.pattern, category, dict(identity.attributes),
                      identity.identity)
    attributes = _attributes(ctx, category)
    params = _params(ctx, attributes, arms, legs)
    drawing = ctx.catalogue[category].draw(params, ctx.rnd)
    colours, pattern = _colours(ctx, attributes, skin, hair)
    transform = place(drawing)
    if transform is None:
        return None
    return Placed(drawing, transform, colours, pattern, category, attributes)


# -- flat-lay -------------------------------------------------------------------------------------


def _plan_flat_lay(ctx: _Context, count: int, obstacles: list[_Obstacle],
                   identities: Sequence[GarmentIdentity] = ()) -> list[Placed]:
    placed: list[Placed] = []
    for k in range(max(len(identities), count)):
        identity = identities[k] if k < len(identities) else None
        category = identity.category if identity is not None else ctx.rnd.choice(ctx.label_map.category_names)
        arms = (ctx.rnd.uniform(0.15, 0.7), ctx.rnd.uniform(0.15, 0.7))

        def place(drawing: Drawing, category: str = category) -> Affine | None:
            return _flat_position(ctx, category, drawing, obstacles)

        item = _garment(ctx, category, place, skin_tone(ctx.rnd), hair_colour(ctx.rnd), arms,
                        ctx.rnd.uniform(0.24, 0.36), identity)
        if item is not None:
            placed.append(item)
            obstacles.append((_extent(item), ctx.config.max_overlap))
    return placed


def _flat_position(ctx: _Context, category: str, drawing: Drawing, obstacles: Sequence[_Obstacle]) -> Affine | None:
    """Size from the category's range, then a spot that overlaps the others little enough."""
    rnd, config = ctx.rnd, ctx.config
    low, high = ctx.catalogue[category].size_range
    low = min(max(low, config.min_box_fraction), config.max_box_fraction)
    high = max(min(high, config.max_box_fraction), low)
    gx0, gy0, gx1, gy1 = drawing.bounds(garment_only=True)
    fx0, fy0, fx1, fy1 = drawing.bounds()
    full_w, full_h = fx1 - fx0, fy1 - fy0
    slack = 1.0 - 2 * config.max_outside_fraction
    fraction = math.exp(rnd.uniform(math.log(low), math.log(high)))
    scale = fraction / max(gx1 - gx0, gy1 - gy0, 1e-6)
    scale = min(scale, ctx.width / (full_w * slack), ctx.height / (full_h * slack))
    rotation = math.radians(rnd.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    for attempt in range(16):
        if attempt and attempt % 4 == 0:
            scale = max(scale * 0.8, low / max(gx1 - gx0, gy1 - gy0, 1e-6))
        w, h = full_w * scale, full_h * scale
        margin_x, margin_y = w * (0.5 - config.max_outside_fraction), h * (0.5 - config.max_outside_fraction)
        cx = rnd.uniform(min(margin_x, ctx.width / 2), max(ctx.width - margin_x, ctx.width / 2))
        cy = rnd.uniform(min(margin_y, ctx.height / 2), max(ctx.height - margin_y, ctx.height / 2))
        rect = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if all(_covered(rect, other) <= limit for other, limit in obstacles):
            centre = ((fx0 + fx1) / 2, (fy0 + fy1) / 2)
            return Affine.place((cx, cy), scale, rotation).then(Affine.translation(-centre[0], -centre[1]))
    return None


def _covered(a: _Rect, b: _Rect) -> float:
    """Fraction of the smaller rectangle that the other covers."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / max(smaller, 1e-12)


def _union(rects: Sequence[_Rect]) -> _Rect:
    return (min(r[0] for r in rects), min(r[1] for r in rects), max(r[2] for r in rects), max(r[3] for r in rects))


def _extent(item: Placed) -> _Rect:
    x0, y0, x1, y1 = item.drawing.bounds()
    corners = item.transform.points([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    return (min(xs), min(ys), max(xs), max(ys))


# -- outfit on a figure ----------------------------------------------------------------------------


def _by_role(ctx: _Context) -> dict[Role, list[str]]:
    roles: dict[Role, list[str]] = {role: [] for role in Role}
    for name, kind in ctx.catalogue.items():
        roles[kind.role].append(name)
    return roles


def _outfit_categories(ctx: _Context, budget: int, closeup: bool) -> list[tuple[Role, str]]:
    """The clothes of the figure, within the garment budget (two shoes count as two).

    A close-up frames the figure from the head to the hips, so it wears nothing below the
    waist that the frame would cut to a sliver (an unannotatable, visible garment).
    """
    rnd, roles = ctx.rnd, _by_role(ctx)
    has_lower = bool(roles[Role.LOWER]) and not closeup
    if budget == 1 and rnd.random() < 0.6:
        return []  # a flat-lay instead: a lone dress on a figure would crowd out the other categories
    # Upper + lower garment, or a dress: the figure is never left without clothes.
    can_split = bool(roles[Role.UPPER]) and (closeup or (has_lower and budget >= 2))
    wants_dress = rnd.random() < (0.3 if closeup else 0.15)
    if roles[Role.FULL] and (wants_dress or not can_split):
        chosen = [(Role.FULL, rnd.choice(roles[Role.FULL]))]
    elif can_split:
        chosen = [(Role.UPPER, rnd.choice(roles[Role.UPPER]))]
        if has_lower:
            chosen.append((Role.LOWER, rnd.choice(roles[Role.LOWER])))
    else:
        return []
    extras = [role for role in (Role.FEET, Role.HEAD, Role.HAND) if roles[role] and not (closeup and role is Role.FEET)]
    rnd.shuffle(extras)
    left = budget - len(chosen)
    for role in extras:
        cost = 2 if role is Role.FEET else 1
        if cost <= left and rnd.random() < _EXTRA_CHANCE[role]:
            chosen.append((role, rnd.choice(roles[role])))
            left -= cost
    return chosen


_PAINT_ORDER = (Role.LOWER, Role.FEET, Role.UPPER, Role.FULL, Role.HEAD, Role.HAND)


def _plan_outfit(ctx: _Context, budget: int) -> list[Placed]:
    rnd = ctx.rnd
    closeup = rnd.random() < _CLOSEUP_PROBABILITY
    chosen = _wear_identities(ctx, _outfit_categories(ctx, budget, closeup), closeup)
    if not chosen:
        return []
    chosen.sort(key=lambda rc: _PAINT_ORDER.index(rc[0]))
    skin, hair = skin_tone(rnd), hair_colour(rnd)
    arms = (rnd.uniform(0.1, 0.45), rnd.uniform(0.1, 0.45))
    legs = rnd.uniform(0.24, 0.34)
    pose = GarmentParams(arm_angles=arms, leg_spread=legs)
    body = draw_body(pose, long_hair=rnd.random() < 0.4)
    # Figure units first; the figure transform is known once all pieces are drawn.
    pieces: list[tuple[Placed, Affine]] = []
    hands: Mapping[str, Point] = {}
    for role, category, identity in chosen:
        item = _garment(ctx, category, lambda drawing: _IDENTITY, skin, hair, arms, legs, identity)
        if item is None:
            continue
        if role in (Role.UPPER, Role.FULL):
            hands = item.drawing.anchors
        # A pair of shoes is one drawing placed twice: the two match.
        for origin, mirror in _origins(role, pose, hands, rnd):
            pieces.append((item, Affine.place(origin, 1.0, mirror=mirror)))
    has_hat = any(role is Role.HEAD for role, _, _ in chosen)
    figure = _figure_transform(ctx, pieces, has_hat, rnd.uniform(1.3, 1.8) if closeup else None)
    body_colours = {Paint.SKIN: skin, Paint.HAIR: hair}
    placed = [Placed(body, figure, body_colours, sample_pattern(PatternKind.PLAIN, rnd, skin))]
    for item, local in pieces:
        placed.append(Placed(item.drawing, figure.then(local), item.colours, item.pattern, item.category,
                             item.attributes, item.identity))
    return placed


def _wear_identities(ctx: _Context, chosen: Sequence[tuple[Role, str]], closeup: bool,
                     ) -> list[tuple[Role, str, GarmentIdentity | None]]:
    """The outfit with the scene's identities put on in place of what their role displaces.

    A dress displaces the top and the bottom, a top or a bottom displaces a dress; an identity
    that cannot be worn here (shoes in a close-up, a second identity of one role) stays for the
    flat-lay beside the figure.
    """
    outfit: list[tuple[Role, str, GarmentIdentity | None]] = [(role, name, None) for role, name in chosen]
    if not outfit:
        return outfit
    displaces = {Role.FULL: {Role.UPPER, Role.LOWER, Role.FULL}, Role.UPPER: {Role.UPPER, Role.FULL},
                 Role.LOWER: {Role.LOWER, Role.FULL}}
    for identity in ctx.identities:
        role = ctx.catalogue[identity.category].role
        if (closeup and role in (Role.FEET, Role.LOWER)) or any(i is not None and r is role for r, _, i in outfit):
            continue
        gone = displaces.get(role, {role})
        outfit = [entry for entry in outfit if entry[0] not in gone]
        outfit.append((role, identity.category, identity))
    return outfit


def _origins(role: Role, pose: GarmentParams, hands: Mapping[str, Point], rnd: random.Random,
             ) -> list[tuple[Point, bool]]:
    if role is Role.HAND:
        names = sorted(hands)
        if not names:
            return [((0.65, 1.45), False)]
        hand = hands[rnd.choice(names)]
        return [(hand, False)]
    return figure_placement(role, pose)


def _figure_transform(ctx: _Context, pieces: Sequence[tuple[Placed, Affine]], has_hat: bool,
                      cut: float | None) -> Affine:
    """Scale the figure to 65-97 % of the image height (or what its width allows) and stand it in the frame.

    With ``cut`` (figure units), the frame holds the figure from the top of the head down to
    ``cut`` only, and the rest of the figure runs out of the bottom of the picture.
    """
    rnd = ctx.rnd
    xs: list[float] = []
    for item, local in pieces:
        x0, y0, x1, y1 = item.drawing.bounds()
        xs += [p[0] for p in local.points([(x0, y0), (x1, y1)])]
    left, right = min([*xs, -0.7]), max([*xs, 0.7])
    top = HAT_TOP_Y if has_hat else FIGURE_TOP_Y
    bottom = FIGURE_FLOOR_Y + 0.03 if cut is None else cut
    fraction = rnd.uniform(0.65, 0.97) if cut is None else rnd.uniform(0.9, 1.0)
    scale = min(fraction * ctx.height / (bottom - top), 0.95 * ctx.width / (right - left))
    rotation = math.radians(rnd.uniform(-3.0, 3.0))
    width, height = (right - left) * scale, (bottom - top) * scale
    cx = rnd.uniform(width / 2, max(ctx.width - width / 2, width / 2))
    cy = rnd.uniform(height / 2, max(ctx.height - height / 2, height / 2))
    if cut is not None:
        cy = ctx.height - height / 2
    centre = ((left + right) / 2, (top + bottom) / 2)
    return Affine.place((cx, cy), scale, rotation).then(Affine.translation(-centre[0], -centre[1]))
