// procpool's dashboard: polls api/stats and redraws, without reloading.
// Everything is drawn here (SVG charts included); nothing is downloaded.
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const every = Math.max(100, Number(params.get("every")) || 1000);
  const keep = 120; // samples in the charts
  const history = []; // {t, util, rate}
  let last = null; // previous snapshot and when it came
  let polls = 0;
  let changes = 0;
  let lastItems = null;

  const $ = (id) => document.getElementById(id);
  const text = (id, value) => { $(id).textContent = value; };

  function duration(s) {
    if (!isFinite(s) || s < 0) return "–";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function number(n) {
    if (!isFinite(n)) return "–";
    if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
    if (n >= 1e4) return (n / 1e3).toFixed(0) + "k";
    return String(Math.round(n * 10) / 10);
  }
  // A count as a person reads it, exact: 20,024.
  function exact(n) {
    return isFinite(n) ? Math.round(n).toLocaleString("en-US") : "–";
  }
  function cell(row, value, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    if (value instanceof Node) td.appendChild(value); else td.textContent = value;
    row.appendChild(td);
    return td;
  }
  function bar(share) {
    const outer = document.createElement("div");
    outer.className = "bar";
    const inner = document.createElement("div");
    inner.style.width = (100 * Math.min(1, Math.max(0, share))).toFixed(1) + "%";
    outer.appendChild(inner);
    return outer;
  }

  const NS = "http://www.w3.org/2000/svg";
  function svgEl(name, attrs) {
    const el = document.createElementNS(NS, name);
    for (const key in attrs) el.setAttribute(key, attrs[key]);
    return el;
  }
  // A line chart of `values` (oldest first) in an SVG with a 600×180 viewBox.
  function chart(svg, values, max, format) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 600, H = 180, left = 44, bottom = 16, top = 8;
    const h = H - bottom - top, w = W - left - 4;
    for (let i = 0; i <= 4; i++) {
      const y = top + h - (h * i) / 4;
      svg.appendChild(svgEl("line", { x1: left, x2: W, y1: y, y2: y, class: "grid" }));
      const label = svgEl("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "axis" });
      label.textContent = format((max * i) / 4);
      svg.appendChild(label);
    }
    const seconds = Math.round((keep * every) / 1000);
    const note = svgEl("text", { x: left, y: H - 2, class: "axis" });
    note.textContent = "last " + seconds + " s";
    svg.appendChild(note);
    if (values.length < 2) return;
    const step = w / (keep - 1);
    const x0 = left + w - step * (values.length - 1);
    const points = values.map((v, i) => {
      const y = top + h - h * Math.min(1, Math.max(0, v / max));
      return (x0 + step * i).toFixed(1) + "," + y.toFixed(1);
    });
    const floor = (top + h).toFixed(1);
    svg.appendChild(svgEl("polygon", {
      class: "area",
      points: x0.toFixed(1) + "," + floor + " " + points.join(" ") + " " + (x0 + step * (values.length - 1)).toFixed(1) + "," + floor,
    }));
    svg.appendChild(svgEl("polyline", { class: "line", points: points.join(" ") }));
  }
  function niceMax(m) {
    if (!(m > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(m)));
    // Quarters of these are round numbers too (the grid has four steps).
    for (const k of [1, 2, 4, 8, 10]) if (m <= k * p) return k * p;
    return 10 * p;
  }

  function render(s) {
    polls += 1;
    if (lastItems !== null && s.items_done !== lastItems) changes += 1;
    lastItems = s.items_done;
    const now = s.uptime_s;
    if (last && now > last.uptime_s) {
      const dt = now - last.uptime_s;
      const util = Math.min(1, Math.max(0, (s.busy_s - last.busy_s) / (dt * Math.max(1, s.processes))));
      const rate = Math.max(0, (s.items_done - last.items_done) / dt);
      history.push({ util, rate });
      if (history.length > keep) history.shift();
    }
    last = s;
    const latest = history[history.length - 1];
    const busyNow = s.workers.filter((w) => w.state === "busy").length;
    text("polls", polls);
    text("changes", changes);
    text("uptime", duration(s.uptime_s));
    text("processes", s.processes);
    text("items-done", exact(s.items_done));
    text("rate", latest ? number(latest.rate) : "–");
    text("busy-now", busyNow + " / " + s.processes);
    text("tasks-done", exact(s.tasks_done));
    text("tasks-failed", number(s.tasks_failed));
    text("tasks-retried", number(s.tasks_retried));
    text("workers-started", number(s.workers_started));
    const left = s.workers_died + s.workers_timed_out + s.workers_broke_protocol + s.workers_retired;
    text("departures", number(left));
    text("departures-why", "died " + s.workers_died + " · timed out " + s.workers_timed_out +
      " · broke protocol " + s.workers_broke_protocol + " · retired " + s.workers_retired);
    $("tasks-failed").parentElement.classList.toggle("bad", s.tasks_failed > 0);

    chart($("chart-utilization"), history.map((p) => 100 * p.util), 100, (v) => Math.round(v) + "%");
    const rates = history.map((p) => p.rate);
    chart($("chart-throughput"), rates, niceMax(Math.max(0, ...rates)), number);

    const body = $("workers").tBodies[0];
    const rows = document.createDocumentFragment();
    for (const w of s.workers) {
      const row = document.createElement("tr");
      row.dataset.slot = w.slot;
      cell(row, w.slot);
      cell(row, w.pid === null ? "–" : String(w.pid), "pid");
      const state = document.createElement("span");
      state.className = "state " + w.state;
      state.textContent = w.state;
      cell(row, state);
      cell(row, w.job === null ? "" : w.job, "job");
      cell(row, w.state === "busy" ? duration(w.running_s) : "");
      cell(row, number(w.tasks), "tasks");
      cell(row, duration(w.busy_s));
      const share = document.createElement("span");
      share.className = "share";
      share.appendChild(bar(w.utilization));
      const pct = document.createElement("small");
      pct.textContent = Math.round(100 * w.utilization) + "%";
      share.appendChild(pct);
      cell(row, share);
      rows.appendChild(row);
    }
    body.replaceChildren(rows);

    const calls = $("calls").tBodies[0];
    const callRows = document.createDocumentFragment();
    for (const c of s.calls) {
      const row = document.createElement("tr");
      cell(row, c.job, "job");
      cell(row, c.total ? bar(c.done / c.total) : "");
      cell(row, exact(c.done) + (c.total === null ? "" : " / " + exact(c.total)));
      cell(row, duration(c.age_s));
      callRows.appendChild(row);
    }
    calls.replaceChildren(callRows);
    $("no-calls").hidden = s.calls.length > 0;
  }

  function status(live, message) {
    const el = $("status");
    el.className = "status " + (live ? "live" : "down");
    el.textContent = message;
  }

  async function poll() {
    try {
      const response = await fetch("api/stats", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      status(true, "live");
    } catch (err) {
      status(false, "disconnected (" + err.message + ")");
    }
    setTimeout(poll, every);
  }
  poll();
})();
