// Sortable unit tables: header buttons sort by unit, label, category or IoU (ties by unit).
// Without JavaScript the tables stay in unit order.
(function () {
  "use strict";
  var NUMERIC = { unit: true, iou: true };

  function value(row, key) {
    var v = row.getAttribute("data-" + key) || "";
    return NUMERIC[key] ? parseFloat(v) : v.toLowerCase();
  }

  function sortTable(table, th, key) {
    var state = th.getAttribute("aria-sort");
    var descending = state ? state === "ascending" : key === "iou";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, key), y = value(b, key), c = 0;
      if (!NUMERIC[key] && (x === "") !== (y === "")) {
        return x === "" ? 1 : -1;  // unlabelled units last either way
      }
      if (x < y) { c = -1; } else if (x > y) { c = 1; }
      if (descending) { c = -c; }
      return c || value(a, "unit") - value(b, "unit");
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(th.parentNode.cells, function (cell) {
      cell.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.units"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      var key = th.getAttribute("data-sort");
      if (!key) { return; }
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = th.textContent;
      button.setAttribute("data-key", key);
      button.title = "sort by " + th.textContent.toLowerCase();
      th.textContent = "";
      th.appendChild(button);
      button.addEventListener("click", function () { sortTable(table, th, key); });
    });
    var first = table.tHead.rows[0].cells[0];
    if (first) { first.setAttribute("aria-sort", "ascending"); }
  });
})();
