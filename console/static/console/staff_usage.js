/* Platform staff: live usage of every organisation over ws/staff/usage/ (docs/usage-api.md).
   The per-model figures of the same page are refreshed by htmx (console/pages/staff_usage.py). */
(function () {
  // One "usage.summary" per ingested batch (docs/usage-api.md); a row per organisation seen.
  var rows = {};
  function set(id, text) { document.getElementById(id).textContent = text; }
  function cell(tr, i, text) { tr.children[i].textContent = text; }
  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + "/ws/staff/usage/");
    socket.onopen = function () { set("live-status", "live"); };
    socket.onmessage = function (event) {
      var m = JSON.parse(event.data);
      if (m.type !== "usage.summary") { return; }
      set("total-requests", m.requests); set("total-tokens", m.tokens); set("total-spend", m.spend);
      m.organizations.forEach(function (o) {
        var tr = rows[o.org_id];
        if (!tr) {
          var waiting = document.getElementById("orgs-waiting");
          if (waiting) { waiting.remove(); }
          tr = document.createElement("tr");
          for (var i = 0; i < 5; i++) { tr.appendChild(document.createElement("td")); }
          var link = document.createElement("a");
          link.href = "/orgs/" + encodeURIComponent(o.slug || "") + "/usage/";
          link.textContent = o.slug || o.org_id;
          tr.children[0].appendChild(link);
          document.querySelector("#orgs tbody").appendChild(tr);
          rows[o.org_id] = tr;
        }
        cell(tr, 1, o.requests_per_second.toFixed(2));
        cell(tr, 2, o.tokens_per_second.toFixed(1));
        cell(tr, 3, o.month_spend === null ? "–" : Number(o.month_spend).toFixed(6));
        cell(tr, 4, new Date(o.at).toLocaleTimeString());
      });
    };
    socket.onclose = function (event) {
      if (event.code >= 4400 && event.code < 4500) { set("live-status", "closed (" + event.code + ")"); return; }
      set("live-status", "reconnecting…");
      setTimeout(connect, 5000);
    };
  }
  connect();
})();
