"""Draws emblems and scenes with PIL, encodes them as deterministic JPEG, and reads them back.

The drawings are deliberately crisp so that a tiny ViT trained for minutes on CPU can learn to
read them at 32-64 px (MuRAG's image encoder, Sec. 3.1, sees only pixels): a white ground, a
gray bar of fixed thickness on one side, and 1-4 large solid shapes of one colour placed in the
cells of a 2x2 grid inside the remaining area.

`analyze_image` recovers colour, shape, count and bar side from pixels alone. The tests use it
to show that the answer of every image question is really visible in its positive image and
that hard negatives really differ in the asked attribute.
"""
import io

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from tasks.synthetic_world import world

RGB = {
    "red": (220, 30, 30),
    "orange": (245, 140, 0),
    "yellow": (235, 215, 0),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (130, 40, 180),
    "pink": (250, 110, 190),
}
BACKGROUND = (255, 255, 255)
BAR = (128, 128, 128)
JPEG_QUALITY = 95


def _cells(rng, count):
  cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
  rng.shuffle(cells)
  return sorted(cells[:count])


def render(attrs, size, rng):
  """Draws one picture.

  Args:
    attrs: anything with color, shape, count and side (an Emblem or a Scene).
    size: side of the square image in pixels.
    rng: random.Random choosing which grid cells hold the shapes.

  Returns:
    A PIL RGB image of [size, size].
  """
  img = Image.new("RGB", (size, size), BACKGROUND)
  draw = ImageDraw.Draw(img)
  bar = max(3, size // 10)
  x0, y0, x1, y1 = 0, 0, size, size  # area left for the shapes
  if attrs.side == "top":
    draw.rectangle([0, 0, size - 1, bar - 1], fill=BAR)
    y0 = bar
  elif attrs.side == "bottom":
    draw.rectangle([0, size - bar, size - 1, size - 1], fill=BAR)
    y1 = size - bar
  elif attrs.side == "left":
    draw.rectangle([0, 0, bar - 1, size - 1], fill=BAR)
    x0 = bar
  else:
    draw.rectangle([size - bar, 0, size - 1, size - 1], fill=BAR)
    x1 = size - bar
  cw, ch = (x1 - x0) / 2, (y1 - y0) / 2
  r = 0.40 * min(cw, ch)  # half side of a shape's box; leaves a gap between shapes
  fill = RGB[attrs.color]
  for row, col in _cells(rng, attrs.count):
    cx, cy = x0 + (col + 0.5) * cw, y0 + (row + 0.5) * ch
    box = [cx - r, cy - r, cx + r, cy + r]
    if attrs.shape == "circle":
      draw.ellipse(box, fill=fill)
    elif attrs.shape == "square":
      draw.rectangle(box, fill=fill)
    elif attrs.shape == "triangle":
      draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif attrs.shape == "cross":
      a = r / 3
      draw.rectangle([cx - a, cy - r, cx + a, cy + r], fill=fill)
      draw.rectangle([cx - r, cy - a, cx + r, cy + a], fill=fill)
    else:
      raise world.WorldError(f"unknown shape {attrs.shape!r}")
  return img


def encode_jpeg(img):
  """JPEG bytes that depend only on the pixels (no EXIF, fixed quality and subsampling)."""
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
  return buf.getvalue()


def decode_jpeg(data, where):
  """Opens JPEG bytes with PIL the way dataset readers do; errors name `where`."""
  try:
    img = Image.open(io.BytesIO(data), formats=("JPEG",))
    img.load()
  except Exception as e:  # PIL raises several unrelated types.
    raise world.WorldError(f"{where}: not a readable image ({e})") from e
  return img.convert("RGB")


def _chromatic_mask(px):
  mx, mn = px.max(axis=-1), px.min(axis=-1)
  return (mx - mn) > 60  # saturated: excludes the white ground and the gray bar


def analyze_image(img):
  """Reads colour, shape, count and bar side back from pixels.

  Args:
    img: a PIL image drawn by `render` (possibly after JPEG round trip).

  Returns:
    dict(color, shape, count, side), each recovered from pixels only.
  """
  px = np.asarray(img.convert("RGB"), dtype=np.float32)  # [H, W, 3]
  size = px.shape[0]
  chroma = _chromatic_mask(px)
  names = list(RGB)
  palette = np.array([RGB[n] for n in names], dtype=np.float32)  # [C, 3]
  colored = px[chroma]  # [P, 3]
  nearest = np.argmin(((colored[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
  color = names[int(np.bincount(nearest, minlength=len(names)).argmax())]
  gray = (np.abs(px - np.array(BAR, np.float32)).max(-1) < 40)  # [H, W]
  edges = {"top": gray[:3].mean(), "bottom": gray[-3:].mean(),
           "left": gray[:, :3].mean(), "right": gray[:, -3:].mean()}
  side = max(edges, key=edges.get)
  labels, count = ndimage.label(chroma)
  shapes = []
  for sl in ndimage.find_objects(labels):
    comp = chroma[sl]
    h, w = comp.shape
    if h < size // 10 or w < size // 10:
      continue  # a stray JPEG speck, not a shape
    fill = comp.mean()
    top, bottom = comp[: h // 3].mean(), comp[-(h // 3):].mean()
    if fill > 0.9:
      shapes.append("square")
    elif fill > 0.68:
      shapes.append("circle")
    elif bottom > 1.6 * top:
      shapes.append("triangle")
    else:
      shapes.append("cross")
  shape = max(set(shapes), key=shapes.count) if shapes else None
  return dict(color=color, shape=shape, count=len(shapes), side=side)
