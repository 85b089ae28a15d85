/* The overview page: its budget meters follow the live month-to-date figures. console.js writes
   each "usage.update" field into the elements that name it (data-live); a <meter
   data-follows="id" data-percent="id"> here copies the raw figure of element "id" (a hidden
   <data> element, unformatted) into its value and the percentage next to it. No inline script:
   the Content Security Policy forbids it. */
(function () {
  "use strict";

  function follow(meter) {
    var source = document.getElementById(meter.dataset.follows);
    var percent = document.getElementById(meter.dataset.percent);
    if (!source) { return; }
    var update = function () {
      var used = Number(source.textContent);
      if (!isFinite(used)) { return; }
      meter.value = used;
      var budget = Number(meter.getAttribute("max"));
      var text = budget > 0 ? (used * 100 / budget).toFixed(1) : "–";
      if (percent) { percent.textContent = text; }
      meter.textContent = budget > 0 ? text + "%" : "";
    };
    new MutationObserver(update).observe(source, { childList: true, characterData: true, subtree: true });
  }

  function start() { document.querySelectorAll("meter[data-follows]").forEach(follow); }
  if (document.readyState !== "loading") { start(); } else { document.addEventListener("DOMContentLoaded", start); }
})();
