/* The two traffic charts: canvas, drawn by hand. */

import { $, HISTORY, POLL_MS, fmtPct, fmtRate } from "./format.js";

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#444";
}

function drawChart(canvas, series, { percent = false } = {}) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(200, canvas.clientWidth || canvas.width);
  const h = Math.max(80, canvas.clientHeight || canvas.height);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pad = { l: 56, r: 8, t: 8, b: 18 };
  const pw = w - pad.l - pad.r;
  const ph = h - pad.t - pad.b;
  let max = percent ? 1 : 0;
  if (!percent) {
    for (const s of series) for (const p of s.values) if (p !== null && p > max) max = p;
    max = max > 0 ? niceCeil(max) : 1;
  }
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = cssVar("--muted");
  ctx.strokeStyle = cssVar("--line");
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i += 1) {
    const y = pad.t + ph - (ph * i) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.l, Math.round(y) + 0.5);
    ctx.lineTo(pad.l + pw, Math.round(y) + 0.5);
    ctx.stroke();
    const value = (max * i) / 4;
    const label = percent ? Math.round(value * 100) + "%" : shortNumber(value);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(label, pad.l - 6, y);
  }
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillText("last " + Math.round((HISTORY * POLL_MS) / 60000) + " min", pad.l, h - 4);
  const step = pw / Math.max(1, HISTORY - 1);
  // A text summary for assistive technology (and tests): samples and each series' peak.
  const summary = [];
  canvas.dataset.samples = String(series.length ? series[0].values.length : 0);
  for (const s of series) {
    const values = s.values.filter((p) => p !== null);
    const peak = values.length ? Math.max(...values) : null;
    canvas.dataset["peak" + s.key[0].toUpperCase() + s.key.slice(1)] = peak === null ? "" : String(peak);
    summary.push(s.label + ": peak " + (peak === null ? "none" : percent ? fmtPct(peak) : fmtRate(peak)));
  }
  canvas.setAttribute("aria-label", canvas.dataset.title + " (" + summary.join("; ") + ")");
  for (const s of series) {
    ctx.strokeStyle = cssVar(s.color);
    ctx.fillStyle = cssVar(s.color);
    ctx.lineWidth = 2;
    const offset = HISTORY - s.values.length;
    let drawing = false;
    ctx.beginPath();
    s.values.forEach((p, i) => {
      if (p === null) {
        drawing = false;
        return;
      }
      const x = pad.l + (offset + i) * step;
      const y = pad.t + ph - (ph * Math.min(p, max)) / max;
      if (drawing) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      drawing = true;
      ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
    });
    ctx.stroke();
  }
}

function niceCeil(x) {
  const p = Math.pow(10, Math.floor(Math.log10(x)));
  for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

function shortNumber(x) {
  if (x >= 1e6) return (x / 1e6).toFixed(x >= 1e7 ? 0 : 1) + "M";
  if (x >= 1e3) return (x / 1e3).toFixed(x >= 1e4 ? 0 : 1) + "k";
  return String(Math.round(x * 10) / 10);
}

/** Draws both charts from `history` ([{t, hit, lookup, store, retrieve}], oldest first). */
export function drawCharts(history) {
  drawChart(
    $("hit-chart"),
    [
      { key: "hit", label: "retrieve", color: "--hit", values: history.map((s) => s.hit) },
      { key: "lookup", label: "lookup", color: "--lookup", values: history.map((s) => s.lookup) },
    ],
    { percent: true },
  );
  drawChart($("throughput-chart"), [
    { key: "store", label: "store", color: "--store", values: history.map((s) => s.store) },
    { key: "retrieve", label: "retrieve", color: "--retrieve", values: history.map((s) => s.retrieve) },
  ]);
}
