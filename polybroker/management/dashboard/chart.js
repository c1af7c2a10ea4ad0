// A line chart of a few hundred points drawn as SVG: no library needed for this.
const NS = "http://www.w3.org/2000/svg";
const H = 180, PAD = 34;

function el(name, attrs, text) {
  const node = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// series: [{name, cls, points: [[t, value], ...]}]; span: seconds shown, up to now;
// W: the width in CSS pixels, so that the labels keep their size on any screen.
export function lineChart(series, span, now, W) {
  const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "chart", role: "img",
                         "aria-label": "messages per second",
                         "data-points": Math.max(0, ...series.map((s) => s.points.length))});
  const top = Math.max(1, ...series.flatMap((s) => s.points.map((p) => p[1])));
  const scale = niceCeiling(top);
  const x = (t) => PAD + (W - PAD - 4) * (1 - (now - t) / span);
  const y = (v) => H - 18 - (H - 30) * (v / scale);
  for (const fraction of [0, 0.5, 1]) {
    const v = scale * fraction;
    svg.append(el("line", {x1: PAD, x2: W - 4, y1: y(v), y2: y(v), class: "grid"}));
    svg.append(el("text", {x: PAD - 4, y: y(v) + 4, class: "axis", "text-anchor": "end"},
                  formatNumber(v)));
  }
  svg.append(el("text", {x: PAD, y: H - 2, class: "axis"}, `-${Math.round(span / 60)} min`));
  svg.append(el("text", {x: W - 4, y: H - 2, class: "axis", "text-anchor": "end"}, "now"));
  for (const s of series) {
    const shown = s.points.filter((p) => now - p[0] <= span);
    const points = shown.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.append(el("polyline", {points, class: `line ${s.cls}`}));
  }
  return svg;
}

function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((n) => n >= value);
}

export function formatNumber(value) {
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (value >= 1e4) return `${(value / 1e3).toFixed(0)}k`;
  if (value >= 100 || Number.isInteger(value)) return String(Math.round(value));
  return value.toFixed(1);
}
