// procpool's fleet page (procpool-inspect --serve): polls api/stats (a
// fresh inspection of the queue) and redraws, without reloading.
"use strict";
(function () {
  const { $, text, duration, exact, cell, chart, niceMax } = window.procpoolDash;
  const params = new URLSearchParams(location.search);
  const every = Math.max(250, Number(params.get("every")) || 1000);
  const keep = 120;
  const history = [];
  let polls = 0;

  function bytes(n) {
    if (n === null || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }
  function rows(id, items, fill) {
    const body = $(id).tBodies[0];
    const fragment = document.createDocumentFragment();
    for (const item of items) {
      const row = document.createElement("tr");
      fill(row, item);
      fragment.appendChild(row);
    }
    body.replaceChildren(fragment);
  }
  function state(w) {
    const span = document.createElement("span");
    const name = w.unresponsive ? "late" : (w.job === null ? "idle" : "busy");
    span.className = "state " + (name === "late" ? "starting" : name);
    span.textContent = name;
    return span;
  }

  function render(s) {
    polls += 1;
    text("polls", polls);
    text("queue", s.queue);
    text("server", s.server);
    const busy = s.workers.filter((w) => w.job !== null).length;
    const waiting = s.jobs.reduce((sum, j) => sum + j.waiting, 0);
    const taken = s.jobs.reduce((sum, j) => sum + j.taken, 0);
    const hosts = new Set(s.workers.map((w) => w.host));
    text("workers-count", exact(s.workers.length));
    text("hosts-count", hosts.size + (hosts.size === 1 ? " host" : " hosts"));
    text("busy-now", busy + " / " + s.workers.length);
    text("waiting", exact(waiting));
    text("taken", exact(taken));
    text("callers-count", exact(s.callers.length));
    text("memory", bytes(s.used_memory));
    text("maxmemory", s.maxmemory ? "of " + bytes(s.maxmemory) : "no maxmemory");
    text("failed", exact(s.lost_tasks + s.timed_out_tasks));
    text("failed-why", "lost (TaskLost) " + s.lost_tasks + " · timed out (TaskTimedOut) " +
      s.timed_out_tasks);
    text("forged", exact(s.forged_tasks + s.forged_results + s.replayed_tasks));
    text("forged-why", "forged tasks " + s.forged_tasks + " · forged results " + s.forged_results +
      " · replayed tasks " + s.replayed_tasks);
    text("dead-count", exact(s.dead_consumers.length));
    history.push({ waiting, busy: s.workers.length ? busy / s.workers.length : 0 });
    if (history.length > keep) history.shift();
    const w = history.map((p) => p.waiting);
    // At least 4, so that the grid's quarters are whole tasks.
    chart($("chart-waiting"), w, niceMax(Math.max(4, ...w)), exact, keep, every);
    chart($("chart-busy"), history.map((p) => 100 * p.busy), 100, (v) => Math.round(v) + "%", keep, every);

    const workers = s.workers.slice().sort((a, b) => a.host.localeCompare(b.host) || a.pid - b.pid);
    rows("workers", workers, (row, w) => {
      cell(row, w.host, "host");
      cell(row, String(w.pid), "pid");
      cell(row, state(w));
      cell(row, w.job === null ? "" : w.job, "job");
      cell(row, w.running_s === null ? "" : duration(w.running_s));
      cell(row, duration(w.last_seen_s) + " ago");
    });
    rows("jobs", s.jobs, (row, j) => {
      cell(row, j.job, "job");
      cell(row, exact(j.waiting), "waiting");
      cell(row, exact(j.taken), "taken");
      cell(row, j.oldest_waiting_s === null ? "" : duration(j.oldest_waiting_s));
      const c = cell(row, exact(j.workers));
      if (j.waiting > 0 && j.workers === 0) c.textContent += " (no live worker can run it)";
    });
    rows("callers", s.callers, (row, c) => {
      cell(row, c.host === null ? "?" : c.host);
      cell(row, String(c.pid));
      cell(row, exact(c.in_redis));
      cell(row, exact(c.backlog));
      cell(row, c.id, "job");
    });
    rows("dead", s.dead_consumers, (row, d) => {
      cell(row, d.name, "job");
      cell(row, exact(d.pending));
      cell(row, duration(d.idle_s));
    });
  }

  window.procpoolDash.poll(render, every);
})();
