// Loopgate Console: confirmations and keyboard shortcuts. The pages work without it.
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var button = event.submitter;
    var message = (button && button.dataset.confirm) || form.dataset.confirm;
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });
  document.addEventListener("keydown", function (event) {
    var tag = (event.target.tagName || "").toLowerCase();
    var form = document.getElementById("label-form") || document.getElementById("compare-form");
    if (!form) { return; }
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      var save = form.querySelector("button[value=label]");
      if (save) { form.requestSubmit(save); }
      return;
    }
    var typing = tag === "textarea" || tag === "select" ||
      (tag === "input" && event.target.type !== "radio" && event.target.type !== "checkbox");
    if (typing || event.ctrlKey || event.metaKey || event.altKey) {
      if (event.key === "Escape") { event.target.blur(); }
      return;
    }
    var target = form.querySelector('[data-key="' + event.key + '"]');
    if (!target) { return; }
    event.preventDefault();
    if (target.tagName === "BUTTON") { form.requestSubmit(target); }
    else if (target.type === "radio") { target.checked = true; target.focus(); }
    else { target.focus(); }
  });
})();
