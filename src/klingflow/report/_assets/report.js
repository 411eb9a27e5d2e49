// Checks that every clip in the report can be decoded by this browser, and says so on its badge.
// A clip is playable once its first frame is decoded and a seek to its middle completes; the
// result goes into data-playable ("yes" / "no") so tests and people see the same thing.
(() => {
  const media = Array.from(document.querySelectorAll("video[data-check], audio[data-check]"));
  let settled = 0;
  const finish = (element, state, detail) => {
    if (element.dataset.playable) return;
    element.dataset.playable = state;
    const badge = document.getElementById(element.dataset.check);
    if (badge) {
      badge.textContent = state === "yes" ? "✓ plays in this browser" : "✗ cannot play: " + detail;
      badge.className = "check " + state;
    }
    settled += 1;
    document.body.dataset.mediaSettled = settled + "/" + media.length;
    if (settled === media.length) document.body.dataset.mediaDone = "true";
  };
  const loaded = (element) => {
    const picture = element.tagName === "AUDIO" || element.videoWidth > 0;
    if (!(element.duration > 0) || !picture) {
      finish(element, "no", "no picture or zero length");
      return;
    }
    element.addEventListener("seeked", () => {
      finish(element, "yes", "");
      element.currentTime = 0;
    }, { once: true });
    element.currentTime = element.duration / 2;
  };
  const failed = (element) => {
    const error = element.error;
    finish(element, "no", error ? error.message || "media error " + error.code : "media error");
  };
  document.body.dataset.mediaSettled = "0/" + media.length;
  for (const element of media) {
    if (element.error) failed(element);
    else if (element.readyState >= 2) loaded(element);
    else {
      element.addEventListener("loadeddata", () => loaded(element), { once: true });
      element.addEventListener("error", () => failed(element), { once: true });
    }
  }
  if (!media.length) document.body.dataset.mediaDone = "true";
})();
