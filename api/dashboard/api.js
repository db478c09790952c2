/* Calls to the admin API. The API key, when the server needs one, lives in the `apiKey`
 * variable of this module only: never in localStorage, sessionStorage or a cookie.
 */

import { $ } from "./format.js";

let apiKey = null; // the Bearer key typed by the operator, in memory only
let unauthorizedHandler = () => {};

export function setApiKey(value) {
  apiKey = value;
}

export function hasApiKey() {
  return apiKey !== null;
}

/** Sets what runs when the server answers 401 (it receives the ApiFailure). */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

export class ApiFailure extends Error {
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

export async function api(method, path, { text = false } = {}) {
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
    if (resp.status === 401) unauthorizedHandler(failure);
    throw failure;
  }
  return text ? resp.text() : resp.json();
}

export function isUnauthorized(err) {
  return err instanceof ApiFailure && err.status === 401;
}

export function describe(err) {
  if (err instanceof ApiFailure) {
    const code = err.status ? " (" + err.status + ")" : "";
    return err.title + code + (err.detail ? ": " + err.detail : "");
  }
  return String(err && err.message ? err.message : err);
}

/** Shows `err` in the element `id`, unless it is a 401 (the key prompt reports those). */
export function showError(id, err) {
  if (!isUnauthorized(err)) $(id).textContent = describe(err);
}
