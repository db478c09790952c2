/* lmcache-native dashboard.
 *
 * Plain JavaScript, no framework, no external resources. Every value from the server is
 * shown through textContent (never innerHTML), so nothing the server or a cache key holds
 * can become markup. The API key, when the server needs one, lives in the `apiKey` variable
 * of this closure only: never in localStorage, sessionStorage or a cookie.
 */
"use strict";

(() => {
  const POLL_MS = 2000;
  const HISTORY = 90; // samples kept for the charts (3 minutes at POLL_MS)

  let apiKey = null; // the Bearer key typed by the operator, in memory only
  let pollTimer = null;
  let generation = 0; // bumps when polling restarts (new key), so stale loops stop
  let meta = null;
  let lastMetrics = null; // {t, v: {...counters}}
  const history = []; // {t, hit, lookup, store, retrieve}
  const state = { freeze: null, hotCache: null };

  const $ = (id) => document.getElementById(id);

  // -- DOM helpers (text only) ------------------------------------------------------------

  function el(tag, attrs, ...children) {
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

  function setText(id, value) {
    $(id).textContent = value === null || value === undefined ? "—" : String(value);
  }

  function fillKv(dl, rows) {
    dl.replaceChildren();
    for (const [label, value] of rows) {
      dl.append(el("dt", {}, label), el("dd", {}, value === null || value === undefined ? "—" : value));
    }
  }

  const numberFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

  function fmtInt(n) {
    return Number.isFinite(n) ? numberFormat.format(n) : "—";
  }

  function fmtBytes(n) {
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

  function fmtPct(x) {
    if (x === null || !Number.isFinite(x)) return "—";
    if (x > 0 && x < 0.001) return "<0.1%";
    return (x * 100).toFixed(x === 1 || x === 0 ? 0 : 1) + "%";
  }

  function fmtRate(x) {
    if (x === null || !Number.isFinite(x)) return "—";
    if (x >= 1e6) return (x / 1e6).toFixed(1) + " M tok/s";
    if (x >= 1e3) return (x / 1e3).toFixed(1) + " k tok/s";
    return x.toFixed(x >= 10 ? 0 : 1) + " tok/s";
  }

  // -- the API ----------------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, title, message) {
      super(title + ": " + message);
      this.status = status;
      this.title = title;
      this.detail = message;
    }
  }

  async function errorBody(resp) {
    try {
      const body = await resp.json();
      if (body && typeof body === "object") {
        return { error: String(body.error ?? resp.statusText), message: String(body.message ?? "") };
      }
    } catch (_) {
      /* not JSON */
    }
    return { error: resp.statusText || "HTTP " + resp.status, message: "" };
  }

  async function api(method, path, { text = false } = {}) {
    const headers = { Accept: text ? "text/plain" : "application/json" };
    if (apiKey !== null) headers.Authorization = "Bearer " + apiKey;
    let resp;
    try {
      resp = await fetch(path, { method, headers, cache: "no-store", credentials: "omit", redirect: "error" });
    } catch (err) {
      throw new ApiFailure(0, "No answer", "the admin API did not answer (" + err.message + ")");
    }
    if (!resp.ok) {
      const body = await errorBody(resp);
      const failure = new ApiFailure(resp.status, body.error, body.message);
      if (resp.status === 401) onUnauthorized(failure);
      throw failure;
    }
    return text ? resp.text() : resp.json();
  }

  function describe(err) {
    if (err instanceof ApiFailure) {
      const code = err.status ? " (" + err.status + ")" : "";
      return err.title + code + (err.detail ? ": " + err.detail : "");
    }
    return String(err && err.message ? err.message : err);
  }

  // -- authentication ---------------------------------------------------------------------

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

  function onUnauthorized(failure) {
    const detail = failure.detail ? " " + failure.detail : "";
    if (apiKey === null) {
      showAuth("This server requires an API key (401 Unauthorized)." + detail);
    } else {
      showAuth("The server refused this API key (401 Unauthorized)." + detail);
    }
  }

  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("api-key").value;
    $("api-key").value = "";
    apiKey = value;
    start();
  });

  function setConn(kind, text) {
    const chip = $("conn-status");
    chip.dataset.state = kind;
    chip.textContent = text;
  }

  // -- panels -----------------------------------------------------------------------------

  async function loadOverview() {
    const [version, m, health] = await Promise.all([
      api("GET", "/version", { text: true }),
      api("GET", "/meta"),
      api("GET", "/health"),
    ]);
    meta = m;
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

  function renderTiers(backends) {
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
      if (!(err instanceof ApiFailure && err.status === 401)) $("tiers-error").textContent = describe(err);
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

  async function refreshSwitches() {
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
      if (!(err instanceof ApiFailure && err.status === 401)) $("switches-error").textContent = describe(err);
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

  async function refreshChunkStats() {
    try {
      renderChunkStats(await api("GET", "/chunk_statistics/status"));
      $("chunk-error").textContent = "";
    } catch (err) {
      if (err instanceof ApiFailure && err.status === 401) throw err;
      $("chunk-stats").replaceChildren();
      $("chunk-error").textContent = describe(err);
    }
  }

  for (const action of ["start", "stop", "reset"]) {
    $("chunk-" + action).addEventListener("click", async () => {
      try {
        await api("POST", "/chunk_statistics/" + action);
        await refreshChunkStats();
      } catch (err) {
        if (!(err instanceof ApiFailure && err.status === 401)) $("chunk-error").textContent = describe(err);
      }
    });
  }

  // -- metrics ----------------------------------------------------------------------------

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

  async function refreshMetrics() {
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
    drawCharts();
  }

  // -- charts (canvas, drawn by hand) -----------------------------------------------------

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

  function drawCharts() {
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

  window.addEventListener("resize", () => drawCharts());

  // -- KV checksum ------------------------------------------------------------------------

  $("checksum-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const first = Number($("slot-first").value);
    const last = Number($("slot-last").value);
    const chunk = Number($("checksum-chunk").value);
    const layerwise = $("checksum-layerwise").checked;
    $("checksum-error").textContent = "";
    $("checksum-body").replaceChildren();
    $("checksum-summary").textContent = "";
    if (!Number.isInteger(first) || !Number.isInteger(last) || first < 0 || last < first) {
      $("checksum-error").textContent = "The slot range needs whole numbers with 0 ≤ first ≤ last.";
      return;
    }
    if (!Number.isInteger(chunk) || chunk < 1) {
      $("checksum-error").textContent = "The chunk size must be a whole number ≥ 1.";
      return;
    }
    const query = new URLSearchParams({
      slot_mapping: "[" + first + "," + last + "]",
      chunk_size: String(chunk),
      layerwise: layerwise ? "true" : "false",
    });
    $("checksum-submit").disabled = true;
    try {
      const r = await api("GET", "/cache/kvcache/check?" + query.toString());
      const ranges = (Array.isArray(r.slot_mapping_ranges) ? r.slot_mapping_ranges : [])
        .map((x) => (Array.isArray(x) ? x.join("–") : String(x)))
        .join(", ");
      $("checksum-summary").textContent =
        r.num_chunks + " chunk(s) of up to " + r.chunk_size + " slots over slots " + ranges + ", MD5 " +
        (r.layerwise ? "per layer" : "of all layers");
      const body = $("checksum-body");
      if (r.layerwise && r.chunk_checksums && typeof r.chunk_checksums === "object") {
        body.append(el("tr", {}, el("th", {}, "Layer"), el("th", {}, "Chunk"), el("th", {}, "MD5")));
        for (const [layer, sums] of Object.entries(r.chunk_checksums)) {
          (Array.isArray(sums) ? sums : []).forEach((sum, i) => {
            body.append(el("tr", {}, el("td", {}, layer), el("td", { class: "num" }, i), el("td", {}, sum)));
          });
        }
      } else {
        body.append(el("tr", {}, el("th", {}, "Chunk"), el("th", {}, "MD5")));
        (Array.isArray(r.chunk_checksums) ? r.chunk_checksums : []).forEach((sum, i) => {
          body.append(el("tr", {}, el("td", { class: "num" }, i), el("td", {}, sum)));
        });
      }
    } catch (err) {
      if (!(err instanceof ApiFailure && err.status === 401)) $("checksum-error").textContent = describe(err);
    } finally {
      $("checksum-submit").disabled = false;
    }
  });

  // -- the polling loop -------------------------------------------------------------------

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
    if (failures.some((e) => e instanceof ApiFailure && e.status === 401)) return false;
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
      if (err instanceof ApiFailure && err.status === 401) return; // showAuth already ran
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
    lastMetrics = null;
    history.length = 0;
    await pollLoop(gen);
  }

  start();
})();
