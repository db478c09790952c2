/* lmcache-native dashboard: the entry module (the API key prompt and the polling loop).
 *
 * Plain JavaScript ES modules, no framework, no build step, no external resources. Every value
 * from the server is shown through textContent (never innerHTML), so nothing the server or a
 * cache key holds can become markup. The API key stays in api.js's memory only.
 *
 * Modules: format.js (constants, DOM and number helpers), api.js (fetching, errors, the key),
 * charts.js (canvas charts), metrics.js (traffic panel), panels.js (engine, tiers, switches,
 * chunk statistics), checksum.js (KV checksum form), this file (wiring).
 */

import { api, describe, hasApiKey, isUnauthorized, onUnauthorized, setApiKey } from "./api.js";
import "./checksum.js";
import { $, POLL_MS, setText } from "./format.js";
import { refreshMetrics, resetMetrics } from "./metrics.js";
import { loadOverview, refreshChunkStats, refreshSwitches, renderTiers } from "./panels.js";

let pollTimer = null;
let generation = 0; // bumps when polling restarts (new key), so stale loops stop

// -- authentication -----------------------------------------------------------------------

function setConn(kind, text) {
  const chip = $("conn-status");
  chip.dataset.state = kind;
  chip.textContent = text;
}

function showAuth(message) {
  generation += 1;
  if (pollTimer !== null) clearTimeout(pollTimer);
  pollTimer = null;
  $("main").hidden = true;
  $("auth").hidden = false;
  $("auth-message").textContent = message;
  setConn("auth", "API key needed");
  $("api-key").value = "";
  $("api-key").focus();
}

onUnauthorized((failure) => {
  const detail = failure.detail ? " " + failure.detail : "";
  if (!hasApiKey()) {
    showAuth("This server requires an API key (401 Unauthorized)." + detail);
  } else {
    showAuth("The server refused this API key (401 Unauthorized)." + detail);
  }
});

$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("api-key").value;
  $("api-key").value = "";
  setApiKey(value);
  start();
});

// -- the polling loop ---------------------------------------------------------------------

async function refreshAll() {
  const results = await Promise.allSettled([
    api("GET", "/backends").then((b) => {
      renderTiers(b);
      $("tiers-error").textContent = "";
    }),
    refreshSwitches(),
    refreshMetrics(),
    refreshChunkStats(),
  ]);
  const failures = results.filter((r) => r.status === "rejected").map((r) => r.reason);
  if (failures.some(isUnauthorized)) return false;
  const [tiers, switches, metrics] = results;
  if (tiers.status === "rejected") $("tiers-error").textContent = describe(tiers.reason);
  if (switches.status === "rejected") $("switches-error").textContent = describe(switches.reason);
  if (metrics.status === "rejected") $("traffic-error").textContent = describe(metrics.reason);
  else $("traffic-error").textContent = "";
  if (failures.length) setConn("error", "errors: " + failures.length);
  else setConn("ok", "live");
  setText("updated", "updated " + new Date().toLocaleTimeString());
  return true;
}

async function pollLoop(gen) {
  if (gen !== generation) return;
  let ok = false;
  try {
    ok = await refreshAll();
  } catch (err) {
    setConn("error", describe(err));
    ok = true;
  }
  if (ok && gen === generation) pollTimer = setTimeout(() => pollLoop(gen), POLL_MS);
}

async function start() {
  generation += 1;
  const gen = generation;
  if (pollTimer !== null) clearTimeout(pollTimer);
  pollTimer = null;
  setConn("connecting", "connecting…");
  try {
    await loadOverview();
  } catch (err) {
    if (isUnauthorized(err)) return; // showAuth already ran
    setConn("error", describe(err));
    $("auth").hidden = true;
    $("main").hidden = false;
    pollTimer = setTimeout(() => start(), POLL_MS * 2);
    return;
  }
  if (gen !== generation) return;
  $("auth").hidden = true;
  $("auth-message").textContent = "";
  $("main").hidden = false;
  resetMetrics();
  await pollLoop(gen);
}

start();
