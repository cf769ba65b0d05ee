"use strict";
// triserve console: plain DOM and SVG, every request to this server only.
(function () {
  const API = "/console/api";
  const KEEP = 300;
  let models = [];
  let controlMode = "";
  let samples = [];
  let lastTime = 0;
  let totals = {};

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  async function getJSON(url, options) {
    const response = await fetch(url, options);
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }
  function state(s) { return el("span", { class: "state " + s }, s || "NOT LOADED"); }

  // -- tabs -------------------------------------------------------------------------
  function show() {
    const hash = location.hash.slice(1) || "models";
    const [tab, ...rest] = hash.split("/");
    document.querySelectorAll(".tab").forEach((t) => (t.hidden = t.id !== "tab-" + tab));
    document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
    if (tab === "model") showModel(decodeURIComponent(rest.join("/")));
    if (tab === "traffic") draw();
  }
  window.addEventListener("hashchange", show);

  // -- models -----------------------------------------------------------------------
  async function refreshModels() {
    try {
      const data = await getJSON(API + "/models");
      models = data.models;
      controlMode = data.server.control_mode;
      document.getElementById("server").textContent =
        `${data.server.name} ${data.server.version} · ${data.server.ready ? "ready" : "not ready"} · control mode ${controlMode}`;
      renderModels();
      renderControl();
      renderModelChoice();
    } catch (e) {
      document.getElementById("server").textContent = "server unreachable: " + e.message;
    }
  }
  function versionsText(m) {
    if (!m.versions.length) return m.ready_versions.join(", ");
    return m.versions.map((v) => `${v.version}: ${v.state}`).join(", ");
  }
  function renderModels() {
    const body = document.querySelector("#models-table tbody");
    body.replaceChildren(...models.map((m) => el("tr", { "data-model": m.name },
      el("td", {}, el("a", { href: "#model/" + encodeURIComponent(m.name) }, m.name)),
      el("td", {}, state(m.state), m.reason ? el("div", { class: "reason" }, m.reason) : null),
      el("td", {}, versionsText(m)),
      el("td", {}, m.source),
      el("td", {}, m.platform || m.backend || ""),
      el("td", {}, m.instances ?? ""),
      el("td", {}, m.max_batch_size === undefined ? "" : `${m.max_batch_size} / ${m.batch_cap}`),
      el("td", {}, m.protocols.join(", ")),
      el("td", { class: "requests" }, m.requests ?? ""),
    )));
  }

  // -- model page -------------------------------------------------------------------
  async function showModel(name) {
    document.getElementById("model-title").textContent = name;
    try {
      const d = await getJSON(API + "/models/" + encodeURIComponent(name));
      const m = d.model;
      document.getElementById("model-summary").replaceChildren(
        state(m.state), " ", m.reason || "", el("p", {}, `source: ${m.source} · platform: ${m.platform || m.backend || "?"}`
          + ` · versions: ${versionsText(m)} · protocols: ${m.protocols.join(", ")}`));
      const rows = [...(m.inputs || []).map((t) => ["input", t]), ...(m.outputs || []).map((t) => ["output", t])];
      document.getElementById("model-tensors").replaceChildren(el("table", {},
        el("tr", {}, el("th", {}, ""), el("th", {}, "name"), el("th", {}, "datatype"), el("th", {}, "shape")),
        rows.map(([kind, t]) => el("tr", {}, el("td", {}, kind), el("td", {}, t.name), el("td", {}, t.datatype), el("td", {}, JSON.stringify(t.shape))))));
      document.getElementById("model-stats").textContent = JSON.stringify(d.statistics || {}, null, 2);
      document.getElementById("model-pbtxt").textContent = d.config_pbtxt || "";
      document.getElementById("model-json").textContent = JSON.stringify(d.config || {}, null, 2);
      const labels = d.labels || {};
      document.getElementById("model-labels").textContent = Object.entries(labels)
        .map(([out, l]) => `${out}: ${(Array.isArray(l) ? l : Object.values(l)).slice(0, 50).join(", ")}${Object.keys(l).length > 50 ? ", …" : ""}`)
        .join("\n") || "(none)";
    } catch (e) {
      document.getElementById("model-summary").textContent = e.message;
    }
  }

  // -- traffic ----------------------------------------------------------------------
  function renderModelChoice() {
    const select = document.getElementById("traffic-model");
    const names = models.map((m) => m.name);
    const have = [...select.options].map((o) => o.value).slice(1);
    if (have.join() === names.join()) return;
    const current = select.value;
    select.replaceChildren(el("option", { value: "" }, "all models"), ...names.map((n) => el("option", { value: n }, n)));
    select.value = names.includes(current) ? current : "";
  }
  async function refreshTraffic() {
    try {
      const data = await getJSON(API + "/traffic?since=" + lastTime);
      samples = samples.concat(data.samples).slice(-KEEP);
      if (samples.length) lastTime = samples[samples.length - 1].time;
      totals = data.totals;
      draw();
    } catch (e) { /* the next second tries again */ }
  }
  function series(key) {
    const name = document.getElementById("traffic-model").value;
    return samples.map((s) => { const p = name ? s.models[name] : s.total; return p ? p[key] : null; });
  }
  function lineChart(id, lines) {
    const chart = document.getElementById(id);
    const W = 400, H = 120, L = 34, B = 14;
    const values = lines.flat().filter((v) => v !== null && v !== undefined);
    const peak = Math.max(0, ...values);
    const max = (peak > 0 ? peak : 1) * 1.1;
    const n = Math.max(2, ...lines.map((l) => l.length));
    const x = (i) => L + (i / (n - 1)) * (W - L - 4);
    const y = (v) => H - B - (v / max) * (H - B - 6);
    const nodes = [svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }),
      svg("line", { class: "axis", x1: L, y1: 4, x2: L, y2: H - B })];
    const top = svg("text", { x: 2, y: 12 }); top.textContent = max >= 10 ? max.toFixed(0) : max.toPrecision(2);
    const zero = svg("text", { x: 2, y: H - B }); zero.textContent = "0";
    const span = svg("text", { x: L, y: H - 2 }); span.textContent = `${samples.length} s`;
    nodes.push(top, zero, span);
    lines.forEach((line, k) => {
      let d = "";
      line.forEach((v, i) => { if (v !== null && v !== undefined) d += (d && line[i - 1] != null ? "L" : "M") + x(i).toFixed(1) + "," + y(v).toFixed(1); });
      if (d) nodes.push(svg("path", { class: "l" + k, d }));
    });
    chart.replaceChildren(...nodes);
    chart.dataset.points = String(values.length);
  }
  function barChart(id, counts) {
    const chart = document.getElementById(id);
    const entries = Object.entries(counts).sort((a, b) => Number(a[0]) - Number(b[0]));
    const W = 400, H = 120, B = 14;
    const max = Math.max(1, ...entries.map((e) => e[1]));
    const w = entries.length ? Math.min(40, (W - 10) / entries.length) : 40;
    const nodes = [svg("line", { class: "axis", x1: 0, y1: H - B, x2: W, y2: H - B })];
    entries.forEach(([size, count], i) => {
      const h = (count / max) * (H - B - 14);
      nodes.push(svg("rect", { x: 5 + i * w, y: H - B - h, width: w - 4, height: h }));
      const t = svg("text", { x: 5 + i * w, y: H - 2 }); t.textContent = size; nodes.push(t);
      const c = svg("text", { x: 5 + i * w, y: H - B - h - 2 }); c.textContent = count; nodes.push(c);
    });
    if (!entries.length) { const t = svg("text", { x: 10, y: 50 }); t.textContent = "no batches executed yet"; nodes.push(t); }
    chart.replaceChildren(...nodes);
  }
  function draw() {
    const name = document.getElementById("traffic-model").value;
    const total = name ? (totals[name] || 0) : Object.values(totals).reduce((a, b) => a + b, 0);
    document.getElementById("request-counter").textContent = total;
    lineChart("chart-rps", [series("requests_per_s")]);
    lineChart("chart-latency", [series("p50_ms"), series("p99_ms")]);
    lineChart("chart-queue", [series("queue_ms")]);
    lineChart("chart-depth", [series("queue_depth")]);
    const batches = {};
    series("batch_sizes").forEach((h) => { for (const [s, c] of Object.entries(h || {})) batches[s] = (batches[s] || 0) + c; });
    barChart("chart-batches", batches);
  }
  document.getElementById("traffic-model").addEventListener("change", draw);

  // -- try it -----------------------------------------------------------------------
  async function classify(file) {
    const status = document.getElementById("try-status");
    const out = document.getElementById("try-results");
    const preview = document.getElementById("preview");
    preview.src = URL.createObjectURL(file); preview.hidden = false;
    status.textContent = "classifying…"; out.replaceChildren();
    try {
      const data = await getJSON(API + "/classify", { method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
      status.textContent = data.results.length ? `${data.results.length} image classifier(s)` : "no ready image classifier";
      out.replaceChildren(...data.results.map((r) => el("div", { class: "result", "data-model": r.model },
        el("h3", {}, `${r.model} (v${r.version}) `, el("span", { class: "latency" }, r.latency_ms !== undefined ? `${r.latency_ms.toFixed(1)} ms` : "")),
        r.error ? el("p", { class: "reason" }, r.error) : (r.top || []).map((t, i) => el("div", { class: "bar" + (i === 0 ? " top" : "") },
          el("span", { class: "name", title: t.label }, t.label),
          el("span", { class: "fill", style: `width:${Math.max(1, t.probability * 200).toFixed(0)}px` }),
          el("span", { class: "p" }, (t.probability * 100).toFixed(1) + "%"))))));
    } catch (e) { status.textContent = e.message; }
  }
  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]); });
  document.getElementById("photo").addEventListener("change", (e) => { if (e.target.files[0]) classify(e.target.files[0]); });

  // -- control ----------------------------------------------------------------------
  async function act(name, action) {
    const status = document.getElementById("control-status");
    status.textContent = `${action} ${name}…`;
    try {
      await getJSON(`${API}/models/${encodeURIComponent(name)}/${action}`, { method: "POST" });
      status.textContent = `${action} ${name}: done`;
    } catch (e) { status.textContent = `${action} ${name}: ${e.message}`; }
    refreshModels();
  }
  function renderControl() {
    const explicit = controlMode === "explicit";
    document.getElementById("control-mode").textContent = explicit
      ? "Explicit model control: load, unload and reload models here (the repository API's operations)."
      : `Model control mode is ${controlMode}: load and unload need --model-control-mode explicit.`;
    const body = document.querySelector("#control-table tbody");
    body.replaceChildren(...models.map((m) => el("tr", { "data-model": m.name },
      el("td", {}, m.name), el("td", {}, state(m.state)),
      el("td", {}, ["load", "reload", "unload"].map((a) => {
        const b = el("button", { "data-action": a, onclick: () => act(m.name, a) }, a);
        b.disabled = !explicit; return b;
      })))));
  }

  show();
  refreshModels();
  refreshTraffic();
  setInterval(refreshModels, 2000);
  setInterval(refreshTraffic, 1000);
})();
