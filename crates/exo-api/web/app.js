// The chat page's behaviour: the model picker (/v1/models), streaming chat over /v1/chat/completions (SSE) with
// Stop and per-answer token rates, a thinking model's reasoning (delta.reasoning_content) folded above its answer,
// rendering of code fences, and the cluster panel polled from /v1/topology
// (with this node's downloads from /v1/downloads). A node with an API key answers 401: the page then asks for the
// key once, keeps it in localStorage and sends it with every request, and asks again only if it is refused.
// Text from the model or the network only reaches the page as text nodes (append / textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  messages: $("messages"), prompt: $("prompt"), send: $("send"), stop: $("stop"), model: $("model"),
  composer: $("composer"), cluster: $("cluster"), nodes: $("nodes"), plans: $("plans"), clusterStatus: $("cluster-status"),
  downloads: $("downloads"), downloadsHead: $("downloads-head"),
  keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("key-input"), keyMessage: $("key-message"),
};
const MODEL_KEY = "exo.model";
const API_KEY = "exo.apiKey";
const conversation = []; // [{role, content}], sent whole with each request
let controller = null; // AbortController of the request in flight, null when idle
let loadedModel = null; // the model this node reports as loaded, from the topology

// el("div", {class: "x"}, child, "text"): strings among the children become text nodes.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) node.setAttribute(k, v);
  node.append(...children.filter((c) => c != null && c !== false));
  return node;
}

const storage = {
  get: (k) => { try { return localStorage.getItem(k); } catch { return null; } },
  set: (k, v) => { try { localStorage.setItem(k, v); } catch { /* storage off: nothing remembered */ } },
};

// ---- the API key -----------------------------------------------------------------------------------------------

let apiKey = storage.get(API_KEY); // also kept here, for browsers with storage turned off
let asking = null; // the open request for a key: every call refused meanwhile waits for the same answer

// Shows the key form and resolves once a key is entered (there is no cancel: without it nothing works).
function askForKey(refused) {
  asking ??= new Promise((resolve) => {
    ui.keyMessage.textContent = refused ? "The node refused the saved API key. Enter its key:" :
      "This node needs an API key (its --api-key):";
    ui.keyInput.value = "";
    ui.keyDialog.hidden = false;
    ui.keyInput.focus();
    ui.keyForm.onsubmit = (e) => {
      e.preventDefault();
      const key = ui.keyInput.value.trim();
      if (!key) return;
      apiKey = key;
      storage.set(API_KEY, key);
      ui.keyDialog.hidden = true;
      asking = null;
      resolve();
    };
  });
  return asking;
}

// fetch with the key: a 401 asks for one (or another, if the one sent was refused) and tries again. `timeout`
// (ms) applies to each try, not to the time the form waits for the key.
async function api(path, { timeout, ...options } = {}) {
  for (;;) {
    const sent = apiKey;
    const headers = new Headers(options.headers);
    if (sent) headers.set("Authorization", `Bearer ${sent}`);
    const signal = timeout ? AbortSignal.timeout(timeout) : options.signal;
    const res = await fetch(path, { ...options, headers, signal });
    if (res.status !== 401) return res;
    if (apiKey === sent) await askForKey(Boolean(sent)); // else: a key came meanwhile, try it
  }
}

// ---- rendering assistant text -------------------------------------------------------------------------------

// Plain text into `parent`, with `inline code` as <code>; newlines are kept by CSS (white-space: pre-wrap).
function inline(text, parent) {
  text.split(/`([^`\n]+)`/).forEach((part, i) => {
    if (i % 2) parent.append(el("code", {}, part));
    else if (part) parent.append(part);
  });
}

// Assistant text as a fragment: ```lang fences become <pre><code> blocks with the language as a label; a fence
// not yet closed (mid-stream) is code up to the end of what has arrived.
function render(text) {
  const frag = document.createDocumentFragment();
  let pos = 0;
  while (pos < text.length) {
    const open = text.indexOf("```", pos);
    if (open < 0) { inline(text.slice(pos), frag); break; }
    inline(text.slice(pos, open).replace(/\n$/, ""), frag);
    const eol = text.indexOf("\n", open + 3);
    const first = text.slice(open + 3, eol < 0 ? text.length : eol);
    const sameLine = first.indexOf("```");
    if (sameLine >= 0) { // ```x``` on one line: inline code
      frag.append(el("code", {}, first.slice(0, sameLine)));
      pos = open + 3 + sameLine + 3;
      continue;
    }
    const start = eol < 0 ? text.length : eol + 1;
    const close = text.indexOf("```", start);
    const code = text.slice(start, close < 0 ? text.length : close).replace(/\n$/, "");
    const lang = first.trim().split(/\s+/)[0];
    frag.append(el("div", { class: "code" }, lang ? el("span", { class: "lang" }, lang) : null,
      el("pre", {}, el("code", {}, code))));
    if (close < 0) break;
    pos = close + 3;
    if (text[pos] === "\n") pos++; // the block already ends its line
  }
  return frag;
}

// ---- conversation ---------------------------------------------------------------------------------------------

const nearBottom = () => ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
const scrollDown = () => { ui.messages.scrollTop = ui.messages.scrollHeight; };

function addMessage(role, text = "") {
  ui.messages.querySelector(".empty")?.remove();
  const msg = el("div", { class: `message ${role}` }, el("div", { class: "content" }, text));
  ui.messages.append(msg);
  scrollDown();
  return msg;
}

// The folded box a thinking model's reasoning streams into, above the answer: open while the reasoning comes,
// closed once the answer starts (a click opens it again).
function addThinking(msg) {
  const summary = el("summary", {}, "Thinking…");
  const text = el("div", { class: "reasoning-text" });
  const box = el("details", { class: "reasoning", open: "" }, summary, text);
  msg.prepend(box);
  return { box, summary, text, t0: performance.now(), done: false };
}

// The reasoning is over (the answer started, or the stream ended): say for how long, and fold it if `fold`.
function endThinking(thinking, fold) {
  if (thinking.done) return;
  thinking.done = true;
  thinking.summary.textContent = `Thought for ${((performance.now() - thinking.t0) / 1000).toFixed(1)} s`;
  if (fold) thinking.box.open = false;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
}

// The message of a non-200 response: OpenAI's {"error": {"message"}} if the body has it.
async function errorText(res) {
  const text = await res.text();
  try {
    const message = JSON.parse(text).error?.message;
    if (message) return message;
  } catch { /* not JSON */ }
  return `HTTP ${res.status}${text ? ": " + text.slice(0, 300) : ""}`;
}

// Reads a server-sent event stream, passing each `data:` payload to onData until it returns false or the body
// ends. Lines split across reads are joined in `buf`.
async function readSSE(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    buf += done ? decoder.decode() : decoder.decode(value, { stream: true });
    const lines = buf.split("\n");
    buf = done ? "" : lines.pop();
    for (const line of lines) {
      if (line.startsWith("data:") && onData(line.slice(5).trim()) === false) {
        reader.cancel().catch(() => {});
        return;
      }
    }
    if (done) return;
  }
}

async function send() {
  const text = ui.prompt.value.trim();
  if (!text || controller) return;
  ui.prompt.value = "";
  ui.prompt.style.height = "";
  conversation.push({ role: "user", content: text });
  addMessage("user", text);
  const msg = addMessage("assistant");
  const body = msg.querySelector(".content");
  msg.classList.add("pending");

  let answer = "", reasoning = "", chunks = 0, usage = null, finish = null, failure = null, stopped = false;
  let thinking = null; // the reasoning's box, made at its first chunk
  let painting = false;
  const paint = () => {
    painting = false;
    const stick = nearBottom();
    if (thinking) thinking.text.textContent = reasoning;
    body.replaceChildren(render(answer));
    if (stick) scrollDown();
  };
  const t0 = performance.now();
  let tFirst = null;
  controller = new AbortController();
  setBusy(true);
  try {
    const res = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      signal: controller.signal,
      body: JSON.stringify({
        model: ui.model.value, messages: conversation, stream: true, stream_options: { include_usage: true },
      }),
    });
    if (!res.ok) throw new Error(await errorText(res));
    await readSSE(res.body, (data) => {
      if (data === "[DONE]") return false;
      const chunk = JSON.parse(data);
      if (chunk.error) { failure = chunk.error.message || "the node reported an error"; return false; }
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      const delta = choice?.delta;
      if (delta?.reasoning_content) {
        tFirst ??= performance.now();
        chunks++;
        thinking ??= addThinking(msg);
        reasoning += delta.reasoning_content;
        if (!painting) { painting = true; requestAnimationFrame(paint); }
      }
      if (delta?.content) {
        tFirst ??= performance.now();
        chunks++;
        if (thinking) endThinking(thinking, true);
        answer += delta.content;
        if (!painting) { painting = true; requestAnimationFrame(paint); }
      }
      if (choice?.finish_reason) finish = choice.finish_reason;
    });
    if (!failure && !finish) failure = "the stream ended before the answer was finished";
  } catch (e) {
    if (e.name === "AbortError") stopped = true;
    else failure = e.message || String(e);
  }
  const tEnd = performance.now();
  controller = null;
  setBusy(false);
  const stick = nearBottom();
  if (thinking) endThinking(thinking, false); // reasoning without an answer stays open
  paint();
  msg.classList.remove("pending");
  // The reasoning is not sent back with the next question (DeepSeek's API refuses it; templates drop it).
  if (answer) conversation.push({ role: "assistant", content: answer });
  else if (failure) conversation.pop(); // nothing came back: don't resend this question with the next one

  // Rate: completion tokens (reasoning included) over the time from the first token to the end.
  const n = usage?.completion_tokens ?? chunks;
  let seconds = (tEnd - (tFirst ?? t0)) / 1000;
  if (seconds < 0.001) seconds = (tEnd - t0) / 1000;
  const stats = [];
  if (stopped) stats.push("stopped");
  if (n) stats.push(`${n} tokens`, `${(n / seconds).toFixed(1)} tokens/s`);
  if (tFirst) stats.push(`first token after ${((tFirst - t0) / 1000).toFixed(2)} s`);
  if (finish === "length") stats.push("cut off at the length limit");
  if (stopped) msg.classList.add("stopped");
  if (stats.length) msg.append(el("div", { class: "stats" }, stats.join(" · ")));
  if (failure) msg.append(el("div", { class: "error" }, failure));
  if (stick) scrollDown();
}

ui.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
ui.prompt.addEventListener("input", () => {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = Math.min(ui.prompt.scrollHeight, 200) + "px";
});
ui.stop.addEventListener("click", () => controller?.abort());

// ---- model picker ---------------------------------------------------------------------------------------------

// Fills the picker; prefers the model the node has loaded, then the one picked last time, then the first.
async function loadModels() {
  try {
    const res = await api("/v1/models", { cache: "no-store" });
    if (!res.ok) throw new Error(await errorText(res));
    // Models on this machine first; the catalog's others are fetched on first use (their size says how much).
    const models = (await res.json()).data;
    const here = (m) => !m.exo || m.exo.complete;
    const sorted = [...models.filter(here), ...models.filter((m) => !here(m))];
    const ids = sorted.map((m) => m.id);
    if (!ids.length) throw new Error("no models");
    const pick = [loadedModel, storage.get(MODEL_KEY)].find((id) => id && ids.includes(id)) || ids[0];
    const label = (m) => here(m) ? m.id : `${m.id} (download ${gib(m.exo.size ?? 0)} GiB${m.exo.cached_bytes ? `, ${gib(m.exo.cached_bytes)} here` : ""})`;
    ui.model.replaceChildren(...sorted.map((m) => el("option", { value: m.id }, label(m))));
    ui.model.value = pick;
  } catch {
    ui.model.replaceChildren(el("option", { value: "" }, "no models yet…"));
    setTimeout(loadModels, 2000);
  }
}
ui.model.addEventListener("change", () => storage.set(MODEL_KEY, ui.model.value));

// ---- cluster panel --------------------------------------------------------------------------------------------

const gib = (bytes) => (bytes / 1024 ** 3).toFixed(1);
const pct = (x) => `${Math.max(0, Math.min(1, x || 0)) * 100}%`;

// A thin bar filled from `from` over `width`, both fractions of the whole.
function bar(from, width, title) {
  const fill = el("span", { class: "fill" });
  fill.style.left = pct(from);
  fill.style.width = pct(width);
  return el("div", { class: "bar", title }, fill);
}

function modelRows(m) {
  if (!m) return [el("div", { class: "row muted" }, "no model loaded")];
  const { start, end } = m.layers;
  return [
    el("div", { class: "row model" }, m.id),
    el("div", { class: "row" }, `layers ${start}–${end} of ${m.n_layers} · ${(m.bytes / 1024 ** 2).toFixed(0)} MiB`),
    bar(start / m.n_layers, (end - start + 1) / m.n_layers, `holds layers ${start}–${end} of ${m.n_layers}`),
  ];
}

// The node's GPUs (and, after them, the CPU that holds what they cannot): what each is, its memory, and its layers.
function deviceRows(n) {
  const devices = n.devices || [];
  if (!devices.some((d) => d.name !== "cpu")) return [];
  return devices.map((d) => {
    const layers = d.layers ? ` · layers ${d.layers.start}–${d.layers.end}` : "";
    if (d.name === "cpu") return el("div", { class: "row device" }, `cpu · the layers its GPUs cannot hold${layers}`);
    const cc = d.compute_capability ? ` · compute ${d.compute_capability}` : "";
    const memory = d.memory_total_bytes ? ` · ${gib(d.memory_free_bytes)} / ${gib(d.memory_total_bytes)} GiB free` : "";
    return el("div", { class: "row device", "data-device": d.name }, `${d.name} · ${d.description}${memory}${cc}${layers}`);
  });
}

function nodeCard(n, self) {
  const mem = n.memory || {}, inf = n.inference || {}, cpu = n.cpu || {};
  const state = !n.inference ? "peer" : inf.busy ? `busy${inf.queued ? ` · ${inf.queued} queued` : ""}` : "idle";
  const limit = mem.limit_bytes != null ? ` · limit ${gib(mem.limit_bytes)} GiB` : "";
  return el("div", { class: n.id === self ? "node self" : "node", "data-node-id": n.id },
    el("div", { class: "node-head" },
      el("strong", { title: n.id }, n.id.slice(0, 8)),
      n.id === self ? el("span", { class: "tag" }, "this node") : null,
      el("span", { class: `state ${inf.busy ? "busy" : "idle"}` }, state)),
    el("div", { class: "row muted" }, `${(n.addresses || []).join(", ")} · api :${n.api_port} · peer :${n.listen_port}`),
    n.link ? el("div", { class: "row muted" },
      `link ${n.link.address}${n.link.rtt_ms != null ? ` · ${n.link.rtt_ms.toFixed(2)} ms round trip` : ""}`) : null,
    el("div", { class: "row" }, `memory ${gib(mem.usable_bytes)} / ${gib(mem.total_bytes)} GiB usable${limit}`),
    bar(0, mem.usable_bytes / mem.total_bytes, "usable share of memory"),
    el("div", { class: "row" }, `${n.threads} threads · ${cpu.kernels ?? "?"} kernels · ${cpu.arch ?? ""}`),
    ...deviceRows(n),
    ...modelRows(n.model),
    n.inference ? el("div", { class: "row muted" },
      `${inf.requests ?? 0} requests · ${inf.tokens_generated ?? 0} tokens generated`) : null);
}

// A plan: its model, and the ring of stages as segments of one bar, in ring order.
function planCard(p) {
  const ring = el("div", { class: "bar ring" });
  for (const s of p.stages) {
    const seg = el("span", { class: "fill", title: `${s.node_id}: layers ${s.start}–${s.end}` });
    seg.style.left = pct(s.start / p.n_layers);
    seg.style.width = pct((s.end - s.start + 1) / p.n_layers);
    ring.append(seg);
  }
  // A stage on GPUs lists which device holds which of its layers.
  const parts = (s) => (s.devices || []).length > 1 || (s.devices || []).some((d) => d.device !== "cpu")
    ? ` (${s.devices.map((d) => `${d.device} ${d.start}–${d.end}`).join(", ")})` : "";
  const stages = p.stages.map((s) => `${s.node_id.slice(0, 8)} ${s.start}–${s.end}${parts(s)}`).join(" → ");
  // How it was placed (docs/placement.md): by memory alone, or by speed with a predicted time per token.
  const placed = p.placement;
  const by = !placed ? "" : placed.by === "speed" && placed.predicted_ms_per_token != null
    ? ` · by speed, ${placed.predicted_ms_per_token.toFixed(1)} ms/token predicted`
    : ` · by ${placed.by}`;
  return el("div", { class: "plan", "data-plan-id": p.id },
    el("div", { class: "row model" }, p.model),
    el("div", { class: "row muted" }, `plan ${p.id.slice(0, 8)} · ${p.n_layers} layers over ${p.stages.length} node${p.stages.length === 1 ? "" : "s"}${by}`),
    ring,
    el("div", { class: "row" }, stages));
}

// A download of this node: what, how far, from where.
function downloadCard(d) {
  const mib = (b) => (b / 1024 ** 2).toFixed(0);
  const state = d.state === "running" ? `${mib(d.done_bytes)} / ${mib(d.total_bytes)} MiB` : d.state;
  return el("div", { class: `download ${d.state}`, "data-download-id": d.id },
    el("div", { class: "row model", title: d.file }, d.file.split("/").pop()),
    el("div", { class: "row muted" }, `${d.what} · ${state} · hub ${mib(d.from_hub_bytes)} MiB · peers ${mib(d.from_peers_bytes)} MiB`),
    bar(0, d.total_bytes ? d.done_bytes / d.total_bytes : 1, `${d.done_bytes} of ${d.total_bytes} bytes`),
    d.error ? el("div", { class: "row error" }, d.error) : null);
}

async function refreshDownloads() {
  try {
    const res = await api("/v1/downloads", { cache: "no-store", timeout: 5000 });
    if (!res.ok) return;
    const list = (await res.json()).data;
    ui.downloadsHead.hidden = ui.downloads.hidden = !list.length;
    ui.downloads.replaceChildren(...list.slice().reverse().map(downloadCard));
  } catch { /* the topology poll reports an unreachable node */ }
}

async function refreshTopology() {
  refreshDownloads();
  try {
    const res = await api("/v1/topology", { cache: "no-store", timeout: 5000 });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const topo = await res.json();
    const nodes = [...topo.nodes].sort((a, b) => (b.id === topo.self) - (a.id === topo.self));
    ui.nodes.replaceChildren(...nodes.map((n) => nodeCard(n, topo.self)));
    if (topo.plans?.length) ui.plans.replaceChildren(...topo.plans.map(planCard));
    loadedModel = nodes.find((n) => n.id === topo.self)?.model?.id ?? null;
    ui.clusterStatus.textContent = `${nodes.length} node${nodes.length === 1 ? "" : "s"}`;
    ui.cluster.classList.remove("down");
  } catch {
    ui.clusterStatus.textContent = "node unreachable";
    ui.cluster.classList.add("down");
  }
}

async function pollTopology() {
  await refreshTopology();
  setTimeout(pollTopology, 2000);
}

refreshTopology().then(loadModels).then(() => setTimeout(pollTopology, 2000));
