// The job page: poll the small status document, and swap in the panel only when it changed.
// Run / abort / delete go to the UWS endpoints with fetch, so the person stays on this page.
(function () {
  "use strict";
  var panel = document.getElementById("job-panel");
  if (!panel) { return; }
  var statusUrl = panel.dataset.statusUrl;
  var panelUrl = panel.dataset.panelUrl;
  var basePoll = Number(panel.dataset.pollMs) || 1000;
  var delay = basePoll;
  var timer = null;

  function state() {
    var el = document.getElementById("job-state");
    return { signature: el ? el.dataset.signature : "", final: el ? el.dataset.final === "true" : true };
  }

  function fetchOk(url, options) {
    return fetch(url, Object.assign({ cache: "no-store", credentials: "same-origin" }, options || {}))
      .then(function (r) {
        if (!r.ok) { var e = new Error(url + ": HTTP " + r.status); e.status = r.status; throw e; }
        return r;
      });
  }

  function swapPanel() {
    return fetchOk(panelUrl).then(function (r) { return r.text(); })
      .then(function (html) { panel.innerHTML = html; });
  }

  function tick() {
    timer = null;
    fetchOk(statusUrl).then(function (r) { return r.json(); }).then(function (status) {
      if (status.signature !== state().signature) { return swapPanel(); }
    }).then(function () {
      delay = basePoll;
      schedule();
    }).catch(function (error) {
      if (error.status === 404) {  // deleted elsewhere: nothing more to follow
        var message = document.getElementById("action-error");
        if (message) { message.textContent = "This job no longer exists."; message.hidden = false; }
        return;
      }
      delay = Math.min(delay * 2, 30000);  // the service may be restarting: back off
      schedule(true);
    });
  }

  function schedule(force) {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    if (force || !state().final) { timer = setTimeout(tick, delay); }
  }

  panel.addEventListener("submit", function (event) {
    var form = event.target.closest("form.uws-action");
    if (!form) { return; }
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) { return; }
    var message = document.getElementById("action-error");
    fetchOk(form.action, { method: "POST", body: new URLSearchParams(new FormData(form)) })
      .then(function () {
        if (form.dataset.after) { window.location.assign(form.dataset.after); return; }
        return swapPanel().then(function () { delay = basePoll; schedule(); });
      })
      .catch(function (error) {
        if (message) { message.textContent = String(error.message || error); message.hidden = false; }
      });
  });

  schedule();
}());
