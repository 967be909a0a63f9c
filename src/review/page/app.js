// The review page: one image at a time, decisions by keyboard or mouse,
// each sent to the server (which writes the review CSV) before moving on.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
const api = (path) => path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);

const state = {
  items: [], decisions: [], classes: [], models: [],
  suspectRank: [], // per item: its place in the most-suspect-first order
  shown: [],      // indices of the items that pass the filters
  pos: 0,         // position in `shown`
  transform: "r1c1s256",
  model: null,
  matches: [], pick: 0,
};

async function load() {
  const r = await fetch(api("/api/items"));
  if (!r.ok) { $("status").textContent = "cannot load the items: " + (await r.text()); return; }
  const d = await r.json();
  Object.assign(state, { items: d.items, decisions: d.decisions, classes: d.classes, models: d.models });
  d.suspect_order.forEach((k, place) => { state.suspectRank[k] = place; });
  state.model = d.models[0] || null;
  for (const o of [...new Set(d.items.map((it) => it.origin))]) $("f-origin").add(new Option(o, o));
  d.models.forEach((m) => $("f-model").add(new Option(m, m)));
  filter();
  // Resume where the review stopped: the first image without a decision.
  const first = state.shown.findIndex((k) => !state.decisions[k]);
  state.pos = first >= 0 ? first : 0;
  show();
}

function decisionOf(k) { return state.decisions[k] ? state.decisions[k].decision : "undecided"; }

function filter() {
  const origin = $("f-origin").value, text = $("f-label").value.trim().toLowerCase();
  const model = $("f-model").value, st = $("f-state").value, set = $("f-set").value;
  const mi = state.models.indexOf(model);
  state.shown = state.items.map((it, k) => k).filter((k) => {
    const it = state.items[k];
    if (origin && it.origin !== origin) return false;
    if (set === "hard" && !it.hard) return false;
    if (set === "near" && it.hard) return false;
    if (st && decisionOf(k) !== st) return false;
    if (mi >= 0 && !(it.solved[mi] > 0)) return false;
    if (text && !it.labels.some((c) => c.name.toLowerCase().includes(text) || String(c.index) === text)) return false;
    return true;
  });
  if ($("f-order").value === "suspect") state.shown.sort((a, b) => state.suspectRank[a] - state.suspectRank[b]);
  state.pos = Math.min(state.pos, Math.max(0, state.shown.length - 1));
}

function progress() {
  const done = state.decisions.filter(Boolean).length;
  $("progress").textContent = `${done} / ${state.items.length} reviewed (${state.shown.length} shown)`;
}

function current() { return state.shown[state.pos]; }

function show() {
  progress();
  const k = current();
  if (k === undefined) { $("item-id").textContent = "no image matches the filters"; return; }
  const it = state.items[k];
  $("item-pos").textContent = `${state.pos + 1} of ${state.shown.length}`;
  $("item-id").textContent = it.id;
  $("item-origin").textContent = `${it.origin} row ${it.row}`;
  $("item-kind").textContent = it.hard ? "hard" : "near miss";
  $("photo").src = api(`/api/image?i=${k}`);
  $("labels").innerHTML = "labels: " + it.labels.map((c) => `<span class="label">${c.index} ${esc(c.name)}</span>`).join("");
  showSuspect(it);
  const mates = it.group === null ? [] : state.items.map((o, j) => j).filter((j) => j !== k && state.items[j].group === it.group);
  $("group").innerHTML = mates.length ? "near duplicates: " + mates.map((j) => `<a href="#" data-go="${j}">${esc(state.items[j].id)}</a>`).join(", ") : "";
  const d = state.decisions[k];
  $("decision").innerHTML = d ? `<span class="d-${d.decision}">${d.decision}</span>` +
    (d.decision === "relabel" ? " → " + d.labels.map((l) => `${l} ${esc(state.classes[l])}`).join(", ") : "") +
    (d.comment ? ` — ${esc(d.comment)}` : "") : "undecided";
  $("relabel").hidden = true; $("comment").hidden = true; $("status").textContent = "";
  loadModels(k);
}

// The labels the suggestion would give: the agreed class instead of the
// labels, or beside them for a near-synonym.
function suggestion(it) {
  const s = it.suspect;
  if (!s) return null;
  return s.near_synonym ? [...it.labels.map((c) => c.index), s.class] : [s.class];
}

function showSuspect(it) {
  const s = it.suspect;
  $("b-suggest").hidden = !s;
  if (!s) { $("suspect").textContent = ""; return; }
  const name = state.classes[s.class];
  $("suspect").innerHTML = `label suspect <b>${s.score.toFixed(2)}</b>: ${s.models} of ${state.models.length} models answer ` +
    `<span class="label">${s.class} ${esc(name)}</span> most often (${s.answers} answers)` +
    (s.near_synonym ? " — a near-synonym of the label: <kbd>s</kbd> adds it" : ` — <kbd>s</kbd> relabels as ${esc(name)}`);
}

function takeSuggestion() {
  const k = current();
  const labels = k === undefined ? null : suggestion(state.items[k]);
  if (labels) decide("relabel", labels);
}

function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }

async function loadModels(k) {
  const r = await fetch(api(`/api/models?i=${k}`));
  if (!r.ok || current() !== k) return;
  const d = await r.json();
  const scales = [...new Set(d.transforms.map((t) => +t.split("s")[1]))];
  const html = d.models.map((m) => {
    const answers = m.answers.map(([c, n]) => `<span class="answer">${esc(c.name)} ×${n}</span>`).join("");
    const rows = [];
    for (let a = 0; a < d.transforms.length / scales.length; a++) {
      const cells = scales.map((s, j) => {
        const t = a * scales.length + j, name = d.transforms[t], p = m.pred[t];
        const hit = m.solved.includes(name) ? "hit" : "", sel = name === state.transform && m.model === state.model ? "sel" : "";
        return `<td class="${hit} ${sel}" title="${name}: ${p === 65535 ? "not tried" : esc(state.classes[p])}" data-t="${name}" data-m="${esc(m.model)}">${p === 65535 ? "·" : p}</td>`;
      }).join("");
      rows.push(`<tr><td>${d.transforms[a * scales.length].slice(0, 4)}</td>${cells}</tr>`);
    }
    return `<div class="model"><h3>${esc(m.model)}</h3><div>answers over the grid: ${answers}</div>` +
      `<div>solved under: ${m.solved.length ? m.solved.join(", ") : "no transform"}</div>` +
      `<table class="grid"><tr><td></td>${scales.map((s) => `<td>${s}</td>`).join("")}</tr>${rows.join("")}</table></div>`;
  }).join("");
  $("models").innerHTML = html;
  showView(k);
}

async function showView(k) {
  $("view-name").textContent = `${state.transform} (${state.model || ""})`;
  $("zoom").src = api(`/api/view?i=${k}&t=${state.transform}`);
  $("top5").innerHTML = state.model ? `<button id="b-top5">top-5 of ${esc(state.model)} here</button>` : "";
}

async function top5() {
  const k = current();
  $("top5").textContent = "computing on the CPU…";
  const r = await fetch(api(`/api/top5?i=${k}&m=${encodeURIComponent(state.model)}&t=${state.transform}`));
  const d = await r.json();
  if (!r.ok) { $("top5").textContent = d.error; return; }
  $("top5").innerHTML = "<table>" + d.top.map((c, n) => `<tr><td>${n + 1}</td><td>${esc(c.name)}</td><td>${(100 * c.probability).toFixed(1)}%</td></tr>`).join("") +
    "</table>" + d.labels.map((l) => `label ${esc(l.name)}: rank ${l.rank}, ${(100 * l.probability).toFixed(2)}%`).join("<br>");
}

async function decide(decision, labels, comment) {
  const k = current();
  if (k === undefined) return;
  const old = state.decisions[k];
  const body = { i: k, decision, labels: labels || [], comment: comment !== undefined ? comment : (old ? old.comment : "") };
  const r = await fetch(api("/api/decide"), { method: "POST", body: JSON.stringify(body) });
  const d = await r.json();
  if (!r.ok) { $("status").textContent = "not saved: " + d.error; return; }
  const it = state.items[k];
  state.decisions[k] = { origin: it.origin, row: it.row, decision, comment: body.comment,
    labels: decision === "drop" ? [] : decision === "relabel" ? body.labels : it.labels.map((c) => c.index) };
  move(1);
}

function move(step) {
  state.pos = Math.max(0, Math.min(state.shown.length - 1, state.pos + step));
  show();
}

function openRelabel() {
  $("relabel").hidden = false;
  $("relabel-input").value = "";
  searchClasses();
  $("relabel-input").focus();
}

function searchClasses() {
  const q = $("relabel-input").value.trim().toLowerCase();
  state.matches = q ? state.classes.map((n, i) => [i, n]).filter(([i, n]) => n.toLowerCase().includes(q) || String(i) === q).slice(0, 30) : [];
  state.pick = 0;
  $("relabel-list").innerHTML = state.matches.map(([i, n], j) => `<li data-c="${i}" class="${j === 0 ? "on" : ""}">${i} ${esc(n)}</li>`).join("");
}

function openComment() {
  $("comment").hidden = false;
  const d = state.decisions[current()];
  $("comment-input").value = d ? d.comment : "";
  $("comment-input").focus();
}

document.addEventListener("keydown", (e) => {
  if (e.target === $("relabel-input")) {
    if (e.key === "Enter" && state.matches.length) { decide("relabel", [state.matches[state.pick][0]]); e.preventDefault(); }
    else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      state.pick = Math.max(0, Math.min(state.matches.length - 1, state.pick + (e.key === "ArrowDown" ? 1 : -1)));
      [...$("relabel-list").children].forEach((li, j) => li.classList.toggle("on", j === state.pick));
      e.preventDefault();
    } else if (e.key === "Escape") { $("relabel").hidden = true; }
    return;
  }
  if (e.target === $("comment-input")) {
    if (e.key === "Enter") { decide("flag", [], $("comment-input").value); e.preventDefault(); }
    else if (e.key === "Escape") { $("comment").hidden = true; }
    return;
  }
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
  const keys = { k: () => decide("keep"), d: () => decide("drop"), r: openRelabel, f: () => decide("flag"), c: openComment, s: takeSuggestion,
    ArrowRight: () => move(1), ArrowLeft: () => move(-1), j: () => move(1), p: () => move(-1) };
  if (keys[e.key]) { keys[e.key](); e.preventDefault(); }
});

$("relabel-input").addEventListener("input", searchClasses);
$("relabel-list").addEventListener("click", (e) => { const c = e.target.dataset.c; if (c !== undefined) decide("relabel", [+c]); });
$("b-keep").onclick = () => decide("keep");
$("b-drop").onclick = () => decide("drop");
$("b-relabel").onclick = openRelabel;
$("b-flag").onclick = () => decide("flag");
$("b-comment").onclick = openComment;
$("b-suggest").onclick = takeSuggestion;
$("b-prev").onclick = () => move(-1);
$("b-next").onclick = () => move(1);
for (const id of ["f-origin", "f-label", "f-model", "f-state", "f-set", "f-order"]) {
  $(id).addEventListener("input", () => { filter(); state.pos = 0; show(); });
}
$("models").addEventListener("click", (e) => {
  const t = e.target.dataset.t;
  if (t) { state.transform = t; state.model = e.target.dataset.m; loadModels(current()); }
});
$("top5").addEventListener("click", (e) => { if (e.target.id === "b-top5") top5(); });
$("group").addEventListener("click", (e) => {
  const j = e.target.dataset.go;
  if (j !== undefined) { e.preventDefault(); $("f-origin").value = ""; $("f-label").value = ""; $("f-model").value = ""; $("f-state").value = ""; $("f-set").value = ""; filter(); state.pos = state.shown.indexOf(+j); show(); }
});
load();
