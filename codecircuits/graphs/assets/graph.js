// The attribution-graph viewer of codecircuits: nodes by layer (rows) and position (columns), edges coloured by
// sign; hover for a node's details (activation, influence, label, dashboard), click for its inputs and outputs, a
// slider for the pruning threshold. Reads window.CC_GRAPH (circuit-tracer's node-link JSON, plus optional
// `dashboards` keyed by node id). Draws with d3 (bundled into the page from npm: no network).
(function () {
  "use strict";
  const data = window.CC_GRAPH;
  const root = document.querySelector(".ccr");
  const fmt = (x) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Math.abs(x) >= 100 || (Math.abs(x) < 0.01 && x !== 0) ? x.toExponential(2) : x.toFixed(3));
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  const nodes = data.nodes.map((d) => Object.assign({}, d));
  const byId = new Map(nodes.map((d) => [d.node_id, d]));
  const links = data.links.filter((l) => byId.has(l.source) && byId.has(l.target)).map((l) => Object.assign({}, l, { s: byId.get(l.source), t: byId.get(l.target) }));
  const tokens = data.metadata.prompt_tokens;
  const layerOf = (d) => (d.feature_type === "embedding" ? -1 : parseInt(d.layer, 10));
  const layers = Array.from(new Set(nodes.map(layerOf))).sort((a, b) => a - b);
  const dash = data.dashboards || {};

  const margin = { top: 28, right: 16, bottom: 64, left: 70 };
  const colW = Math.max(64, Math.min(140, 1100 / Math.max(tokens.length, 1)));
  const rowH = Math.max(34, Math.min(60, 720 / Math.max(layers.length, 1)));
  const width = margin.left + margin.right + colW * tokens.length;
  const height = margin.top + margin.bottom + rowH * layers.length;
  const y = (layer) => margin.top + rowH * (layers.length - 1 - layers.indexOf(layer)) + rowH / 2;

  // nodes of one (layer, position) cell side by side, most influential first
  const cells = d3.group(nodes, (d) => layerOf(d) + "|" + d.ctx_idx);
  for (const group of cells.values()) {
    group.sort((a, b) => (a.influence ?? 1) - (b.influence ?? 1));
    group.forEach((d, i) => {
      const span = Math.min(colW - 10, 9 * group.length);
      d.x = margin.left + colW * d.ctx_idx + colW / 2 + (group.length > 1 ? -span / 2 + (span * i) / (group.length - 1) : 0);
      d.y = y(layerOf(d));
    });
  }

  const panel = d3.select(root).append("div").attr("class", "cc-controls");
  panel.append("label").attr("for", "cc-threshold").text("node threshold (share of influence) ");
  const slider = panel.append("input").attr("id", "cc-threshold").attr("type", "range").attr("min", 0.05).attr("max", 1).attr("step", 0.01)
    .attr("value", Math.min(1, data.metadata.node_threshold || 0.8));
  const shown = panel.append("span").attr("class", "cc-threshold-value");
  const counts = panel.append("span").attr("class", "cc-counts");

  const svg = d3.select(root).append("svg").attr("class", "cc-graph").attr("width", width).attr("height", height)
    .attr("viewBox", `0 0 ${width} ${height}`);
  const grid = svg.append("g");
  layers.forEach((layer) => {
    grid.append("line").attr("x1", margin.left).attr("x2", width - margin.right).attr("y1", y(layer)).attr("y2", y(layer)).attr("class", "cc-row");
    grid.append("text").attr("x", margin.left - 8).attr("y", y(layer) + 4).attr("text-anchor", "end")
      .text(layer === -1 ? "emb" : layer === layers[layers.length - 1] && nodes.some((d) => d.feature_type === "logit" && layerOf(d) === layer) ? "logits" : "L" + layer);
  });
  tokens.forEach((tok, i) => {
    grid.append("text").attr("class", "cc-token").attr("x", margin.left + colW * i + colW / 2).attr("y", height - margin.bottom + 18)
      .attr("text-anchor", "middle").text(JSON.stringify(tok).slice(1, -1));
  });
  const maxW = d3.max(links, (l) => Math.abs(l.weight)) || 1;
  const edgeG = svg.append("g").attr("class", "cc-edges");
  const nodeG = svg.append("g").attr("class", "cc-nodes");
  const tip = d3.select(root).append("div").attr("class", "cc-tip").style("display", "none");
  const detail = d3.select(root).append("div").attr("class", "cc-detail").html("<em>Click a node for its inputs and outputs.</em>");
  let selected = null;

  const shape = (d) => (d.feature_type === "mlp reconstruction error" ? d3.symbolSquare : d.feature_type === "embedding" || d.feature_type === "logit" ? d3.symbolDiamond : d3.symbolCircle);
  const fill = (d) => (d.feature_type === "mlp reconstruction error" ? "#c9ccd3" : d.feature_type === "embedding" ? "#8fb3de" : d.feature_type === "logit" ? "#f0b35a" : "#6f9f6f");
  const name = (d) => d.feature_type === "logit" ? d.clerp : d.feature_type === "embedding" ? `token ${JSON.stringify(tokens[d.ctx_idx])} @${d.ctx_idx}`
    : d.feature_type === "mlp reconstruction error" ? `error L${d.layer} @${d.ctx_idx}` : `L${d.layer} #${d.node_id.split("_")[1]} @${d.ctx_idx}` + (d.clerp ? ` — ${d.clerp}` : "");

  function dashboardHtml(d) {
    const b = dash[d.node_id];
    if (!b) return "";
    let h = "";
    if (b.label) h += `<div><b>label</b> ${esc(b.label)}</div>`;
    if (b.contexts) h += "<div><b>top contexts</b><ol>" + b.contexts.slice(0, 5).map((c) => `<li><code>${esc(c)}</code></li>`).join("") + "</ol></div>";
    if (b.promotes) h += `<div><b>promotes</b> ${b.promotes.map(esc).join(" ")}</div>`;
    if (b.suppresses) h += `<div><b>suppresses</b> ${b.suppresses.map(esc).join(" ")}</div>`;
    return h;
  }

  function visible(threshold) {
    const keep = new Set(nodes.filter((d) => d.feature_type === "embedding" || d.feature_type === "logit" || (d.influence ?? 0) <= threshold).map((d) => d.node_id));
    return { keep, edges: links.filter((l) => keep.has(l.source) && keep.has(l.target)) };
  }

  function describeLinks(list, key) {
    return list.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 12)
      .map((l) => `<tr><td>${esc(name(l[key]))}</td><td class="${l.weight >= 0 ? "pos" : "neg"}">${fmt(l.weight)}</td></tr>`).join("");
  }

  function select(d, edges) {
    selected = d;
    const inputs = edges.filter((l) => l.t === d), outputs = edges.filter((l) => l.s === d);
    detail.html(`<h4>${esc(name(d))}</h4><div>activation ${fmt(d.activation)} · influence ${fmt(d.influence)}</div>${dashboardHtml(d)}` +
      `<table class="cc-links"><tr><th>inputs (${inputs.length})</th><th>weight</th></tr>${describeLinks(inputs, "s")}</table>` +
      `<table class="cc-links"><tr><th>outputs (${outputs.length})</th><th>weight</th></tr>${describeLinks(outputs, "t")}</table>`);
    draw();
  }

  function draw() {
    const threshold = +slider.property("value");
    shown.text(threshold.toFixed(2));
    const { keep, edges } = visible(threshold);
    counts.text(` · ${keep.size} nodes, ${edges.length} edges`);
    const near = selected ? new Set(edges.filter((l) => l.s === selected || l.t === selected).flatMap((l) => [l.source, l.target])) : null;
    edgeG.selectAll("path").data(edges, (l) => l.source + ">" + l.target).join("path")
      .attr("d", (l) => `M${l.s.x},${l.s.y}C${l.s.x},${(l.s.y + l.t.y) / 2} ${l.t.x},${(l.s.y + l.t.y) / 2} ${l.t.x},${l.t.y}`)
      .attr("stroke", (l) => (l.weight >= 0 ? "#2f6fb5" : "#c0392b"))
      .attr("stroke-width", (l) => 0.4 + 3.6 * Math.sqrt(Math.abs(l.weight) / maxW))
      .attr("opacity", (l) => (selected ? (l.s === selected || l.t === selected ? 0.9 : 0.06) : 0.35));
    nodeG.selectAll("path").data(nodes.filter((d) => keep.has(d.node_id)), (d) => d.node_id).join("path")
      .attr("class", "cc-node").attr("data-id", (d) => d.node_id)
      .attr("transform", (d) => `translate(${d.x},${d.y})`)
      .attr("d", (d) => d3.symbol(shape(d), d === selected ? 160 : 70)())
      .attr("fill", fill).attr("stroke", (d) => (d === selected ? "#000" : "#fff"))
      .attr("opacity", (d) => (near && !near.has(d.node_id) && d !== selected ? 0.3 : 1))
      .on("mouseenter", (event, d) => {
        tip.style("display", "block").style("left", d.x + 14 + "px").style("top", d.y + 8 + "px")
          .html(`<b>${esc(name(d))}</b><br>activation ${fmt(d.activation)}<br>influence ${fmt(d.influence)}${dashboardHtml(d)}`);
      })
      .on("mouseleave", () => tip.style("display", "none"))
      .on("click", (event, d) => select(d, edges));
  }

  slider.on("input", draw);
  draw();
  window.ccGraph = { select: (id) => select(byId.get(id), visible(+slider.property("value")).edges), draw, nodes, links };
  root.setAttribute("data-rendered", "true");
})();
