// Datadonor app: progressive enhancement only. Every step works without this script.
// The export upload shows a progress bar; without the script the form posts normally.
(function () {
  "use strict";
  var form = document.getElementById("upload");
  if (!form || !window.XMLHttpRequest || !window.FormData) {
    return;
  }
  form.addEventListener("submit", function (event) {
    var input = document.getElementById("export");
    if (!input || !input.files || input.files.length === 0) {
      return; // let the browser (and the server) say that a file is needed
    }
    event.preventDefault();
    var box = document.getElementById("progress");
    var bar = document.getElementById("progress-bar");
    var button = form.querySelector("button[type=submit]");
    if (box) { box.hidden = false; }
    if (button) { button.disabled = true; }
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.getAttribute("action"));
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable && bar) {
        bar.value = Math.floor((e.loaded / e.total) * 100);
      }
    });
    xhr.addEventListener("load", function () {
      // The server answers a successful upload with a redirect to the next step, which the
      // request followed; a refusal is a page saying why, shown as it is.
      if (xhr.status === 200 && xhr.responseURL) {
        window.location.assign(xhr.responseURL);
      } else {
        document.open();
        document.write(xhr.responseText);
        document.close();
      }
    });
    xhr.addEventListener("error", function () {
      window.location.assign("/export");
    });
    xhr.send(new FormData(form));
  });
})();
