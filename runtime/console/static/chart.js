/* A small SVG line chart: no library, no CDN.  lineChart(series, {height, unit}) returns
   the SVG text; each series is {name, points: [[t_seconds, value], ...]}. */
"use strict";
const COLORS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176"];

function lineChart(series, opts) {
  const w = 1200, h = (opts && opts.height) || 160, pad = 40;
  const pts = series.flatMap(s => s.points);
  if (!pts.length) return '<p class="muted">no points yet: the console keeps its own history from now on</p>';
  const t0 = Math.min(...pts.map(p => p[0])), t1 = Math.max(...pts.map(p => p[0]), t0 + 1);
  const vmax = Math.max(1, ...pts.map(p => p[1]));
  const x = t => pad + (t - t0) / (t1 - t0) * (w - pad - 8);
  const y = v => h - 18 - v / vmax * (h - 30);
  const lines = series.map((s, i) => {
    const d = s.points.map((p, j) => (j ? "L" : "M") + x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join("");
    return `<path d="${d}" fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="1.6"/>`;
  }).join("");
  const legend = series.map((s, i) =>
    `<tspan fill="${COLORS[i % COLORS.length]}" dx="10">■ ${escapeText(s.name)}</tspan>`).join("");
  const ago = Math.round((t1 - t0) / 60);
  return `<svg class="chart" viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" role="img">
    <line x1="${pad}" y1="${h - 18}" x2="${w - 8}" y2="${h - 18}" class="axis"/>
    <line x1="${pad}" y1="10" x2="${pad}" y2="${h - 18}" class="axis"/>
    <text x="2" y="16" class="tick">${fmtNum(vmax)}</text><text x="2" y="${h - 20}" class="tick">0</text>
    <text x="${pad}" y="${h - 4}" class="tick">${ago ? ago + " min ago" : "just now"}</text>
    <text x="${w - 30}" y="${h - 4}" class="tick">now</text>
    <text x="${pad}" y="10" class="tick">${legend}</text>${lines}</svg>`;
}

function escapeText(s) {
  return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function fmtNum(n) {
  if (n === null || n === undefined) return "-";
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}
