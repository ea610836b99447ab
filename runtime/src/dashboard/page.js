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

  const { $, text, duration, number, exact, cell, bar, chart, niceMax } = window.procpoolDash;

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

    chart($("chart-utilization"), history.map((p) => 100 * p.util), 100, (v) => Math.round(v) + "%", keep, every);
    const rates = history.map((p) => p.rate);
    chart($("chart-throughput"), rates, niceMax(Math.max(0, ...rates)), number, keep, every);

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

  window.procpoolDash.poll(render, every);
})();
