// The console works without scripts; this only adds conveniences.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // "select all" in the flag queue
  for (const all of document.querySelectorAll("input.select-all")) {
    all.addEventListener("change", () => {
      const form = all.closest("form");
      for (const box of form.querySelectorAll('input[name="flag_id"]')) box.checked = all.checked;
    });
  }
  // new and changed flags as they reach the feed (server-sent events), newest first;
  // every value is set as text, never as markup
  const live = document.querySelector("section.live[data-live]");
  if (live && "EventSource" in window) {
    const list = live.querySelector("ul.live-flags");
    const source = new EventSource(live.dataset.live);
    // the stream stops: said on the page (it stopped without a word: a probe). The
    // service says when the session has ended; any other end the browser gives up on
    // (a refused connection) is an error with the stream closed. A dropped connection
    // the browser retries by itself, and says nothing.
    const ended = document.querySelector("p.live-ended");
    const stopped = document.querySelector("p.live-stopped");
    source.addEventListener("ended", () => {
      source.close();
      stopped.hidden = true;
      ended.hidden = false;
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED && ended.hidden) stopped.hidden = false;
    });
    source.addEventListener("flag", (message) => {
      const flag = JSON.parse(message.data);
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = "/console/flags/" + encodeURIComponent(flag.flag_id);
      link.textContent = flag.flag_id;
      // the stored values each in its own <bdi>: a direction character in one cannot
      // reorder the rest of the line
      const isolated = (text) => {
        const bdi = document.createElement("bdi");
        bdi.textContent = text;
        return bdi;
      };
      item.append(link, ` ${flag.kind} · ${flag.status} · `, isolated(flag.code), " · ", isolated(flag.org), ` · ${flag.at}`);
      list.prepend(item);
      while (list.children.length > 50) list.lastElementChild.remove();
      live.hidden = false;
    });
  }
});
