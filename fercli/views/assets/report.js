// fer report (fercli/views/report.py): clicks on a timeline seek the clip's video (or just move the
// cursor when there is none), and the cursor of every timeline of the clip follows its currentTime.
(function () {
  "use strict";
  function svgX(svg, clientX, clientY) {
    var pt = svg.createSVGPoint();
    pt.x = clientX; pt.y = clientY;
    return pt.matrixTransform(svg.getScreenCTM().inverse()).x;
  }
  function clamp(t, hi) { return Math.min(Math.max(t, 0), hi); }
  document.querySelectorAll("section.clip").forEach(function (section) {
    var data = JSON.parse(section.querySelector("script.clip-data").textContent);
    var duration = data.duration, origin = data.origin || 0;
    var video = section.querySelector("video");
    var readout = section.querySelector("output.readout");
    var svgs = section.querySelectorAll("svg.timeline");
    function describe(t) {
      var s = String(Math.floor(t));
      var parts = data.faces.map(function (face) {
        var r = face.seconds[s];
        var name = data.faces.length > 1 ? face.label + ": " : "";
        if (!r) { return name + "no face"; }
        var conf = function (c) { return c === null ? "" : " (" + c.toFixed(2) + ")"; };
        var band = function (lo, hi) { return lo === null || hi === null ? "" : " [" + lo + " to " + hi + "]"; };
        return name + "valence " + r[0] + conf(r[2]) + band(r[4], r[5]) + ", arousal " + r[1] + conf(r[3]) + band(r[6], r[7]);
      });
      return t.toFixed(2) + " s, second " + s + ": " + parts.join("; ");
    }
    function place(t) {
      t = clamp(t, duration);
      svgs.forEach(function (svg) {
        var x0 = +svg.dataset.x0, x1 = +svg.dataset.x1;
        var x = x0 + (x1 - x0) * t / duration;
        var cursor = svg.querySelector("line.cursor");
        cursor.setAttribute("x1", x); cursor.setAttribute("x2", x);
      });
      section.dataset.cursor = t.toFixed(3);
      readout.textContent = describe(t);
    }
    svgs.forEach(function (svg) {
      svg.addEventListener("click", function (ev) {
        var x0 = +svg.dataset.x0, x1 = +svg.dataset.x1;
        var t = clamp((svgX(svg, ev.clientX, ev.clientY) - x0) / (x1 - x0) * duration, duration);
        // The file's clock runs `origin` ahead of the table's where its video starts after its
        // sound; the table's clip end and the file's duration can differ by a frame: stay inside.
        if (video) { var at = t + origin; video.currentTime = isFinite(video.duration) ? Math.min(at, video.duration) : at; }
        place(t);
      });
    });
    if (video) {
      var follow = function () { place(video.currentTime - origin); };
      video.addEventListener("timeupdate", follow);
      video.addEventListener("seeked", follow);
      video.addEventListener("error", function () { section.querySelector(".video-note").hidden = false; });
    }
  });
})();
