"""Make the patch engine's default reference images: procedural materials, released under CC0.

Run `python assets/references/make_references.py` from the repository root; it is deterministic (fixed seeds)
and rewrites every PNG and references.json. Only numpy and Pillow: noise comes from filtering white noise
in Fourier space, so every texture is periodic and tiles seamlessly; relief is shaded from a height map.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

S = 128
HERE = Path(__file__).resolve().parent
Y, X = np.mgrid[0:S, 0:S].astype(np.float64)
U, V = X / S, Y / S  # 0..1 across the tile: any function of sin(2π·n·U) with integer n tiles


# --- building blocks ------------------------------------------------------------------------------------


def noise(rng: np.random.Generator, beta: float = 2.0, low: float = 1.0) -> np.ndarray:
    """Periodic fractal noise in [0, 1]: white noise with a 1/f^beta power spectrum."""
    f = np.sqrt(np.fft.fftfreq(S)[:, None] ** 2 + np.fft.fftfreq(S)[None, :] ** 2) * S
    amp = np.where(f >= low, 1.0 / np.maximum(f, 1e-9) ** (beta / 2), 0.0)
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((S, S))) * amp).real
    return (field - field.min()) / (np.ptp(field) + 1e-12)


def stretched(rng: np.random.Generator, along_x: float, along_y: float) -> np.ndarray:
    """Anisotropic periodic noise: low frequencies along one axis make streaks (brushed metal, grain)."""
    fy, fx = np.fft.fftfreq(S)[:, None] * S, np.fft.fftfreq(S)[None, :] * S
    amp = np.exp(-((fx / along_x) ** 2) - (fy / along_y) ** 2)
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((S, S))) * amp).real
    return (field - field.min()) / (np.ptp(field) + 1e-12)


def voronoi(rng: np.random.Generator, n: int, jitter: float = 1.0) -> tuple[np.ndarray, ...]:
    """Periodic Voronoi cells: (nearest distance, second distance, cell id) in pixels."""
    side = int(np.ceil(np.sqrt(n)))
    gy, gx = np.mgrid[0:side, 0:side]
    pts = np.stack([gy.ravel(), gx.ravel()], 1) + 0.5 + (rng.random((side * side, 2)) - 0.5) * jitter
    pts = pts * S / side
    dy = np.abs(Y[..., None] - pts[:, 0])
    dx = np.abs(X[..., None] - pts[:, 1])
    d = np.hypot(np.minimum(dy, S - dy), np.minimum(dx, S - dx))
    order = np.argsort(d, axis=-1)
    d1 = np.take_along_axis(d, order[..., :1], -1)[..., 0]
    d2 = np.take_along_axis(d, order[..., 1:2], -1)[..., 0]
    return d1, d2, order[..., 0]


def shade(height: np.ndarray, strength: float = 4.0, spec: float = 0.0, shine: float = 20.0) -> tuple:
    """Lambert and Phong terms for a height map lit from the top left (periodic gradients)."""
    gx = (np.roll(height, -1, 1) - np.roll(height, 1, 1)) * strength
    gy = (np.roll(height, -1, 0) - np.roll(height, 1, 0)) * strength
    n = np.stack([-gx, -gy, np.ones_like(gx)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    light = np.array([-0.5, -0.6, 0.62])
    light /= np.linalg.norm(light)
    diffuse = np.clip(n @ light, 0, 1)
    half = light + np.array([0, 0, 1.0])
    half /= np.linalg.norm(half)
    specular = spec * np.clip(n @ half, 0, 1) ** shine
    return diffuse, specular


def ramp(t: np.ndarray, *colours: tuple[int, int, int]) -> np.ndarray:
    """Map t in [0, 1] through evenly spaced colour stops to an H×W×3 float image in [0, 1]."""
    stops = np.array(colours, dtype=np.float64) / 255.0
    pos = np.clip(t, 0, 1) * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[..., None]
    return stops[i] * (1 - f) + stops[i + 1] * f


def lit(base: np.ndarray, height: np.ndarray, strength: float = 4.0, spec: float = 0.0, shine: float = 20.0):
    """Base colour lit by a height map, with an optional specular highlight tinted like a metal."""
    diffuse, specular = shade(height, strength, spec, shine)
    return base * (0.35 + 0.75 * diffuse)[..., None] + specular[..., None] * (0.5 + 0.5 * base)


def wave(n: float, coord: np.ndarray, phase: float | np.ndarray = 0.0) -> np.ndarray:
    """0..1 sinusoid with n whole periods across the tile."""
    return 0.5 + 0.5 * np.sin(2 * np.pi * n * coord + phase)


# --- materials ------------------------------------------------------------------------------------------


def brick(rng):
    row = (Y // 16).astype(int)
    shifted = (X + (row % 2) * 16) % S
    col = (shifted // 32).astype(int)
    mortar = np.minimum(np.minimum(Y % 16, 16 - Y % 16), np.minimum(shifted % 32, 32 - shifted % 32))
    height = np.clip(mortar / 2.0, 0, 1) + 0.15 * noise(rng)
    tone = rng.random((S // 16, S // 32))[row, col]
    base = ramp(0.35 * tone + 0.5 * noise(rng, 1.2), (120, 40, 28), (170, 70, 45), (196, 110, 80))
    base = np.where((mortar < 1.5)[..., None], ramp(noise(rng), (150, 145, 135), (190, 185, 175)), base)
    return lit(base, height, 3.0)


def wood_grain(rng):
    # Growth rings seen on a plank: wobbling stripes, darker late wood, fine fibres along the grain.
    wobble = 0.08 * noise(rng, 4.5) + 0.01 * np.sin(2 * np.pi * (2 * U + noise(rng, 4.0)))
    phase = (V * 10 + wobble * 10) % 1
    late = np.clip((phase - 0.7) / 0.3, 0, 1) ** 1.5
    fibres = stretched(rng, 1.2, 40)
    tone = 0.75 - 0.5 * late + 0.2 * (fibres - 0.5) + 0.1 * (noise(rng, 1.8) - 0.5)
    return ramp(tone, (95, 55, 25), (160, 105, 58), (215, 165, 110))


def marble(rng):
    turb = noise(rng, 3.6) * 5.0 + noise(rng, 2.6) * 0.8
    veins = (1 - np.abs(np.sin(2 * np.pi * (U + 2 * V) + turb))) ** 6
    fine = (1 - np.abs(np.sin(2 * np.pi * (3 * U - V) + noise(rng, 3.2) * 7))) ** 12
    tone = 0.95 - 0.75 * veins - 0.3 * fine - 0.12 * noise(rng, 2.5)
    return ramp(tone, (60, 62, 70), (170, 170, 176), (238, 236, 232), (250, 249, 246))


def brushed_metal(rng):
    streaks = stretched(rng, 64, 0.8) * 0.7 + stretched(rng, 20, 2) * 0.3
    sheen = 0.15 * wave(1, V, 1.0)
    return ramp(0.7 * streaks + sheen, (110, 112, 118), (170, 172, 178), (222, 224, 228))


def hammered_gold(rng):
    d1, _, _ = voronoi(rng, 49)
    height = -((d1 / 12.0) ** 2) + 0.05 * noise(rng)
    base = ramp(noise(rng, 1.5), (170, 120, 30), (230, 180, 60))
    return lit(base, height, 6.0, spec=0.9, shine=30)


def silver_filigree(rng):
    scroll = np.abs(np.sin(2 * np.pi * 3 * U + 2.2 * np.sin(2 * np.pi * 2 * V)))
    scroll2 = np.abs(np.sin(2 * np.pi * 3 * V + 2.2 * np.sin(2 * np.pi * 2 * U)))
    wire = np.maximum(np.clip(1 - scroll / 0.3, 0, 1), np.clip(1 - scroll2 / 0.3, 0, 1))
    height = np.sqrt(wire)
    base = np.where((wire > 0.05)[..., None], ramp(noise(rng), (185, 188, 195), (225, 228, 235)), 0.08)
    return lit(base, height, 5.0, spec=0.8 * (wire > 0.05), shine=25)


def _facets(rng, n: int, dark: tuple, mid: tuple, light: tuple):
    d1, d2, cell = voronoi(rng, n, jitter=0.9)
    tone = rng.random(cell.max() + 1)[cell]
    edge = np.clip(1 - (d2 - d1) / 2.0, 0, 1)
    colour = ramp(0.8 * tone + 0.2 * noise(rng), dark, mid, light)
    return colour * (1 - 0.5 * edge[..., None]) + edge[..., None] * 0.35 * np.array(light) / 255.0


def ruby_facets(rng):
    return _facets(rng, 36, (70, 0, 15), (170, 10, 40), (255, 120, 140))


def emerald_step_cut(rng):
    ring = np.maximum(np.abs(wave(2, U) - 0.5), np.abs(wave(2, V) - 0.5))
    step = np.floor(ring * 8) / 8
    side = (np.arctan2(wave(2, V) - 0.5, wave(2, U) - 0.5) // (np.pi / 2)) % 4
    tone = 0.55 * step + 0.15 * side / 3 + 0.3 * noise(rng, 1.5)
    return ramp(tone, (5, 60, 35), (20, 140, 80), (140, 230, 170))


def sapphire_brilliant(rng):
    cu, cv = (U * 2) % 1 - 0.5, (V * 2) % 1 - 0.5
    r, a = np.hypot(cu, cv), np.arctan2(cv, cu)
    sector = np.floor((a + np.pi) / (2 * np.pi) * 16)
    ring = np.floor(r * 8)
    tone = (np.sin(sector * 2.3 + ring * 1.7) * 0.5 + 0.5) * 0.75 + 0.25 * noise(rng)
    return ramp(tone, (5, 15, 70), (30, 60, 170), (150, 190, 255))


def pearls(rng):
    cu, cv = (U * 8) % 1 - 0.5, (V * 8 + 0.5 * (np.floor(U * 8) % 2)) % 1 - 0.5
    r2 = (cu**2 + cv**2) / 0.22
    height = np.sqrt(np.clip(1 - r2, 0, 1))
    tint = ramp(noise(rng, 1.5) * 0.6 + 0.4 * (1 - r2), (225, 205, 200), (245, 238, 230), (220, 230, 245))
    colour = lit(tint, height * 0.8, 8.0, spec=0.8, shine=40)
    return np.where((r2 < 1)[..., None], colour, 0.06)


def chain_mail(rng):
    best = np.zeros((S, S))
    for oy, ox in ((0.0, 0.0), (0.5, 0.5)):
        cu, cv = (U * 8 + ox) % 1 - 0.5, (V * 8 + oy) % 1 - 0.5
        ring = np.clip(1 - np.abs(np.hypot(cu, cv) - 0.36) / 0.09, 0, 1)
        best = np.maximum(best, ring)
    base = ramp(0.3 + 0.4 * noise(rng), (110, 112, 115), (180, 182, 188))
    return np.where((best > 0)[..., None], lit(base, np.sqrt(best), 5, spec=0.7), 0.05)


def pebbled_leather(rng):
    d1, d2, _ = voronoi(rng, 400, jitter=1.0)
    height = np.clip((d2 - d1) / 3.0, 0, 1) ** 0.5 + 0.2 * noise(rng)
    base = ramp(noise(rng, 1.8) * 0.5 + 0.2, (70, 35, 18), (120, 65, 35), (150, 90, 50))
    return lit(base, height, 2.0, spec=0.15, shine=8)


def suede(rng):
    nap = stretched(rng, 6, 3) * 0.5 + noise(rng, 0.8) * 0.5
    return ramp(0.6 * nap + 0.4 * noise(rng, 2.0), (140, 95, 60), (175, 125, 85), (200, 150, 110))


def knit(rng):
    col = np.floor(U * 16)
    cu, cv = (U * 16) % 1 - 0.5, (V * 12) % 1
    lean = np.where(cu < 0, 1, -1)
    stitch = np.clip(1 - np.abs(cv - 0.5 - lean * cu * 1.4) / 0.45, 0, 1) * np.clip(
        1 - np.abs(cu) * 1.6, 0, 1
    )
    height = stitch**0.7 + 0.1 * noise(rng)
    base = ramp(0.2 + 0.3 * noise(rng, 1.2) + 0.05 * (col % 2), (120, 20, 30), (190, 45, 55))
    return lit(base, height, 3.0)


def denim(rng):
    twill = wave(32, U + V)
    weft = stretched(rng, 2, 50)
    tone = 0.5 * twill + 0.3 * noise(rng, 1.3) + 0.2 * weft
    return ramp(tone, (20, 35, 70), (45, 70, 120), (150, 170, 200))


def canvas(rng):
    warp_, weft_ = wave(32, U), wave(32, V)
    over = (np.floor(U * 32) + np.floor(V * 32)) % 2
    height = np.where(over > 0, warp_, weft_) + 0.2 * noise(rng)
    base = ramp(0.3 + 0.5 * noise(rng, 1.5), (180, 165, 130), (220, 205, 170))
    return lit(base, height, 2.0)


def rubber_tread(rng):
    zig = np.abs(((U * 8 + 0.5 * np.abs((V * 4) % 1 - 0.5) * 2) % 1) - 0.5)
    groove = np.clip((zig - 0.1) / 0.06, 0, 1) * np.clip((np.abs((V * 4) % 1 - 0.5) - 0.04) / 0.04, 0, 1)
    height = groove + 0.05 * noise(rng, 1.0)
    base = ramp(0.3 + 0.3 * noise(rng), (25, 25, 27), (55, 55, 58))
    return lit(base, height, 4.0, spec=0.2, shine=6)


def snake_scales(rng):
    row = np.floor(V * 10)
    cu, cv = (U * 10 + 0.5 * (row % 2)) % 1 - 0.5, (V * 10) % 1
    inside = cu**2 * 3 + (cv - 0.15) ** 2
    height = np.clip(1 - inside * 1.6, 0, 1) * (1 - cv * 0.6)
    pattern = wave(2, U + 0.3 * noise(rng)) > 0.6
    base = np.where(pattern[..., None], ramp(noise(rng), (40, 35, 20), (70, 60, 30)), 0)
    base = base + np.where(pattern[..., None], 0, ramp(noise(rng), (120, 130, 60), (170, 170, 90)))
    return lit(base, height, 5.0, spec=0.3, shine=12)


def lace(rng):
    cu, cv = (U * 4) % 1 - 0.5, (V * 4) % 1 - 0.5
    r, a = np.hypot(cu, cv), np.arctan2(cv, cu)
    petals = np.abs(r - 0.22 - 0.08 * np.cos(6 * a)) < 0.025
    centre = np.abs(r - 0.07) < 0.02
    mesh = (np.abs(((U + V) * 24) % 1 - 0.5) < 0.07) | (np.abs(((U - V) * 24) % 1 - 0.5) < 0.07)
    thread = petals | centre | (mesh & (r > 0.33))
    return np.where(thread[..., None], ramp(noise(rng), (220, 215, 205), (250, 248, 242)), 0.05)


def quilted(rng):
    du, dv = (U + V) * 4 % 1, (U - V) * 4 % 1
    puff = np.sin(np.pi * du) * np.sin(np.pi * dv)
    height = puff**0.6 + 0.05 * noise(rng)
    base = ramp(0.5 + 0.2 * noise(rng), (25, 25, 35), (55, 55, 75))
    return lit(base, height, 6.0, spec=0.5, shine=15)


def cork(rng):
    # Compressed granules: small cells of varied tone, dark pores where cells meet.
    d1, d2, cell = voronoi(rng, 900, jitter=1.0)
    tone = 0.3 + 0.6 * rng.random(cell.max() + 1)[cell] + 0.15 * (noise(rng, 1.5) - 0.5)
    pores = (d2 - d1) < 0.6
    tone = np.where(pores & (rng.random((S, S)) < 0.6), 0.05, tone)
    return ramp(tone, (90, 55, 28), (160, 110, 62), (210, 160, 105))


def terrazzo(rng):
    d1, d2, cell = voronoi(rng, 81, jitter=1.0)
    chip = (rng.random(cell.max() + 1) < 0.55)[cell] & (d1 < 5 + 3 * noise(rng))
    palette = (
        np.array([(200, 80, 60), (60, 60, 65), (230, 190, 120), (120, 140, 130), (245, 240, 230)]) / 255.0
    )
    colours = palette[rng.integers(0, len(palette), cell.max() + 1)][cell]
    base = ramp(noise(rng, 1.2) * 0.3 + 0.6, (200, 195, 185), (235, 230, 220))
    return np.where(chip[..., None], colours, base)


def granite(rng):
    speck = noise(rng, 0.3)
    tone = np.where(speck > 0.62, 1.0, np.where(speck < 0.38, 0.0, 0.5)) * 0.7 + 0.3 * noise(rng, 1.5)
    return ramp(tone, (40, 38, 40), (150, 120, 115), (220, 215, 210))


def copper_patina(rng):
    patina = noise(rng, 2.2) + 0.2 * noise(rng, 1.0)
    copper = ramp(noise(rng, 1.5), (150, 75, 40), (205, 120, 70))
    green = ramp(noise(rng, 1.0), (70, 150, 125), (120, 195, 170))
    mix = np.clip((patina - 0.55) * 6, 0, 1)[..., None]
    return copper * (1 - mix) + green * mix


def rose_gold(rng):
    height = 0.4 * stretched(rng, 30, 3) + 0.6 * wave(2, U + 0.15 * noise(rng))
    base = ramp(noise(rng, 2.0), (185, 120, 105), (225, 165, 145))
    return lit(base, height, 2.5, spec=0.8, shine=20)


def cobblestone(rng):
    d1, d2, cell = voronoi(rng, 36, jitter=0.8)
    height = np.clip((d2 - d1) / 8.0, 0, 1) ** 0.5 + 0.15 * noise(rng)
    tone = rng.random(cell.max() + 1)[cell]
    base = ramp(0.5 * tone + 0.5 * noise(rng), (80, 78, 75), (140, 135, 128), (175, 170, 160))
    return lit(base, height, 4.0)


def rattan(rng):
    over = (np.floor(U * 8) + np.floor(V * 8)) % 2
    strand = np.where(over > 0, wave(24, V), wave(24, U))
    height = 0.6 * strand + 0.4 * np.where(over > 0, wave(8, U, -np.pi / 2), wave(8, V, -np.pi / 2))
    base = ramp(0.4 + 0.4 * stretched(rng, 3, 30), (170, 130, 70), (215, 180, 115))
    return lit(base, height, 3.0)


def velvet(rng):
    sheen = noise(rng, 2.6)
    return ramp(0.8 * sheen**1.5 + 0.2 * noise(rng, 0.5), (50, 0, 20), (120, 10, 45), (200, 70, 110))


def carbon_fiber(rng):
    cell = (np.floor(U * 16) + np.floor(V * 16) // 2 * 2) % 2
    tow = np.where(cell > 0, wave(64, U), wave(64, V))
    height = 0.7 * np.where(cell > 0, wave(16, V, -np.pi / 2), wave(16, U, -np.pi / 2)) + 0.3 * tow
    base = np.full((S, S, 3), 0.1) + 0.04 * noise(rng)[..., None]
    return lit(base, height, 3.0, spec=0.6, shine=10)


def sneaker_mesh(rng):
    cu, cv = (U * 12) % 1 - 0.5, (V * 12 + 0.5 * (np.floor(U * 12) % 2)) % 1 - 0.5
    hole = np.hypot(cu, cv * 1.2) < 0.28
    height = np.where(hole, 0, 1) + 0.1 * noise(rng)
    base = np.where(hole[..., None], 0.12, ramp(noise(rng), (215, 218, 222), (245, 246, 248)))
    return lit(base, height, 1.5)


def herringbone(rng):
    col = np.floor(U * 8)
    lean = np.where(col % 2 > 0, 1, -1)
    stripe = wave(16, V + lean * U)
    tone = 0.6 * stripe + 0.25 * noise(rng, 1.5) + 0.15 * stretched(rng, 8, 8)
    return ramp(tone, (60, 55, 50), (120, 110, 95), (175, 165, 150))


def crocodile(rng):
    d1, d2, cell = voronoi(rng, 64, jitter=0.6)
    groove = np.clip((d2 - d1) / 4.0, 0, 1)
    height = groove**0.4 * (1 - 0.3 * (d1 / 10.0) ** 2)
    base = ramp(
        0.4 * rng.random(cell.max() + 1)[cell] + 0.4 * noise(rng), (20, 35, 25), (55, 75, 45), (95, 100, 60)
    )
    return lit(base, height, 5.0, spec=0.4, shine=18)


MATERIALS: dict[str, tuple[Callable, list[str]]] = {
    "brick": (brick, ["wall", "masonry", "red", "architecture"]),
    "wood_grain": (wood_grain, ["wood", "oak", "timber", "brown"]),
    "marble": (marble, ["stone", "white", "veins"]),
    "brushed_metal": (brushed_metal, ["metal", "steel", "aluminium", "silver"]),
    "hammered_gold": (hammered_gold, ["gold", "metal", "jewelry", "jewellery"]),
    "silver_filigree": (silver_filigree, ["silver", "metal", "jewelry", "jewellery", "ornament"]),
    "ruby_facets": (ruby_facets, ["gem", "gemstone", "red", "jewelry", "jewellery", "facets"]),
    "emerald_step_cut": (emerald_step_cut, ["gem", "gemstone", "green", "jewelry", "jewellery", "facets"]),
    "sapphire_brilliant": (sapphire_brilliant, ["gem", "gemstone", "blue", "jewelry", "jewellery", "facets"]),
    "pearls": (pearls, ["pearl", "white", "jewelry", "jewellery"]),
    "chain_mail": (chain_mail, ["chain", "metal", "links", "armour", "jewelry"]),
    "pebbled_leather": (pebbled_leather, ["leather", "brown", "shoe", "bag"]),
    "suede": (suede, ["leather", "tan", "shoe", "fabric"]),
    "knit": (knit, ["wool", "fabric", "textile", "red", "shoe", "sweater"]),
    "denim": (denim, ["fabric", "textile", "blue", "jeans"]),
    "canvas": (canvas, ["fabric", "textile", "beige", "shoe", "weave"]),
    "rubber_tread": (rubber_tread, ["rubber", "sole", "shoe", "black", "tread"]),
    "snake_scales": (snake_scales, ["scales", "reptile", "leather", "green", "shoe"]),
    "lace": (lace, ["fabric", "white", "textile", "floral"]),
    "quilted": (quilted, ["fabric", "textile", "bag", "navy", "padded"]),
    "cork": (cork, ["wood", "brown", "shoe", "sole"]),
    "terrazzo": (terrazzo, ["stone", "floor", "speckled", "chips"]),
    "granite": (granite, ["stone", "speckled", "grey"]),
    "copper_patina": (copper_patina, ["metal", "copper", "green", "verdigris"]),
    "rose_gold": (rose_gold, ["gold", "metal", "pink", "jewelry", "jewellery"]),
    "cobblestone": (cobblestone, ["stone", "street", "grey", "pavement"]),
    "rattan": (rattan, ["weave", "basket", "straw", "natural"]),
    "velvet": (velvet, ["fabric", "textile", "red", "soft"]),
    "carbon_fiber": (carbon_fiber, ["carbon", "black", "weave", "composite"]),
    "sneaker_mesh": (sneaker_mesh, ["fabric", "white", "shoe", "mesh", "sneaker"]),
    "herringbone": (herringbone, ["fabric", "textile", "tweed", "grey"]),
    "crocodile": (crocodile, ["leather", "reptile", "scales", "green", "shoe", "bag"]),
}


# Other words for a tag. A prompt word names a reference when it (or its plural) is one of its tags or
# synonyms; they go into references.json apart from the tags so a person can see and edit them.
SYNONYMS = {
    "gold": ["golden", "gilded", "gilt"],
    "silver": ["silvery", "sterling"],
    "metal": ["metallic"],
    "jewelry": ["jewel", "jeweled", "jewelled"],
    "leather": ["leathery", "hide"],
    "wood": ["wooden", "woody"],
    "wool": ["woollen", "woolen", "woolly", "knitted"],
    "stone": ["stony"],
    "red": ["crimson", "scarlet"],
    "grey": ["gray"],
    "fabric": ["cloth"],
    "textile": ["cloth"],
    "shoe": ["boot", "footwear"],
    "sneaker": ["trainer"],
    "rubber": ["rubbery"],
    "copper": ["coppery"],
    "pearl": ["pearly", "nacre"],
    "scales": ["scaly"],
    "aluminium": ["aluminum"],
    "armour": ["armor", "chainmail", "mail"],
    "gem": ["jewel"],
    "pink": ["rose"],
    "carbon": ["fibre"],
    "velvet": ["velour"],
    "quilted": ["quilt"],
    "hammered": ["beaten"],
    "weave": ["woven", "wicker"],
    "jewellery": ["jewel"],
}


def synonyms(name: str, tags: list[str]) -> list[str]:
    """The synonyms of a material's name words and tags, without repeating a tag."""
    own = set(tags) | set(name.split("_"))
    return sorted({s for word in own for s in SYNONYMS.get(word, []) if s not in own})


def main() -> None:
    """Write every material as a 128×128 PNG plus references.json (tags, source, licence)."""
    entries = []
    for seed, (name, (make, tags)) in enumerate(MATERIALS.items()):
        rgb = np.clip(make(np.random.default_rng(1000 + seed)), 0, 1)
        Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB").save(HERE / f"{name}.png", optimize=True)
        entries.append(
            {
                "file": f"{name}.png",
                "name": name,
                "tags": tags,
                "synonyms": synonyms(name, tags),
                "source": "generated by assets/references/make_references.py (Studio project)",
                "licence": "CC0-1.0",
            }
        )
    (HERE / "references.json").write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
