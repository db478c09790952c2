/* The KV checksum form: MD5 of a slot range, per chunk (and per layer when asked). */

import { api, showError } from "./api.js";
import { $, el } from "./format.js";

function renderChecksums(r) {
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
}

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
    renderChecksums(await api("GET", "/cache/kvcache/check?" + query.toString()));
  } catch (err) {
    showError("checksum-error", err);
  } finally {
    $("checksum-submit").disabled = false;
  }
});
