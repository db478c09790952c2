/* The traffic panel: Prometheus counters from /metrics, their rates and the chart history. */

import { api } from "./api.js";
import { drawCharts } from "./charts.js";
import { HISTORY, fmtInt, fmtPct, fmtRate, setText } from "./format.js";

let lastMetrics = null; // {t, v: {...counters}}
const history = []; // {t, hit, lookup, store, retrieve}

/** Parses the Prometheus text exposition format into [{name, labels, value}]. */
function parsePrometheus(text) {
  const samples = [];
  const lineRe = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$/;
  const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/g;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const m = lineRe.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[2]) {
      for (const lm of m[2].matchAll(labelRe)) {
        labels[lm[1]] = lm[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      }
    }
    let value;
    if (m[3] === "+Inf") value = Infinity;
    else if (m[3] === "-Inf") value = -Infinity;
    else value = Number(m[3]);
    samples.push({ name: m[1], labels, value });
  }
  return samples;
}

/** Sum of every sample named `name` (all label sets), or null when there is none. */
function total(samples, name) {
  let sum = null;
  for (const s of samples) {
    if (s.name === name && Number.isFinite(s.value)) sum = (sum ?? 0) + s.value;
  }
  return sum;
}

function counters(samples) {
  return {
    stored: total(samples, "lmcache_stored_tokens_total"),
    retrieved: total(samples, "lmcache_retrieved_tokens_total"),
    hitChunks: total(samples, "lmcache_hit_chunks_total"),
    missChunks: total(samples, "lmcache_miss_chunks_total"),
    lookupTokens: total(samples, "lmcache_lookup_tokens_total"),
    lookupHits: total(samples, "lmcache_lookup_hit_tokens_total"),
  };
}

function ratio(hits, all) {
  return all !== null && all > 0 && hits !== null ? hits / all : null;
}

function delta(now, before, key) {
  if (!before || now[key] === null) return null;
  // A labelled counter (e.g. per tier) has no sample until its first increment: absent is 0.
  const d = now[key] - (before[key] ?? 0);
  return d >= 0 ? d : null; // a reset counter gives no sample
}

/** Forgets the previous sample and the chart history (a new connection starts afresh). */
export function resetMetrics() {
  lastMetrics = null;
  history.length = 0;
}

export async function refreshMetrics() {
  const text = await api("GET", "/metrics", { text: true });
  const v = counters(parsePrometheus(text));
  const t = performance.now() / 1000;
  const prev = lastMetrics;
  lastMetrics = { t, v };

  const hitAll = v.hitChunks === null ? null : v.hitChunks + (v.missChunks ?? 0);
  setText("hit-rate", fmtPct(ratio(v.hitChunks, hitAll)));
  setText("lookup-hit-rate", fmtPct(ratio(v.lookupHits, v.lookupTokens)));
  setText("stored-tokens", fmtInt(v.stored ?? NaN));
  setText("retrieved-tokens", fmtInt(v.retrieved ?? NaN));

  if (prev) {
    const dt = t - prev.t;
    const dHit = delta(v, prev.v, "hitChunks");
    const dMiss = delta(v, prev.v, "missChunks") ?? 0;
    const dStore = delta(v, prev.v, "stored");
    const dRetrieve = delta(v, prev.v, "retrieved");
    const sample = {
      t,
      hit: dHit === null ? null : ratio(dHit, dHit + dMiss),
      lookup: ratio(delta(v, prev.v, "lookupHits"), delta(v, prev.v, "lookupTokens")),
      store: dStore === null || dt <= 0 ? null : dStore / dt,
      retrieve: dRetrieve === null || dt <= 0 ? null : dRetrieve / dt,
    };
    history.push(sample);
    while (history.length > HISTORY) history.shift();
    setText("store-rate", fmtRate(sample.store));
    setText("retrieve-rate", fmtRate(sample.retrieve));
  }
  drawCharts(history);
}

window.addEventListener("resize", () => drawCharts(history));
