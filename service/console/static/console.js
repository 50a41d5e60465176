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
});
