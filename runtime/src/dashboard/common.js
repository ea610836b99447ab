// Helpers both dashboard pages share (the pool's and the fleet's):
// formatting, table cells, progress bars and SVG line charts.
"use strict";
window.procpoolDash = (function () {
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
  function chart(svg, values, max, format, keep, every) {
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

  // Asks for api/stats every `every` ms, hands each answer to `render`,
  // and says in the status badge whether the page is live. An answer
  // with an `error` (the fleet's inspection failed) counts as down.
  function poll(render, every) {
    const status = (live, message) => {
      const el = $("status");
      el.className = "status " + (live ? "live" : "down");
      el.textContent = message;
    };
    async function once() {
      try {
        const response = await fetch("api/stats", { cache: "no-store" });
        if (!response.ok) throw new Error("HTTP " + response.status);
        const s = await response.json();
        if (s.error) throw new Error(s.error);
        render(s);
        status(true, "live");
      } catch (err) {
        status(false, "disconnected (" + err.message + ")");
      }
      setTimeout(once, every);
    }
    once();
  }

  return { $, text, duration, number, exact, cell, bar, chart, niceMax, poll };
})();
