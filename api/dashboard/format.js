/* Shared constants, DOM helpers (text only) and number formatting for the dashboard. */

export const POLL_MS = 2000;
export const HISTORY = 90; // samples kept for the charts (3 minutes at POLL_MS)

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function setText(id, value) {
  $(id).textContent = value === null || value === undefined ? "—" : String(value);
}

export function fillKv(dl, rows) {
  dl.replaceChildren();
  for (const [label, value] of rows) {
    dl.append(el("dt", {}, label), el("dd", {}, value === null || value === undefined ? "—" : value));
  }
}

const numberFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export function fmtInt(n) {
  return Number.isFinite(n) ? numberFormat.format(n) : "—";
}

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return (i === 0 ? String(Math.round(v)) : v.toFixed(v >= 100 ? 0 : 1)) + " " + units[i];
}

export function fmtPct(x) {
  if (x === null || !Number.isFinite(x)) return "—";
  if (x > 0 && x < 0.001) return "<0.1%";
  return (x * 100).toFixed(x === 1 || x === 0 ? 0 : 1) + "%";
}

export function fmtRate(x) {
  if (x === null || !Number.isFinite(x)) return "—";
  if (x >= 1e6) return (x / 1e6).toFixed(1) + " M tok/s";
  if (x >= 1e3) return (x / 1e3).toFixed(1) + " k tok/s";
  return x.toFixed(x >= 10 ? 0 : 1) + " tok/s";
}
