// The playground: chat with steering, A/B compare, feature search and cards, look inside, export and share.
// State lives in `state`; the page is drawn from it. Every request goes through api.js.
import { Api, ApiError } from "./api.js";

const $ = (id) => document.getElementById(id);
const api = new Api("", () => $("api-key").value.trim());
const state = {
  messages: [],        // the conversation so far: {role, content}
  clamps: [],          // {index, label, value, mode, unit}
  presets: [],
  model: null,
  sae: null,
  controller: null,    // AbortController of the request in flight
};

// ------------------------------------------------------------------ small helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function showError(err) {
  const box = $("error");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = err instanceof ApiError ? err.describe() : String(err.message || err);
  box.hidden = false;
}

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

// ------------------------------------------------------------------ the steering block
export function steeringBlock() {
  const s = {};
  if ($("preset").value) s.preset = $("preset").value;
  const concept = $("concept").value.trim();
  if (concept) { s.concept = concept; s.strength = Number($("strength").value) || 1; }
  if (state.clamps.length) {
    s.features = state.clamps.map(({ index, value, mode, unit }) =>
      mode === "scale" ? { index, value, mode } : { index, value, mode, unit });
  }
  const limit = numberOrNull("generated-limit");
  if ($("positions").value !== "all" || limit !== null) {
    s.positions = $("positions").value;
    s.generated_limit = limit;
  }
  if ($("compare").checked) s.compare = true;
  if ($("inspect").checked) s.inspect = { top_k: 5 };
  return s;
}

function requestBody(messages, steering) {
  const system = $("system").value.trim();
  const body = {
    model: state.model || "default",
    messages: system ? [{ role: "system", content: system }, ...messages] : messages,
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
    seed: Number($("seed").value),
  };
  if (Object.keys(steering).length) body.steering = steering;
  return body;
}

// ------------------------------------------------------------------ chat
function answerBox(title) {
  const text = el("div", { class: "text" });
  const box = el("div", { class: "answer" }, el("h4", {}, title), text, el("div", { class: "finish" }));
  return { box, text, content: "" };
}

function colourToken(reading) {
  const watched = Number($("colour-feature")?.value);
  const all = [...(reading.features || []), ...(reading.top || [])];
  const hit = all.find((f) => f.index === watched);
  const rel = hit ? Math.min(1, hit.relative_activation ?? hit.activation) : 0;
  const title = (reading.top || []).map((f) => `${f.index} ${f.label ?? ""}: ${f.activation.toFixed(2)}`).join("\n");
  return el("span", { class: "tok", title, "data-index": hit ? hit.index : "",
    style: rel > 0 ? `background: rgba(255, 152, 0, ${0.15 + 0.75 * rel})` : "" }, reading.token);
}

function addToAnswer(box, choice) {
  const delta = choice.delta || {};
  if (choice.inspection && choice.inspection.length) {
    for (const reading of choice.inspection) box.text.append(colourToken(reading));
  } else if (delta.content) {
    box.text.append(delta.content);
  }
  if (delta.content) box.content += delta.content;
  for (const ev of choice.monitor_events || []) {
    box.text.append(el("span", { class: "flag", title: `feature ${ev.index} at ${ev.value.toFixed(2)}` },
      `⚑ ${ev.name} (${ev.action})`));
  }
  if (choice.finish_reason) box.box.querySelector(".finish").textContent = `finish: ${choice.finish_reason}`;
}

function describeReport(report) {
  if (!report) return "";
  const parts = (report.features || []).map((f) => `${f.index} → ${f.value} (${f.mode}${f.unit ? ", " + f.unit : ""})`);
  let text = parts.length ? `Applied: ${parts.join("; ")}` : "No clamps applied.";
  if (report.concept) text += ` Auto-steer picked ${JSON.stringify(report.concept.features)}: ${report.concept.rationale ?? ""}`;
  return text;
}

// Streams one request into `boxes` (index = choice index); resolves with the boxes.
async function streamInto(body, boxes, signal) {
  await api.stream("/v1/chat/completions", body, (chunk) => {
    if (chunk.steering) $("report").textContent = describeReport(chunk.steering);
    for (const choice of chunk.choices || []) if (boxes[choice.index]) addToAnswer(boxes[choice.index], choice);
  }, signal);
  return boxes;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("strengths").disabled = busy;
  $("stop").disabled = !busy;
}

async function send(variants) {
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  showError(null);
  const messages = [...state.messages, { role: "user", content: prompt }];
  const turn = el("div", { class: "turn" }, el("div", { class: "who" }, "user"), el("div", {}, prompt));
  const answers = el("div", { class: "answers" });
  turn.append(el("div", { class: "who" }, "assistant"), answers);
  $("transcript").append(turn);
  state.controller = new AbortController();
  setBusy(true);
  try {
    const steering = steeringBlock();
    if (variants) {   // the same prompt at several strengths, side by side
      const runs = variants.map((k) => {
        const box = answerBox(`×${k}`);
        answers.append(box.box);
        const scaled = { ...steering, compare: undefined,
          features: (steering.features || []).map((f) => ({ ...f, value: f.value * k })) };
        if (scaled.strength) scaled.strength = Math.min(5, scaled.strength * k);
        return streamInto(requestBody(messages, scaled), [box], state.controller.signal);
      });
      await Promise.all(runs);
      return;   // a comparison, not a turn of the conversation
    }
    const boxes = [answerBox(steering.compare ? "steered" : "answer")];
    if (steering.compare) boxes.push(answerBox("baseline"));
    for (const b of boxes) answers.append(b.box);
    await streamInto(requestBody(messages, steering), boxes, state.controller.signal);
    state.messages = [...messages, { role: "assistant", content: boxes[0].content }];
    $("prompt").value = "";
  } catch (err) {
    if (err.name === "AbortError") turn.append(el("div", { class: "muted" }, "stopped"));
    else showError(err);
  } finally {
    state.controller = null;
    setBusy(false);
    writeExport();
  }
}

// ------------------------------------------------------------------ clamps
function drawClamps() {
  const box = $("clamps");
  box.replaceChildren();
  state.clamps.forEach((c, i) => {
    const value = el("input", { type: "range", min: "-10", max: "20", step: "0.25", value: c.value,
      "aria-label": `strength of feature ${c.index}` });
    const shown = el("span", {}, `${c.value}${c.mode === "scale" ? "" : " × max"}`);
    value.addEventListener("input", () => { c.value = Number(value.value); shown.textContent = `${c.value}${c.mode === "scale" ? "" : " × max"}`; writeExport(); });
    const mode = el("select", { "aria-label": `mode of feature ${c.index}` },
      ...["clamp", "add", "scale"].map((m) => el("option", m === c.mode ? { selected: "" } : {}, m)));
    mode.addEventListener("change", () => { c.mode = mode.value; drawClamps(); writeExport(); });
    const remove = el("button", { type: "button", onclick: () => { state.clamps.splice(i, 1); drawClamps(); writeExport(); } }, "remove");
    box.append(el("div", { class: "clamp", "data-index": c.index },
      el("div", {}, el("strong", {}, `#${c.index}`), " ", c.label || "", el("br"), value, " ", shown),
      el("div", {}, mode, " ", remove)));
  });
  if (!state.clamps.length) box.append(el("p", { class: "muted" }, "No clamps: add one from a feature card."));
}

function addClamp(index, label, value = 4) {
  if (state.clamps.some((c) => c.index === index)) return;
  state.clamps.push({ index, label, value, mode: "clamp", unit: "max" });
  drawClamps();
  writeExport();
}

// ------------------------------------------------------------------ features
async function search(event) {
  event.preventDefault();
  const q = $("search").value.trim();
  if (!q) return;
  showError(null);
  const list = $("results");
  list.replaceChildren(el("li", { class: "muted" }, "searching…"));
  try {
    const res = await api.get(`/v1/features/search?q=${encodeURIComponent(q)}&mode=${$("search-mode").value}&limit=10`);
    list.replaceChildren(...res.data.map((m) => el("li", {},
      el("button", { type: "button", onclick: () => openCard(m.index) }, `#${m.index} ${m.label ?? ""}`),
      el("span", { class: "muted" }, ` ${m.match}`))));
    if (!res.data.length) list.append(el("li", { class: "muted" }, "no match"));
  } catch (err) { list.replaceChildren(); showError(err); }
}

function contextLine(text) {   // the catalogue marks the peak token as [[token]]
  const out = el("li", {});
  text.split(/(\[\[.*?\]\])/).forEach((part) =>
    out.append(part.startsWith("[[") ? el("mark", {}, part.slice(2, -2)) : part));
  return out;
}

async function openCard(index) {
  showError(null);
  const card = $("card");
  try {
    const f = await api.get(`/v1/features/${index}`);
    const tokens = (list) => list.map((t) => t.token).join(" · ");
    card.replaceChildren(
      el("h4", {}, `Feature #${f.index}: ${f.label ?? "(no label)"}`),
      el("div", { class: "muted" }, `max activation ${f.max_activation?.toFixed?.(2) ?? "?"}, fires on ` +
        `${f.firing_frequency != null ? (100 * f.firing_frequency).toFixed(3) + "%" : "?"} of tokens`),
      el("button", { type: "button", id: "add-clamp", onclick: () => addClamp(f.index, f.label) }, "Add as clamp"),
      el("div", {}, el("strong", {}, "Top contexts")), el("ul", {}, ...f.top_contexts.map((c) => contextLine(c.text))),
      el("div", {}, el("strong", {}, "Promotes: "), tokens(f.promoted_tokens)),
      el("div", {}, el("strong", {}, "Suppresses: "), tokens(f.suppressed_tokens)),
      el("div", {}, el("strong", {}, "Neighbours: "), ...f.neighbours.map((n) =>
        el("button", { type: "button", class: "link", onclick: () => openCard(n.index) }, `#${n.index} (${n.cosine.toFixed(2)}) `))));
    card.hidden = false;
  } catch (err) { showError(err); }
}

// ------------------------------------------------------------------ export and share
function presetFile() {
  const s = steeringBlock();
  const name = ($("concept").value.trim() || "my-preset").toLowerCase().replace(/[^a-z0-9-]+/g, "-");
  const preset = { name, description: "Made in the playground.", model: state.model, sae: state.sae?.id,
    features: s.features || [], positions: s.positions || "all", generated_limit: s.generated_limit ?? null };
  const system = $("system").value.trim();
  if (system) preset.system_prompt = system;
  return preset;
}

function writeExport() {
  $("export").value = JSON.stringify({ steering: steeringBlock() }, null, 2);
}

function shareState() {
  return { prompt: $("prompt").value, system: $("system").value, preset: $("preset").value,
    concept: $("concept").value, strength: $("strength").value, clamps: state.clamps,
    positions: $("positions").value, generated_limit: $("generated-limit").value,
    temperature: $("temperature").value, max_tokens: $("max-tokens").value, seed: $("seed").value,
    compare: $("compare").checked };
}

function restore(hash) {
  if (!hash.startsWith("#s=")) return;
  try {
    const s = JSON.parse(decodeURIComponent(escape(atob(hash.slice(3)))));
    for (const [id, key] of [["prompt", "prompt"], ["system", "system"], ["concept", "concept"], ["strength", "strength"],
      ["positions", "positions"], ["generated-limit", "generated_limit"], ["temperature", "temperature"],
      ["max-tokens", "max_tokens"], ["seed", "seed"]]) if (s[key] !== undefined) $(id).value = s[key];
    $("compare").checked = !!s.compare;
    state.clamps = Array.isArray(s.clamps) ? s.clamps : [];
    state.pendingPreset = s.preset || "";
  } catch (err) { showError(new Error(`The shared link could not be read: ${err.message}`)); }
}

function download(name, text) {
  const a = el("a", { href: URL.createObjectURL(new Blob([text], { type: "application/json" })), download: name });
  document.body.append(a);
  a.click();
  a.remove();
}

// ------------------------------------------------------------------ start-up
async function waitReady() {
  const status = $("status");
  for (;;) {
    try {
      const ready = await api.get("/ready");
      state.model = ready.model ?? ready.model_id ?? null;
      state.sae = ready.sae ?? null;
      status.textContent = `ready: ${state.model ?? "model"}${state.sae?.id ? " + " + state.sae.id : ""}`;
      status.classList.add("ready");
      return;
    } catch (err) {
      status.textContent = err instanceof ApiError && err.status === 401 ? "needs an API key" : "model loading…";
      if (err instanceof ApiError && err.status === 401) showError(err);
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

async function loadPresets() {
  try {
    const res = await api.get("/v1/presets");
    state.presets = res.data.filter((p) => p.available);
    $("preset").replaceChildren(el("option", { value: "" }, "(none)"),
      ...state.presets.map((p) => el("option", { value: p.name }, p.name)));
    if (state.pendingPreset) $("preset").value = state.pendingPreset;
    describePreset();
  } catch (err) { showError(err); }
}

function describePreset() {
  const p = state.presets.find((x) => x.name === $("preset").value);
  const e = p?.efficacy;
  const measured = e && e.concept_rate != null
    ? ` Measured: concept in ${(100 * e.concept_rate).toFixed(0)}% of answers (plain ${(100 * (e.baseline_concept_rate ?? 0)).toFixed(0)}%), Δloss ${e.delta_loss != null ? Number(e.delta_loss).toFixed(2) : "?"} nats.`
    : "";
  $("preset-info").textContent = p ? p.description + measured : "";
  writeExport();
}

function wire() {
  $("api-key").value = localStorage.getItem("steering-api-key") || "";
  $("api-key").addEventListener("change", () => { localStorage.setItem("steering-api-key", $("api-key").value); start(); });
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(null); });
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(null); });
  $("stop").addEventListener("click", () => state.controller?.abort());
  $("strengths").addEventListener("click", () => send([1, 2, 4]));
  $("clear").addEventListener("click", () => { state.messages = []; $("transcript").replaceChildren(); });
  $("search-form").addEventListener("submit", search);
  $("preset").addEventListener("change", describePreset);
  for (const id of ["concept", "strength", "positions", "generated-limit", "compare", "inspect"]) $(id).addEventListener("change", writeExport);
  $("inspect").addEventListener("change", () => {
    $("colour-row")?.remove();
    if ($("inspect").checked) {
      $("inspect").closest(".row").append(el("label", { id: "colour-row" }, "Colour by feature",
        el("input", { id: "colour-feature", type: "number", min: "0", placeholder: "index" })));
    }
  });
  $("copy-json").addEventListener("click", async () => {
    writeExport();
    try { await navigator.clipboard.writeText($("export").value); } catch { $("export").select(); }
  });
  $("download-preset").addEventListener("click", () => {
    const preset = presetFile();
    $("export").value = JSON.stringify(preset, null, 2);
    download(`${preset.name}.json`, $("export").value + "\n");
  });
  $("share").addEventListener("click", () => {
    const url = `${location.origin}${location.pathname}#s=${btoa(unescape(encodeURIComponent(JSON.stringify(shareState()))))}`;
    history.replaceState(null, "", url);
    $("export").value = url;
  });
}

async function start() {
  await waitReady();
  await loadPresets();
}

wire();
restore(location.hash);
drawClamps();
writeExport();
start();

// For tests and the console: what the page would send now.
window.playground = { steeringBlock, presetFile, state };
