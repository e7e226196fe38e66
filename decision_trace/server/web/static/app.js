// decision-trace web view: progressive enhancement only; every page works without it.
// Rewrites each <time datetime="...Z"> to the viewer's time zone; the title keeps UTC.
(function () {
  "use strict";
  function localize() {
    var times = document.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var el = times[i];
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) { continue; }
      el.textContent = when.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "numeric",
        hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
      });
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", localize);
  } else {
    localize();
  }
})();
