"""The status page: one HTML document with inline CSS and JavaScript.

The script fetches ``status.json`` at once and every 2 seconds and redraws
the tree as an SVG picture (a box per cell, a line to its parent; a cell
that does not answer, or whose link is down, is drawn red) and the table of
the last failed messages. Text is only ever set through ``textContent``, so
nothing from a cell's answer is parsed as markup.
"""

from __future__ import annotations

import html

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cellsd: __CELL__</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  #meta { color: #666; margin-bottom: 1em; }
  #meta.stale { color: #c9302c; font-weight: bold; }
  svg text { font: 12px system-ui, sans-serif; }
  svg text.name { font-weight: bold; font-size: 13px; }
  line { stroke: #999; stroke-width: 1.5; }
  line.down { stroke: #c9302c; stroke-dasharray: 4 3; }
  table { border-collapse: collapse; margin-top: .5em; }
  th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; }
  td.mono { font-family: ui-monospace, monospace; font-size: 12px; }
  .legend span { display: inline-block; padding: 0 6px; margin-right: 6px; border: 1px solid; }
</style>
</head>
<body>
<h1>cellsd status: <span id="cell">__CELL__</span></h1>
<div id="meta">loading status.json …</div>
<div class="legend">
  <span style="background:#e7f5e9;border-color:#3c8d40">answering</span>
  <span style="background:#fff3cd;border-color:#b38600">mute</span>
  <span style="background:#f8d7da;border-color:#c9302c">down or unreachable</span>
</div>
<svg id="tree" xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>
<h2>Last failed messages</h2>
<table id="failures">
  <thead>
    <tr><th>time</th><th>uuid</th><th>method</th><th>routing path</th><th>error</th></tr>
  </thead>
  <tbody></tbody>
</table>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
const BOX_W = 236, BOX_H = 92, GAP_X = 24, GAP_Y = 56;
const COLORS = {
  up: ["#e7f5e9", "#3c8d40"], mute: ["#fff3cd", "#b38600"], down: ["#f8d7da", "#c9302c"],
};
let refreshes = 0;

function svg(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}
function mb(v) {
  if (v === null || v === undefined) return "n/a";
  return v >= 1048576 ? (v / 1048576).toFixed(1) + " TB"
       : v >= 1024 ? (v / 1024).toFixed(1) + " GB" : Math.round(v) + " MB";
}
function age(s) {
  if (s === null || s === undefined) return "never";
  return s < 120 ? Math.round(s) + "s ago" : Math.round(s / 60) + "m ago";
}
function cellState(c) {
  if (!c.ok) return "down";
  return c.mute ? "mute" : "up";
}

function layout(cells) {
  // x by leaf order (depth first), parents centred over their children.
  const kids = {}, pos = {};
  for (const c of cells) (kids[c.parent] = kids[c.parent] || []).push(c);
  let next = 0, depth = 0;
  function place(c, d) {
    depth = Math.max(depth, d);
    const ks = kids[c.path] || [];
    if (!ks.length) { pos[c.path] = { x: next++, d: d }; return; }
    ks.forEach(k => place(k, d + 1));
    const xs = ks.map(k => pos[k.path].x);
    pos[c.path] = { x: (Math.min(...xs) + Math.max(...xs)) / 2, d: d };
  }
  (kids[null] || []).forEach(r => place(r, 0));
  return { pos: pos, width: Math.max(next, 1), depth: depth + 1 };
}

function drawTree(data) {
  const tree = document.getElementById("tree");
  tree.replaceChildren();
  const { pos, width, depth } = layout(data.cells);
  tree.setAttribute("width", width * (BOX_W + GAP_X) + GAP_X);
  tree.setAttribute("height", depth * (BOX_H + GAP_Y) + GAP_Y / 2);
  const at = p => ({
    x: GAP_X + pos[p].x * (BOX_W + GAP_X), y: 10 + pos[p].d * (BOX_H + GAP_Y),
  });
  for (const c of data.cells) {
    if (!c.parent || !pos[c.parent]) continue;
    const a = at(c.parent), b = at(c.path);
    tree.appendChild(svg("line", {
      x1: a.x + BOX_W / 2, y1: a.y + BOX_H, x2: b.x + BOX_W / 2, y2: b.y,
      class: c.ok ? "" : "down",
    }));
  }
  for (const c of data.cells) {
    const { x, y } = at(c.path);
    const state = cellState(c);
    const g = svg("g", {
      class: "cell " + state, "data-cell": c.path, "data-state": state,
      transform: `translate(${x},${y})`,
    });
    g.appendChild(svg("rect", {
      width: BOX_W, height: BOX_H, rx: 6,
      fill: COLORS[state][0], stroke: COLORS[state][1], "stroke-width": 2,
    }));
    g.appendChild(svg("title", {}, c.path + (c.error ? "\\n" + c.error : "")
      + (c.health_reason ? "\\nlink: " + c.health_reason : "")));
    const link = !c.parent ? "this cell"
      : c.health ? "link " + (c.health === "up" ? "up" : c.health.toUpperCase())
      : c.link_up === null ? "link n/a" : c.link_up ? "link up" : "link DOWN";
    const mute = c.mute === null ? "" : c.mute ? " · MUTE" : " · heard";
    const lines = [
      [c.name, "name"],
      [link + mute + (c.parent ? " · seen " + age(c.last_seen_age) : ""), ""],
      ["RAM free " + mb(c.ram_free_mb) + " · disk " + mb(c.disk_free_mb), ""],
      ["instances " + (c.instances === null ? "n/a" : c.instances), ""],
      [c.ok ? "answering" : (c.error || "not answering").split(":")[0], "error"],
    ];
    lines.forEach(([t, cls], i) => {
      g.appendChild(svg("text", { x: 8, y: 18 + i * 17, class: cls }, t.slice(0, 38)));
    });
    tree.appendChild(g);
  }
}

function drawFailures(data) {
  const body = document.querySelector("#failures tbody");
  body.replaceChildren();
  if (!data.failures.length) {
    const tr = document.createElement("tr"), td = document.createElement("td");
    td.colSpan = 5; td.textContent = "none"; tr.appendChild(td); body.appendChild(tr);
  }
  for (const f of data.failures) {
    const tr = document.createElement("tr");
    const when = new Date(f.time * 1000).toLocaleTimeString();
    for (const [t, mono] of [[when], [f.uuid, 1], [f.method], [f.path, 1], [f.error]]) {
      const td = document.createElement("td");
      td.textContent = t;
      if (mono) td.className = "mono";
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

async function refresh() {
  const meta = document.getElementById("meta");
  try {
    const r = await fetch("status.json", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const data = await r.json();
    drawTree(data);
    drawFailures(data);
    refreshes += 1;
    const down = data.cells.filter(c => !c.ok).length;
    meta.className = "";
    meta.dataset.refreshes = refreshes;
    meta.textContent = `${data.cells.length} cells, ${down} down · tree from ` +
      `${data.tree_age.toFixed(1)}s ago · updated ${new Date().toLocaleTimeString()}` +
      ` · refresh #${refreshes}`;
  } catch (e) {
    meta.className = "stale";
    meta.textContent = "cannot fetch status.json (" + e.message + "); showing the last data";
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""


def render_page(cell_name: str) -> str:
    """The page for ``cell_name`` (its name is the only thing filled in)."""
    return PAGE.replace("__CELL__", html.escape(cell_name))
