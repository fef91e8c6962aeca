// The console's little script: local times, confirmations, charts.
"use strict";

// Times are sent in UTC and shown in the browser's time zone.
function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) { t.title = t.textContent; t.textContent = d.toLocaleString(); }
  }
}

// Destructive forms say data-confirm="question".
function confirmations(root) {
  for (const f of root.querySelectorAll("form[data-confirm]")) {
    f.addEventListener("submit", (ev) => {
      if (!window.confirm(f.getAttribute("data-confirm"))) ev.preventDefault();
    });
  }
}

const palette = ["#2456a6", "#7b3fa0", "#00838f", "#5d4037", "#9e9d24"];
// The same meaning has the same colour on every chart.
const named = { accept: "#1e7b34", valid: "#1e7b34", "hit ratio": "#1e7b34", reject: "#b3261e", invalid: "#b3261e",
  defer: "#9a6700", tempfail: "#9a6700", deadlines: "#9a6700", shed: "#b3261e", catch_all: "#2456a6", unverifiable: "#7b3fa0" };
function colour(label, i) { return named[label] || palette[i % palette.length]; }

// seriesOf picks the series of a chart from the samples: "a,b" names
// fields; "m.*" every key of the map field m.
function seriesOf(spec, labels, samples) {
  const out = [];
  const names = spec.split(",");
  const lbl = labels ? labels.split(",") : [];
  names.forEach((name, i) => {
    if (name.endsWith(".*")) {
      const field = name.slice(0, -2);
      const keys = new Set();
      samples.forEach((s) => Object.keys(s[field] || {}).forEach((k) => keys.add(k)));
      [...keys].sort().forEach((k) => out.push({ label: k, values: samples.map((s) => (s[field] || {})[k] || 0) }));
    } else {
      out.push({ label: lbl[i] || name, values: samples.map((s) => s[name] || 0) });
    }
  });
  return out;
}

function draw(canvas, samples) {
  const series = seriesOf(canvas.dataset.series, canvas.dataset.labels, samples);
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 44, bottom = 22, top = 8;
  ctx.clearRect(0, 0, w, h);
  let max = Number(canvas.dataset.max) || 0;
  series.forEach((s) => s.values.forEach((v) => { if (v > max) max = v; }));
  if (max <= 0) max = 1;
  ctx.strokeStyle = "#d8dce4"; ctx.fillStyle = "#5b6475"; ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = top + (h - top - bottom) * (1 - i / 4);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText((max * i / 4).toFixed(max < 10 ? 2 : 0), 2, y + 4);
  }
  const n = samples.length;
  if (n > 0) {
    ctx.fillText(new Date(samples[0].at).toLocaleTimeString(), left, h - 6);
    const last = new Date(samples[n - 1].at).toLocaleTimeString();
    ctx.fillText(last, w - ctx.measureText(last).width - 2, h - 6);
  }
  const x = (i) => left + (n <= 1 ? 0 : (w - left - 4) * i / (n - 1));
  const y = (v) => top + (h - top - bottom) * (1 - v / max);
  series.forEach((s, si) => {
    ctx.strokeStyle = colour(s.label, si); ctx.lineWidth = 2;
    ctx.beginPath();
    s.values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.stroke();
    ctx.fillStyle = colour(s.label, si);
    ctx.fillText(s.label, left + 6 + si * 90, top + 10);
  });
  canvas.dataset.points = String(n);
  canvas.dataset.drawn = String(series.reduce((a, s) => a + s.values.filter((v) => v > 0).length, 0));
}

// hourly turns the counts per hour of the history API into samples: the
// hit ratio is the answers from a cache over all answers.
function hourly(hours) {
  return hours.map((h) => {
    const total = (h.accept || 0) + (h.reject || 0) + (h.defer || 0);
    return Object.assign({ hit_ratio: total ? (h.hits || 0) / total : 0 }, h);
  });
}

// charts draws each canvas from its data-source (the fleet's recent
// samples by default; a history URL for counts per hour).
async function charts() {
  const canvases = document.querySelectorAll("canvas.chart");
  if (!canvases.length) return;
  const bySource = new Map();
  canvases.forEach((c) => {
    const src = c.dataset.source || "/api/stats/history";
    if (!bySource.has(src)) bySource.set(src, []);
    bySource.get(src).push(c);
  });
  for (const [src, list] of bySource) {
    try {
      const r = await fetch(src, { credentials: "same-origin" });
      if (!r.ok) continue;
      const h = await r.json();
      const samples = h.hours ? hourly(h.hours) : (h.samples || []);
      list.forEach((c) => draw(c, samples));
    } catch (e) { /* the next refresh tries again */ }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  confirmations(document);
  charts();
  if (document.querySelector("canvas.chart")) setInterval(charts, 5000);
});
