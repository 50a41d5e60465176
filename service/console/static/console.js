// The console works without scripts; this only adds conveniences.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // a flag's change as it was sent, kept in this tab until the flag's page is shown
  // again: when the session had ended, nothing was saved and signing in comes back to an
  // empty form (a typed note was lost: a walkthrough), so it is filled in again there
  const change = document.querySelector("form[data-draft]");
  if (change) {
    const key = `unsaved:${change.getAttribute("action")}`;
    const draft = JSON.parse(sessionStorage.getItem(key) || "null");
    sessionStorage.removeItem(key);
    const expected = change.elements.expected_status;
    if (draft && change.hasAttribute("data-unsent")) {
      change.elements.status.value = draft.status;
      change.elements.note.value = draft.note;
      // the status the change was made against: changed meanwhile, saving is refused as
      // stale (409) and says who changed it, as for any page opened before (found in review)
      expected.value = draft.expected;
      document.querySelector("p.draft-restored").hidden = false;
    }
    change.addEventListener("submit", () => {
      const sent = { status: change.elements.status.value, note: change.elements.note.value, expected: expected.value };
      sessionStorage.setItem(key, JSON.stringify(sent));
    });
  }
  // "select all" in the flag queue
  for (const all of document.querySelectorAll("input.select-all")) {
    all.addEventListener("change", () => {
      const form = all.closest("form");
      for (const box of form.querySelectorAll('input[name="flag_id"]')) box.checked = all.checked && !box.disabled;
    });
  }
  // new and changed flags as they reach the feed (server-sent events), newest first;
  // every value is set as text, never as markup
  const live = document.querySelector("section.live[data-live]");
  if (live && "EventSource" in window) {
    const list = live.querySelector("ul.live-flags");
    // one stream per page, open only while the page is shown: a browser keeps six
    // connections to a host, and six queue tabs each holding a stream left every other
    // page waiting (a probe). A hidden page closes its stream; shown again, it opens it
    // where it was (the last position the service told, at first where the flag stream
    // was as the page was rendered), so it misses nothing meanwhile.
    let source = null;
    let position = live.dataset.after || "";
    let over = false; // the session ended, or the browser gave up: not opened again
    // the stream stops: said on the page (it stopped without a word: a probe). The
    // service says when the session has ended; any other end the browser gives up on
    // (a refused connection) is an error with the stream closed. A dropped connection
    // the browser retries by itself, and says nothing.
    // (an alert once shown: a page holds no alert until something is wrong)
    const ended = document.querySelector("p.live-ended");
    const stopped = document.querySelector("p.live-stopped");
    const show = (message) => {
      message.setAttribute("role", "alert");
      message.hidden = false;
    };
    const open = () => {
      const url = new URL(live.dataset.live, window.location.href);
      if (position) url.searchParams.set("after", position);
      const opened = new EventSource(url);
      opened.addEventListener("ended", () => {
        opened.close();
        over = true;
        stopped.hidden = true;
        show(ended);
      });
      opened.addEventListener("error", () => {
        if (opened.readyState !== EventSource.CLOSED) return;
        over = true;
        if (ended.hidden) show(stopped);
      });
      opened.addEventListener("position", (message) => {
        position = message.lastEventId;
      });
      opened.addEventListener("flag", (message) => {
        position = message.lastEventId;
        arrived(JSON.parse(message.data));
      });
      source = opened;
    };
    document.addEventListener("visibilitychange", () => {
      if (document.hidden && source) {
        source.close();
        source = null;
      } else if (!document.hidden && !source && !over) {
        open();
      }
    });
    // the stored values each in its own <bdi>: a direction character in one cannot
    // reorder the rest of the line
    const isolated = (text) => {
      const bdi = document.createElement("bdi");
      bdi.textContent = text;
      return bdi;
    };
    // the flag's organisation as the table shows it: its name linked to its page, then
    // its id; its id linked when it has no name
    const organisation = (flag) => {
      if (!flag.org) return [];
      const link = document.createElement("a");
      link.href = flag.org_url;
      if (!flag.org_name) {
        link.append(isolated(flag.org));
        return [link];
      }
      link.append(isolated(flag.org_name));
      const id = document.createElement("span");
      id.className = "muted";
      id.append("(", isolated(flag.org), ")");
      return [link, " ", id];
    };
    const arrived = (flag) => {
      // a change of a flag the table shows: its row says so, with its status now, and
      // is no longer ticked (its form still carries the status the page showed, so a
      // bulk change would leave it alone); it was listed as if new, beside a row that
      // still showed the old status (a probe)
      if (flag.changed) {
        const row = Array.from(document.querySelectorAll("table.flags tbody tr[data-flag]")).find(
          (tr) => tr.dataset.flag === flag.flag_id,
        );
        if (row) {
          const cell = row.querySelector("td.status-cell");
          const status = document.createElement("span");
          status.className = "status status-" + flag.status_key;
          status.textContent = flag.status;
          const mark = document.createElement("span");
          mark.className = "row-changed";
          mark.append(` ${flag.row_label} (`, isolated(flag.by), ` · ${flag.changed_at})`);
          cell.replaceChildren(status, mark);
          row.classList.add("changed");
          const box = row.querySelector('input[name="flag_id"]');
          box.checked = false;
          box.disabled = true;
          return;
        }
        if (!flag.listed) return; // the page would not list it: nothing to say
      }
      const item = document.createElement("li");
      if (flag.changed) item.className = "changed";
      const link = document.createElement("a");
      link.href = "/console/flags/" + encodeURIComponent(flag.flag_id);
      link.textContent = flag.flag_id;
      const label = document.createElement("strong");
      label.className = "live-label";
      label.textContent = flag.label;
      item.append(label, " ", link, ` ${flag.kind} · ${flag.status} · `, isolated(flag.code), " · ", ...organisation(flag), ` · ${flag.at}`);
      if (flag.changed) item.append(" · ", isolated(flag.by), ` · ${flag.changed_at}`);
      list.prepend(item);
      while (list.children.length > 50) list.lastElementChild.remove();
      live.hidden = false;
    };
    if (!document.hidden) open();
  }
});
