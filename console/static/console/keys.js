/* API keys: a revoke button on the list asks first (console.js's <form data-confirm>); once the
   person agrees, the form is marked confirmed (its [data-confirmed-value] inputs get that value),
   so the server revokes at once instead of asking again on its confirmation page, which is what
   a browser without JavaScript gets. Runs after console.js's check (bubble phase, after capture). */
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (event.defaultPrevented || !form.dataset || !form.dataset.confirm) { return; }
    form.querySelectorAll("[data-confirmed-value]").forEach(function (input) {
      input.value = input.dataset.confirmedValue;
    });
  });
})();
