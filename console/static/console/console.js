/* The console's small progressive behaviours. Every page works without them; they add:
   - copy buttons:      <button data-copy="element-id">
   - confirmations:     <form data-confirm="Revoke this key?">
   - live tiles:        <section data-ws-path="/ws/orgs/<id>/usage/"> with <x data-live="field">
   - charts (uPlot):    <div class="chart" data-chart="json-script-id" data-chart-kind="bars|lines">
   No inline script anywhere (the Content Security Policy forbids it): data reaches this file
   through data- attributes and <script type="application/json"> blocks (json_script). */
(function () {
  "use strict";

  function onReady(fn) {
    if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); }
  }

  // --- copy to clipboard ---------------------------------------------------------------------
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) { return; }
    var source = document.getElementById(button.dataset.copy);
    if (!source) { return; }
    var text = source.value !== undefined ? source.value : source.textContent;
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      button.setAttribute("aria-live", "polite");
      setTimeout(function () { button.textContent = label; }, 2000);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(source, done); });
    } else {
      fallbackCopy(source, done);
    }
  });

  function fallbackCopy(source, done) {
    var area = document.createElement("textarea");
    area.value = source.value !== undefined ? source.value : source.textContent;
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); done(); } finally { area.remove(); }
  }

  // --- confirmations -------------------------------------------------------------------------
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  }, true);

  // --- live tiles over the organisation's usage websocket (docs/usage-api.md) ---------------
  var formats = {
    fixed1: function (v) { return Number(v).toFixed(1); },
    fixed2: function (v) { return Number(v).toFixed(2); },
    money: function (v) { return Number(v).toFixed(4); },
    int: function (v) { return Number(v).toLocaleString(); }
  };

  function connectLive(section) {
    var reasons = { 4401: "signed out", 4403: "not allowed", 4404: "not a member" };
    var status = section.querySelector("[data-live-status]");
    var say = function (text) { if (status) { status.textContent = text; } };
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + section.dataset.wsPath);
    socket.onopen = function () { say("live"); };
    socket.onmessage = function (event) {
      var message = JSON.parse(event.data);
      if (message.type !== "usage.update") { return; }
      section.querySelectorAll("[data-live]").forEach(function (el) {
        var value = message[el.dataset.live];
        if (value === null || value === undefined) { return; }
        var format = formats[el.dataset.format] || String;
        el.textContent = format(value);
      });
      say("updated " + new Date(message.at).toLocaleTimeString());
    };
    socket.onclose = function (event) {
      if (reasons[event.code]) { say("closed: " + reasons[event.code]); return; }
      say("reconnecting…");
      setTimeout(function () { connectLive(section); }, 5000);
    };
  }

  // --- charts --------------------------------------------------------------------------------
  // The JSON block holds {"x": [unix seconds…], "series": [{"label": "…", "values": […]}, …],
  // "unit": "requests"}; one uPlot chart per element, redrawn when htmx swaps new content in.
  var palette = ["#1f4fb8", "#c4320a", "#067647", "#7a2e98", "#8a4b00", "#0e7090", "#b42318", "#475467"];

  function drawChart(el) {
    if (!window.uPlot || el.dataset.drawn) { return; }
    var block = document.getElementById(el.dataset.chart);
    if (!block) { return; }
    var data = JSON.parse(block.textContent);
    el.dataset.drawn = "1";
    if (!data.x.length) { el.textContent = "No data in this range."; el.classList.add("empty"); return; }
    var bars = el.dataset.chartKind === "bars";
    var series = [{}].concat(data.series.map(function (s, i) {
      var colour = palette[i % palette.length];
      return {
        label: s.label, stroke: colour, width: bars ? 0 : 2,
        fill: bars ? colour + "cc" : undefined,
        paths: bars && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined,
        points: { show: !bars && data.x.length < 60 }
      };
    }));
    var width = Math.max(280, el.clientWidth || 600);
    var chart = new uPlot({
      width: width, height: 260, series: series,
      axes: [{}, { label: data.unit || "", size: 60 }],
      scales: { x: { time: true } }, legend: { live: true }
    }, [data.x].concat(data.series.map(function (s) { return s.values; })), el);
    new ResizeObserver(function () {
      chart.setSize({ width: Math.max(280, el.clientWidth), height: 260 });
    }).observe(el);
  }

  function enhance(root) {
    root.querySelectorAll("[data-chart]").forEach(drawChart);
    root.querySelectorAll("[data-ws-path]").forEach(function (section) {
      if (!section.dataset.connected) { section.dataset.connected = "1"; connectLive(section); }
    });
  }

  onReady(function () { enhance(document); });
  document.addEventListener("htmx:afterSwap", function (event) { enhance(event.target); });
})();
