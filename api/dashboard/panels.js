/* The engine, storage tier, switch and chunk statistics panels, and their buttons. */

import { api, isUnauthorized, showError } from "./api.js";
import { $, el, fillKv, fmtBytes, fmtInt, fmtPct, setText } from "./format.js";

const state = { freeze: null, hotCache: null };

export async function loadOverview() {
  const [version, m, health] = await Promise.all([
    api("GET", "/version", { text: true }),
    api("GET", "/meta"),
    api("GET", "/health"),
  ]);
  const [release, commit] = version.trim().split("-", 2);
  setText("version", "v" + release + (commit && commit !== "NA" ? " (" + commit.slice(0, 10) + ")" : ""));
  setText("model", m.model_name ?? "no model");
  const shape = Array.isArray(m.kv_cache_shape) ? m.kv_cache_shape.join(" × ") : null;
  fillKv($("overview"), [
    ["Model", m.model_name],
    ["Served model", m.served_model_name],
    ["Role", m.role],
    ["Worker", m.worker_id !== undefined ? m.worker_id + " of " + m.world_size : null],
    ["KV cache", health.kv_cache_registered ? "registered" : "not registered"],
    ["Layout", m.layout],
    ["Layers", m.num_layers],
    ["KV shape", shape],
    ["KV dtype", m.kv_dtype],
    ["Device", m.device],
    ["Slots", m.num_slots !== undefined ? fmtInt(m.num_slots) : null],
    ["Chunk size", m.chunk_size],
    ["Tiers", Array.isArray(m.backends) ? m.backends.join(", ") : null],
    ["Engine id", m.engine_id],
  ]);
  if (Number.isFinite(m.chunk_size)) $("checksum-chunk").value = String(m.chunk_size);
  if (Number.isFinite(m.num_slots) && m.num_slots > 0) {
    $("slot-last").max = String(m.num_slots - 1);
    $("slot-first").max = String(m.num_slots - 1);
    const last = Math.min(m.num_slots, Number.isFinite(m.chunk_size) ? m.chunk_size * 2 : 256) - 1;
    $("slot-last").value = String(last);
  }
}

export function renderTiers(backends) {
  const body = $("tiers-body");
  body.replaceChildren();
  const names = Object.keys(backends);
  if (names.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No storage tier.")));
    return;
  }
  for (const name of names) {
    const t = backends[name] || {};
    const stats = t.stats || {};
    const health = t.bypassed ? "bypassed" : String(t.health ?? (t.healthy ? "healthy" : "down"));
    const capacity = Number(t.capacity_bytes);
    const used = Number(t.used_bytes);
    const usage = capacity > 0 ? Math.min(1, Math.max(0, used / capacity)) : null;
    const bar = el("div", { class: "bar" }, el("span"));
    const width = usage === null ? 0 : usage * 100;
    bar.firstChild.style.width = width > 0 ? "max(2px, " + width.toFixed(1) + "%)" : "0";
    const button = el(
      "button",
      { type: "button", class: "bypass-toggle", "aria-pressed": t.bypassed ? "true" : "false" },
      t.bypassed ? "Restore" : "Bypass",
    );
    button.addEventListener("click", () => toggleBypass(name, !t.bypassed, button));
    body.append(
      el(
        "tr",
        { dataset: { tier: name } },
        el("td", { class: "tier-name" }, name),
        el("td", {}, t.type ?? "—"),
        el("td", { class: "health", dataset: { health } }, health),
        el("td", {}, capacity > 0 ? fmtBytes(capacity) : "unbounded"),
        el("td", {}, el("div", { class: "used" }, bar, fmtBytes(used) + (usage === null ? "" : " (" + fmtPct(usage) + ")"))),
        el("td", { class: "num" }, fmtInt(Number(t.entries))),
        el("td", { class: "num" }, fmtInt(Number(stats.hits))),
        el("td", { class: "num" }, fmtInt(Number(stats.errors))),
        el("td", {}, button),
      ),
    );
  }
}

async function toggleBypass(name, bypass, button) {
  button.disabled = true;
  try {
    const path = bypass ? "/bypass/add" : "/bypass/remove";
    await api("PUT", path + "?backend_name=" + encodeURIComponent(name));
    $("tiers-error").textContent = "";
    renderTiers(await api("GET", "/backends"));
  } catch (err) {
    showError("tiers-error", err);
    button.disabled = false;
  }
}

function renderSwitch(prefix, on) {
  const stateEl = $(prefix + "-state");
  stateEl.textContent = on ? "on" : "off";
  stateEl.dataset.on = on ? "true" : "false";
  const button = $(prefix + "-toggle");
  button.textContent = on ? "Turn off" : "Turn on";
  button.setAttribute("aria-pressed", on ? "true" : "false");
  button.disabled = false;
}

export async function refreshSwitches() {
  const [freeze, hot] = await Promise.all([api("GET", "/freeze/status"), api("GET", "/hot_cache/status")]);
  state.freeze = Boolean(freeze.freeze);
  state.hotCache = Boolean(hot.hot_cache);
  renderSwitch("freeze", state.freeze);
  renderSwitch("hotcache", state.hotCache);
}

async function flip(kind) {
  const button = $(kind + "-toggle");
  button.disabled = true;
  const base = kind === "freeze" ? "/freeze" : "/hot_cache";
  const current = kind === "freeze" ? state.freeze : state.hotCache;
  try {
    await api("PUT", base + (current ? "/disable" : "/enable"));
    $("switches-error").textContent = "";
    await refreshSwitches();
  } catch (err) {
    showError("switches-error", err);
    button.disabled = false;
  }
}

$("freeze-toggle").addEventListener("click", () => flip("freeze"));
$("hotcache-toggle").addEventListener("click", () => flip("hotcache"));

function renderChunkStats(s) {
  const collecting = s.enabled ?? s.is_collecting;
  fillKv($("chunk-stats"), [
    ["Collecting", collecting ? "yes" : "no"],
    ["Requests", fmtInt(Number(s.total_requests ?? s.requests))],
    ["Chunks seen", fmtInt(Number(s.total_chunks))],
    ["Unique chunks", fmtInt(Number(s.unique_chunks))],
    ["Duplicate chunks", fmtInt(Number(s.duplicate_chunks))],
    ["Reuse rate", fmtPct(Number(s.reuse_rate))],
    [
      "Auto exit",
      s.auto_exit_enabled
        ? "after " + s.auto_exit_timeout_hours + " h or " + s.auto_exit_target_unique_chunks + " unique chunks"
        : "off",
    ],
  ]);
}

export async function refreshChunkStats() {
  try {
    renderChunkStats(await api("GET", "/chunk_statistics/status"));
    $("chunk-error").textContent = "";
  } catch (err) {
    if (isUnauthorized(err)) throw err;
    $("chunk-stats").replaceChildren();
    showError("chunk-error", err);
  }
}

for (const action of ["start", "stop", "reset"]) {
  $("chunk-" + action).addEventListener("click", async () => {
    try {
      await api("POST", "/chunk_statistics/" + action);
      await refreshChunkStats();
    } catch (err) {
      showError("chunk-error", err);
    }
  });
}
