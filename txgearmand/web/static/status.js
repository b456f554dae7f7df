// The status page of txgearmand: polls status.json and draws it.
//
// Everything shown comes from the network (function names, unique ids,
// client ids), so the DOM is built with text nodes and attributes only:
// no innerHTML, no HTML from data.  No framework; nothing loaded from
// elsewhere (the site's Content-Security-Policy forbids it anyway).
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";

  function meta(name) {
    const m = document.querySelector('meta[name="' + name + '"]');
    return m ? m.getAttribute("content") : "";
  }

  const TOKEN = meta("txgearmand-token");
  const MAY_CHANGE = meta("txgearmand-may-change") === "yes";
  // Never faster than every 2 s: the site must not load the job server.
  const REFRESH_MS = Math.max(2, Number(meta("txgearmand-refresh")) || 5) * 1000;
  // At most this many functions, workers, clients and jobs are listed.
  const LIMIT = Number(meta("txgearmand-limit")) || 200;
  // Per-function samples kept (jobs/s between polls, since the page opened).
  const KEEP = 60;

  // -- building the DOM -------------------------------------------------

  // An element with attributes and children (strings become text nodes).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      node.setAttribute(name, String(value));
    }
    return node;
  }

  function num(value, title) {
    return el("td", { class: "num", title: title }, value);
  }

  // A cell for text from the network, cut short on screen, whole in its title.
  function textCell(value, max) {
    const text = value === null || value === undefined ? "" : String(value);
    const shown = text.length > max ? text.slice(0, max - 1) + "\u2026" : text;
    return el("td", { title: text.length > max ? text : null }, shown);
  }

  function fill(tableId, rows, moreId, shown, total, what) {
    const body = document.querySelector("#" + tableId + " tbody");
    if (rows.length === 0) {
      const columns = document.querySelectorAll("#" + tableId + " thead th").length;
      rows = [el("tr", { class: "empty" }, el("td", { colspan: columns }, "none"))];
    }
    body.replaceChildren(...rows);
    const more = document.getElementById(moreId);
    more.textContent = total > shown ? "Showing " + shown + " of " + total + " " + what + "." : "";
  }

  // -- formatting ---------------------------------------------------------

  function rate(value) {
    if (value === null || value === undefined || !isFinite(value)) return "\u2013";
    return value >= 100 ? String(Math.round(value)) : value.toFixed(1);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "\u2013";
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 60) return (seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)) + " s";
    const s = Math.floor(seconds);
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function latency(seconds) {
    if (seconds === null || seconds === undefined) return "\u2013";
    return seconds < 1 ? (seconds * 1000).toFixed(1) + " ms" : seconds.toFixed(2) + " s";
  }

  function clock(epoch) {
    return new Date(epoch * 1000).toLocaleTimeString();
  }

  function count(n) {
    return Number(n).toLocaleString("en-US");
  }

  // -- per-function rates, from the counters between polls ----------------

  const history = new Map(); // function name -> {last: {t, ended}, samples: [{t, out}]}

  function ended(f) {
    return f.completed + f.failed + f.exceptions + f.timed_out + f.cancelled;
  }

  function noteFunctions(functions, now) {
    const seen = new Set();
    for (const f of functions) {
      seen.add(f.name);
      let h = history.get(f.name);
      if (!h) {
        h = { last: null, samples: [] };
        history.set(f.name, h);
      }
      const e = ended(f);
      if (h.last && now > h.last.t) {
        h.samples.push({ t: now, out: Math.max(0, e - h.last.ended) / (now - h.last.t) });
        if (h.samples.length > KEEP) h.samples.shift();
      }
      h.last = { t: now, ended: e };
    }
    for (const name of history.keys()) {
      if (!seen.has(name)) history.delete(name);
    }
  }

  // -- charts ---------------------------------------------------------------

  // A round number at or above the largest value, for the y axis.
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * power >= value) return step * power;
    }
    return 10 * power;
  }

  function points(samples, key, x, y) {
    return samples.map((s) => x(s.t).toFixed(1) + "," + y(s[key]).toFixed(1)).join(" ");
  }

  // Jobs per second in and out over the server's history.
  function drawRates(data) {
    const chart = document.getElementById("rate-chart");
    const interval = data.rates.interval;
    let samples = data.rates.samples;
    // The newest sample covers the time since the last history sample;
    // over a fraction of an interval it is noise: leave it out.
    const n = samples.length;
    if (n >= 2 && samples[n - 1].t - samples[n - 2].t < interval / 2) {
      samples = samples.slice(0, n - 1);
    }
    const W = 640, H = 180, left = 44, right = 12, top = 10, bottom = 26;
    const nodes = [];
    const now = data.server.now;
    const first = samples.length ? samples[0].t : now;
    const span = Math.max(now - first, interval);
    const high = niceMax(Math.max(0, ...samples.map((s) => Math.max(s.in, s.out))));
    const x = (t) => left + ((t - (now - span)) / span) * (W - left - right);
    const y = (v) => top + (1 - v / high) * (H - top - bottom);
    for (const v of [0, high / 2, high]) {
      nodes.push(svg("line", { class: "grid", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
      const label = svg("text", { class: "axis", x: left - 6, y: y(v) + 4, "text-anchor": "end" });
      label.textContent = String(Number(v.toPrecision(3)));
      nodes.push(label);
    }
    const ago = svg("text", { class: "axis", x: left, y: H - 6, "text-anchor": "start" });
    ago.textContent = duration(span) + " ago";
    const nowLabel = svg("text", { class: "axis", x: W - right, y: H - 6, "text-anchor": "end" });
    nowLabel.textContent = "now";
    nodes.push(ago, nowLabel);
    if (samples.length === 0) {
      const wait = svg("text", { class: "axis", x: W / 2, y: H / 2, "text-anchor": "middle" });
      wait.textContent = "collecting\u2026";
      nodes.push(wait);
    }
    for (const key of ["in", "out"]) {
      nodes.push(svg("polyline", { class: "line " + key, points: points(samples, key, x, y) }));
      const last = samples[samples.length - 1];
      if (last) {
        nodes.push(svg("circle", { class: "dot " + key, cx: x(last.t), cy: y(last[key]), r: 3 }));
      }
    }
    chart.replaceChildren(...nodes);
    chart.setAttribute("data-samples", String(samples.length));
    document.getElementById("rates-span").textContent =
      "(last " + duration(span) + ", every " + duration(interval) + ")";
  }

  // A small line of a function's jobs/s since the page opened.
  function sparkline(name) {
    const h = history.get(name);
    const samples = h ? h.samples : [];
    const W = 90, H = 22;
    const chart = svg("svg", { class: "spark", viewBox: "0 0 " + W + " " + H, width: W, height: H });
    if (samples.length) {
      const high = niceMax(Math.max(...samples.map((s) => s.out)));
      const x = (i) => 1 + (i / Math.max(KEEP - 1, 1)) * (W - 2);
      const offset = KEEP - samples.length;
      const y = (v) => 2 + (1 - v / high) * (H - 4);
      const line = samples.map((s, i) => x(offset + i).toFixed(1) + "," + y(s.out).toFixed(1));
      chart.append(svg("polyline", { class: "line out", points: line.join(" ") }));
    }
    const last = samples.length ? samples[samples.length - 1].out : null;
    return el("td", { class: "spark-cell" }, chart, " ", el("span", { class: "num" }, rate(last)));
  }

  // -- the sections ---------------------------------------------------------

  function card(label, value, title) {
    return el("div", { class: "card", title: title }, el("span", { class: "value" }, value),
      el("span", { class: "label" }, label));
  }

  function drawOverview(data) {
    const s = data.server, t = data.totals;
    const samples = data.rates.samples;
    const last = samples.length ? samples[samples.length - 1] : null;
    document.getElementById("version").textContent = s.version;
    document.getElementById("overview").replaceChildren(
      card("uptime", duration(s.uptime), "started " + new Date(s.started * 1000).toLocaleString()),
      card("connections", count(s.connections), count(s.connections_total) + " since the start"),
      card("workers", count(s.workers)),
      card("clients", count(s.clients)),
      card("queued", count(t.queued)),
      card("running", count(t.running)),
      card("scheduled", count(t.scheduled)),
      card("jobs/s in", rate(last && last.in)),
      card("jobs/s out", rate(last && last.out)),
      card("completed", count(t.completed)),
      card("failed", count(t.failed + t.exceptions + t.timed_out),
        "WORK_FAIL " + t.failed + ", exceptions " + t.exceptions + ", timed out " + t.timed_out),
      card("refused", count(t.refused)),
    );
  }

  function limits(maxQueue) {
    return maxQueue ? maxQueue.map((n) => (n ? String(n) : "\u221e")).join(" / ") : "\u2013";
  }

  function drawFunctions(data) {
    const rows = data.functions.map((f) => {
      const limitCell = el("td", { class: "num" }, limits(f.max_queue));
      if (MAY_CHANGE) {
        const edit = el("button", { type: "button", class: "small", title: "Change its max queue" },
          "change");
        edit.addEventListener("click", () => prefillMaxQueue(f));
        limitCell.append(" ", edit);
      }
      return el("tr", {},
        el("th", { scope: "row", class: "name", title: f.name }, f.name),
        num(count(f.queued.high)),
        num(count(f.queued.normal)),
        num(count(f.queued.low)),
        num(count(f.scheduled)),
        num(count(f.running)),
        num(count(f.workers) + (f.sleeping ? " (" + f.sleeping + " asleep)" : "")),
        limitCell,
        num(count(f.completed)),
        num(count(f.failed + f.exceptions + f.timed_out + f.cancelled),
          "failed " + f.failed + ", exceptions " + f.exceptions + ", timed out " + f.timed_out +
          ", cancelled " + f.cancelled),
        num(count(f.failed_kept || 0), (f.dead_lettered || 0) + " landed there since the start"),
        num(count(f.refused)),
        sparkline(f.name));
    });
    fill("functions", rows, "functions-more", 0, 0, "functions");
    if (data.functions.length >= LIMIT) {
      document.getElementById("functions-more").textContent =
        "Showing the first " + LIMIT + " functions by name.";
    }
    const names = document.getElementById("function-names");
    names.replaceChildren(...data.functions.map((f) => el("option", { value: f.name })));
  }

  function drawWorkers(data) {
    const rows = data.workers.map((w) => el("tr", {},
      el("td", {}, w.peer),
      textCell(w.id, 40),
      textCell(w.functions.join(", "), 80),
      textCell(w.jobs.join(", "), 60),
      el("td", {}, w.sleeping ? "asleep" : w.jobs.length ? "working" : "awake"),
      num(count(w.done))));
    fill("workers", rows, "workers-more", data.workers.length, data.server.workers, "workers");
  }

  function drawClients(data) {
    const rows = data.clients.map((c) => el("tr", {},
      el("td", {}, c.peer),
      textCell(c.id, 40),
      num(count(c.waiting)),
      num(count(c.submitted))));
    fill("clients", rows, "clients-more", data.clients.length, data.server.clients, "clients");
  }

  function drawJobs(data) {
    const rows = data.jobs.list.map((j) => {
      const actions = el("td", {});
      if (MAY_CHANGE) {
        const button = el("button", { type: "button", class: "small cancel" }, "cancel");
        button.addEventListener("click", () => cancelJob(j.handle));
        actions.append(button);
      }
      return el("tr", { class: "state-" + j.state },
        textCell(j.handle, 40),
        textCell(j.function, 40),
        textCell(j.unique, 40),
        el("td", {}, j.state),
        el("td", { class: "nowrap" }, j.priority + (j.background ? ", background" : "")),
        num(duration(j.age)),
        el("td", {}, j.worker || ""),
        num(count(j.clients)),
        num(count(j.retries)),
        actions);
    });
    fill("jobs", rows, "jobs-more", data.jobs.shown, data.jobs.total, "jobs");
  }

  function fact(term, value, cls) {
    return [el("dt", {}, term), el("dd", { class: cls }, value)];
  }

  function drawStore(data) {
    const st = data.store;
    const error = st.last_error;
    document.getElementById("store").replaceChildren(
      ...fact("Kind", st.kind),
      ...fact("Location", st.location || "\u2013"),
      ...fact("Commits", count(st.writes)),
      ...fact("Last commit", latency(st.latency_last)),
      ...fact("Mean commit", latency(st.latency_mean)),
      ...fact("State", st.down ? "down" : st.slow ? "slow" : "ok",
        st.down || st.slow ? "bad" : null),
      ...fact("Last error", error ? error.text + " (" + clock(error.at) + ")" : "none",
        error ? "bad" : null),
    );
  }

  function draw(data) {
    noteFunctions(data.functions, data.server.now);
    drawOverview(data);
    drawRates(data);
    drawFunctions(data);
    drawWorkers(data);
    drawClients(data);
    drawJobs(data);
    drawStore(data);
  }

  // -- polling --------------------------------------------------------------

  let timer = null;
  let lastGood = null;

  function freshness(text, bad) {
    const p = document.getElementById("freshness");
    p.textContent = text;
    p.classList.toggle("bad", Boolean(bad));
  }

  async function refresh() {
    clearTimeout(timer);
    timer = null;
    if (!document.hidden) {
      try {
        const response = await fetch("status.json", { cache: "no-store" });
        if (!response.ok) throw new Error("HTTP " + response.status);
        const data = await response.json();
        draw(data);
        lastGood = data.server.now;
        freshness("Updated " + clock(lastGood) + ", every " + REFRESH_MS / 1000 + " s.");
      } catch (e) {
        freshness("Cannot reach the server (" + e.message + ")" +
          (lastGood ? "; showing " + clock(lastGood) + "." : "."), true);
      }
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer !== null) refresh();
  });

  // -- changes (POST, with the page's token) ---------------------------------

  function said(text, bad) {
    const p = document.getElementById("action-result");
    p.textContent = text;
    p.classList.toggle("bad", Boolean(bad));
  }

  async function change(path, body) {
    try {
      const response = await fetch(path, {
        method: "POST",
        cache: "no-store",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": TOKEN },
        body: JSON.stringify(body),
      });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(answer.error || "HTTP " + response.status);
      return answer;
    } finally {
      refresh();
    }
  }

  async function cancelJob(handle) {
    if (!window.confirm("Cancel job " + handle + "? Its clients get WORK_FAIL.")) return;
    try {
      await change("actions/cancel", { handle: handle });
      said("Cancelled " + handle + ".");
    } catch (e) {
      said("Could not cancel " + handle + ": " + e.message, true);
    }
  }

  function prefillMaxQueue(f) {
    const form = document.getElementById("maxqueue-form");
    form.elements.function.value = f.name;
    const [high, normal, low] = f.max_queue || [0, 0, 0];
    form.elements.high.value = high || "";
    form.elements.normal.value = normal || "";
    form.elements.low.value = low || "";
    form.elements.high.focus();
  }

  async function submitMaxQueue(event) {
    event.preventDefault();
    const form = event.target;
    const name = form.elements.function.value;
    const numbers = ["high", "normal", "low"].map((k) => Number(form.elements[k].value || 0));
    try {
      const answer = await change("actions/maxqueue", { function: name, limits: numbers });
      said("Max queue of " + name + ": " + limits(answer.max_queue) + ".");
    } catch (e) {
      said("Could not set the max queue of " + name + ": " + e.message, true);
    }
  }

  function start() {
    if (MAY_CHANGE) {
      const form = document.getElementById("maxqueue-form");
      form.hidden = false;
      form.addEventListener("submit", submitMaxQueue);
    }
    refresh();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
