#!/usr/bin/env python3
"""Draw the 128x128 UXNetSegment icon (brain outline, two segmented regions, "UX").

Usage: python tools/make_icon.py UXNetSegment.png && cp UXNetSegment.png UXNetSegment/Resources/Icons/
"""
import sys
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch, PathPatch, Circle
from matplotlib.path import Path

def brain_path(cx, cy, rx, ry, n=400):
    t = np.linspace(0, 2 * np.pi, n)
    # lobed outline: an ellipse modulated by gyri bumps
    r = 1 + 0.06 * np.sin(9 * t) + 0.03 * np.sin(17 * t + 0.5)
    x = cx + rx * r * np.cos(t)
    y = cy + ry * r * np.sin(t)
    return np.c_[x, y]

fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
ax = fig.add_axes([0, 0, 1, 1]); ax.set_xlim(0, 128); ax.set_ylim(0, 128); ax.axis("off")
fig.patch.set_alpha(0)
ax.add_patch(FancyBboxPatch((4, 4), 120, 120, boxstyle="round,pad=0,rounding_size=22", fc="#1f3a5f", ec="none"))
pts = brain_path(64, 74, 46, 36)
ax.add_patch(PathPatch(Path(pts, closed=True), fc="#f2c9b7", ec="#ffffff", lw=2.2))
# a 'segmented' structure inside: hemisphere split + coloured region
left = brain_path(50, 76, 18, 16)
ax.add_patch(PathPatch(Path(left, closed=True), fc="#e0675a", ec="#ffffff", lw=1.2, alpha=0.95))
right = brain_path(80, 70, 15, 13)
ax.add_patch(PathPatch(Path(right, closed=True), fc="#58a6d6", ec="#ffffff", lw=1.2, alpha=0.95))
ax.plot([64, 64], [42, 108], color="#9b6f63", lw=1.6)
for (x0, y0, a, b, t0, t1) in [(36, 92, 10, 6, 0.2, 2.8), (92, 94, 10, 6, 0.3, 2.9), (34, 56, 9, 6, 3.4, 6.0),
                               (95, 54, 9, 6, 3.5, 6.1), (64, 100, 12, 5, 3.6, 5.8)]:
    t = np.linspace(t0, t1, 40)
    ax.plot(x0 + a * np.cos(t), y0 + b * np.sin(t), color="#b98474", lw=1.3)
ax.text(64, 20, "UX", ha="center", va="center", fontsize=25, fontweight="bold", color="white", family="DejaVu Sans")
fig.savefig(sys.argv[1], dpi=100, transparent=True)
