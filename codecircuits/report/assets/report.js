/* codecircuits report: sortable tables and offline circuitsvis views. Safe to run more than once on a page
   (a notebook may hold many report fragments): each root is set up once. Makes no network requests. */
(function () {
  "use strict";
  var cc = (window.ccReport = window.ccReport || {});

  function sortKey(cell) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) raw = cell.textContent;
    var num = parseFloat(raw);
    return isNaN(num) || !/^\s*[-+]?(\d|\.\d|Infinity)/.test(raw) ? { n: null, s: raw.toLowerCase() } : { n: num, s: raw };
  }

  function makeSortable(table) {
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, col) {
      th.setAttribute("title", "click to sort");
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = sortKey(a.cells[col]), y = sortKey(b.cells[col]), r;
          if (x.n !== null && y.n !== null) r = x.n - y.n;
          else if (x.n !== null) r = -1;
          else if (y.n !== null) r = 1;
          else r = x.s < y.s ? -1 : x.s > y.s ? 1 : 0;
          return asc ? r : -r;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  }

  function renderView(el) {
    var target = el.querySelector(".cc-cv-target");
    var propsEl = el.querySelector("script.cc-cv-props");
    var name = el.getAttribute("data-component");
    try {
      if (!window.CircuitsVis) throw new Error("the circuitsvis bundle was not loaded");
      if (!window.CircuitsVis[name]) throw new Error("circuitsvis has no component " + name);
      window.CircuitsVis.render(target.id, window.CircuitsVis[name], JSON.parse(propsEl.textContent));
    } catch (err) {
      target.innerHTML = "";
      var msg = document.createElement("p");
      msg.className = "cc-cv-error";
      msg.textContent = "This view could not be drawn: " + err.message;
      target.appendChild(msg);
      el.setAttribute("data-failed", "true");
      console.error("codecircuits report: view " + name + " failed:", err);
    }
  }

  function drawn(el) {
    var t = el.querySelector(".cc-cv-target");
    if (!t) return false;
    var kids = t.querySelectorAll("canvas, svg, table, span, div");
    for (var i = 0; i < kids.length; i++) {
      var r = kids[i].getBoundingClientRect();
      if (r.width > 0 && r.height > 0) return true;
    }
    return false;
  }

  cc.init = function (root) {
    if (!root || root.getAttribute("data-cc-init")) return;
    root.setAttribute("data-cc-init", "1");
    root.querySelectorAll("table.cc-table").forEach(makeSortable);
    var views = Array.prototype.slice.call(root.querySelectorAll(".cc-cv"));
    views.forEach(renderView);
    var start = Date.now();
    (function wait() {
      var pending = views.filter(function (v) { return !drawn(v) && !v.getAttribute("data-failed"); });
      if (pending.length === 0 || Date.now() - start > 20000) {
        pending.forEach(function (v) {
          v.setAttribute("data-failed", "true");
          console.error("codecircuits report: view " + v.getAttribute("data-component") + " drew nothing");
        });
        root.setAttribute("data-rendered", "true");
        return;
      }
      window.setTimeout(wait, 25);
    })();
  };

  cc.initAll = function () {
    document.querySelectorAll(".ccr").forEach(cc.init);
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", cc.initAll);
  else cc.initAll();
})();
