/*
 * review.js: the review page's table and slide panel (wsi-ncmi's own code, no library).
 *
 * Reads window.WSI_REVIEW (data/index.js, see wsi_ncmi.formats.reviewpage) and builds the
 * table of slides: sortable by clicking a column header, filtered by id and by flag, ordered
 * by presets ("flagged first", "wrong first" when true labels are known). Opening a slide
 * (click, Enter, or the n / p keys) loads its data/slide_<n>.js with a <script> tag (pages
 * opened from file:// cannot fetch JSON) and hands it to the SlideViewer (viewer.js). No
 * slide data or image loads before a slide is opened. The open slide is kept in the URL's
 * hash (#slide=<id>), so a reload or a shared link reopens it.
 *
 * Every text from the data is set with textContent, never parsed as HTML.
 * Keys outside text fields: n / p next / previous slide in table order, o attention
 * overlay, t tissue outline, + / - / 0 zoom and fit (arrows pan once the image has focus).
 */
(function () {
  "use strict";

  const D = window.WSI_REVIEW;
  const $ = (id) => document.getElementById(id);
  const loaded = new Map(); // slide index -> data record
  const waiting = new Map(); // slide index -> callback once its script has run
  const viewer = new SlideViewer($("view"));
  const rows = D.slides.map((s, i) => Object.assign({ index: i }, s));
  let shown = [];
  let current = -1;
  let sort = null; // {key, dir} after a header click; null: the Order preset

  const top = (r) => Math.max.apply(null, r.probabilities);
  const wrong = (r) => r.truth !== undefined && r.truth !== r.predicted;
  const byId = (a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

  const ORDERS = {
    flagged: { label: "flagged first", cmp: (a, b) => b.review - a.review || top(a) - top(b) || byId(a, b) },
    wrong: { label: "wrong first", truth: true,
      cmp: (a, b) => wrong(b) - wrong(a) || b.review - a.review || top(a) - top(b) || byId(a, b) },
    unsure: { label: "least confident first", cmp: (a, b) => top(a) - top(b) || byId(a, b) },
    id: { label: "slide id", cmp: byId },
  };
  const SHOW = {
    all: { label: "all slides", keep: () => true },
    flagged: { label: "flagged only", keep: (r) => r.review },
    wrong: { label: "wrong only", truth: true, keep: wrong },
    right: { label: "right only", truth: true, keep: (r) => r.truth !== undefined && !wrong(r) },
  };

  /** Table columns: header text, a sort key and a cell filler. */
  function columns() {
    const cols = [
      { head: "Slide", key: (r) => r.id, cell: (td, r) => { td.textContent = r.id; td.title = r.id; td.className = "id"; } },
      { head: "Predicted", key: (r) => r.predicted, cell: (td, r) => { td.textContent = r.predicted; } },
    ];
    D.classes.forEach((c, k) => cols.push({
      head: "p(" + c + ")", num: true, key: (r) => r.probabilities[k],
      cell: (td, r) => {
        td.textContent = r.probabilities[k].toFixed(3);
        if (c === r.predicted) td.className = "pred";
      },
    }));
    cols.push({ head: "Review", key: (r) => (r.review ? 1 : 0),
      cell: (td, r) => { td.textContent = r.review ? "⚑ review" : ""; if (r.review) td.className = "flag"; } });
    if (D.has_truth) {
      cols.push({ head: "True label", key: (r) => r.truth || "", cell: (td, r) => { td.textContent = r.truth || "–"; } });
      cols.push({ head: "Right", key: (r) => (r.truth === undefined ? -1 : wrong(r) ? 0 : 1),
        cell: (td, r) => {
          if (r.truth === undefined) return;
          td.textContent = wrong(r) ? "✗" : "✓";
          td.className = wrong(r) ? "bad" : "good";
        } });
    }
    return cols;
  }
  const COLS = columns();

  function fillSelect(select, options, value) {
    for (const [key, o] of Object.entries(options)) {
      if (o.truth && !D.has_truth) continue;
      const opt = document.createElement("option");
      opt.value = key;
      opt.textContent = o.label;
      select.appendChild(opt);
    }
    select.value = value;
  }

  function buildHeader() {
    document.title = D.title;
    $("title").textContent = D.title;
    for (const [name, value] of D.notes) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = value;
      $("notes").append(dt, dd);
    }
    const tr = document.querySelector("#slides thead tr");
    COLS.forEach((col, k) => {
      const th = document.createElement("th");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = col.head;
      button.addEventListener("click", () => {
        sort = { key: k, dir: sort && sort.key === k ? -sort.dir : 1 };
        render();
      });
      th.appendChild(button);
      if (col.num) th.className = "num";
      tr.appendChild(th);
    });
    fillSelect($("show"), SHOW, "all");
    fillSelect($("order"), ORDERS, D.has_truth ? "wrong" : "flagged");
    $("show").addEventListener("change", render);
    $("order").addEventListener("change", () => { sort = null; render(); });
    $("search").addEventListener("input", render);
    const bar = $("colourbar"), g = bar.getContext("2d");
    D.colormap.forEach((c, i) => {
      g.fillStyle = c;
      g.fillRect(i * bar.width / D.colormap.length, 0, bar.width / D.colormap.length + 1, bar.height);
    });
  }

  function comparator() {
    if (!sort) return ORDERS[$("order").value].cmp;
    const key = COLS[sort.key].key;
    return (a, b) => {
      const x = key(a), y = key(b);
      return (x < y ? -1 : x > y ? 1 : 0) * sort.dir || byId(a, b);
    };
  }

  /** Redraw the table body from the filters and the order. */
  function render() {
    const needle = $("search").value.trim().toLowerCase();
    const keep = SHOW[$("show").value].keep;
    shown = rows.filter((r) => keep(r) && r.id.toLowerCase().includes(needle)).sort(comparator());
    const body = document.createElement("tbody");
    for (const r of shown) {
      const tr = document.createElement("tr");
      tr.tabIndex = 0;
      tr.dataset.index = r.index;
      if (r.index === current) tr.setAttribute("aria-selected", "true");
      for (const col of COLS) {
        const td = document.createElement("td");
        if (col.num) td.classList.add("num");
        col.cell(td, r);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    $("slides").replaceChild(body, $("slides").tBodies[0]);
    document.querySelectorAll("#slides th").forEach((th, k) => {
      if (sort && sort.key === k) th.setAttribute("aria-sort", sort.dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    });
    const flagged = rows.filter((r) => r.review).length;
    let count = "Showing " + shown.length + " of " + rows.length + " slides · " + flagged + " flagged";
    if (D.has_truth) count += " · " + rows.filter(wrong).length + " wrong";
    $("count").textContent = count;
  }

  /** Open slide `index`: load its data script once, then show it. */
  function open(index) {
    performance.mark("review:open");
    current = index;
    for (const tr of document.querySelectorAll("#slides tbody tr")) {
      tr.toggleAttribute("aria-selected", Number(tr.dataset.index) === index);
    }
    const row = rows[index];
    history.replaceState(null, "", "#slide=" + encodeURIComponent(row.id));
    slideHead(row, "Loading…");
    if (loaded.has(index)) return display(loaded.get(index));
    waiting.set(index, display);
    const script = document.createElement("script");
    script.src = row.data;
    script.onerror = () => slideHead(row, "Could not load " + row.data);
    document.body.appendChild(script);
  }

  /** Called by each data/slide_<n>.js. */
  function receive(data) {
    loaded.set(data.index, data);
    const then = waiting.get(data.index);
    waiting.delete(data.index);
    if (then && current === data.index) then(data);
  }

  function display(data) {
    const row = rows[data.index];
    slideHead(row, data.pyramid ? "" : "no slide image: attention and outline only");
    viewer.show(data, D.colormap);
    gallery(data);
    links(data);
  }

  function slideHead(row, note) {
    const head = $("slide-head");
    head.textContent = "";
    const parts = [["id", row.id], ["", "predicted " + row.predicted + " (p = " + top(row).toFixed(3) + ")"]];
    if (row.truth !== undefined) parts.push([wrong(row) ? "bad" : "good", "true label " + row.truth]);
    if (row.review) parts.push(["flag", "⚑ flagged for review"]);
    if (note) parts.push(["muted", note]);
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      head.appendChild(span);
    }
  }

  function gallery(data) {
    const box = $("gallery");
    box.textContent = "";
    data.top.forEach((i, rank) => {
      const item = document.createElement("button");
      item.type = "button";
      item.className = "thumb";
      item.title = "Tile at (" + data.tiles.x[i] + ", " + data.tiles.y[i] + ") level-0 px: show it";
      const canvas = document.createElement("canvas");
      const label = document.createElement("span");
      label.textContent = "#" + (rank + 1) + " · α " + (100 * data.tiles.attention[i]).toFixed(2) + " %";
      item.append(canvas, label);
      item.addEventListener("click", () => {
        const side = data.tiles.side[i];
        viewer.zoomToRect(data.tiles.x[i] - side, data.tiles.y[i] - side, 3 * side, 3 * side);
        viewer.highlight(i);
      });
      box.appendChild(item);
      viewer.addThumb(canvas, i);
    });
  }

  function links(data) {
    const list = $("links");
    list.textContent = "";
    for (const link of data.links) {
      const li = document.createElement("li"), a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.label;
      const path = document.createElement("code");
      path.textContent = decodeURIComponent(link.href);
      li.append(a, " ", path);
      list.appendChild(li);
    }
  }

  /** Open the slide after (step 1) or before (-1) the open one, in table order. */
  function step(by) {
    if (!shown.length) return;
    const at = shown.findIndex((r) => r.index === current);
    const next = shown[at < 0 ? 0 : clampIndex(at + by, shown.length)];
    open(next.index);
    const tr = document.querySelector('#slides tbody tr[data-index="' + next.index + '"]');
    if (tr) tr.scrollIntoView({ block: "nearest" });
  }

  function clampIndex(i, n) {
    return Math.min(n - 1, Math.max(0, i));
  }

  function listen() {
    const body = () => $("slides").tBodies[0];
    $("slides").addEventListener("click", (e) => {
      const tr = e.target.closest("tbody tr");
      if (tr && body().contains(tr)) open(Number(tr.dataset.index));
    });
    $("slides").addEventListener("keydown", (e) => {
      const tr = e.target.closest("tbody tr");
      if (tr && (e.key === "Enter" || e.key === " ")) {
        e.preventDefault();
        open(Number(tr.dataset.index));
      }
    });
    $("overlay").addEventListener("change", (e) => viewer.setOverlay(e.target.checked));
    $("opacity").addEventListener("input", (e) => viewer.setOpacity(e.target.value / 100));
    $("tissue").addEventListener("change", (e) => viewer.setTissue(e.target.checked));
    $("fit").addEventListener("click", () => viewer.fit());
    document.addEventListener("keydown", (e) => {
      if (e.target.closest("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
      const toggle = (id) => { $(id).checked = !$(id).checked; $(id).dispatchEvent(new Event("change")); };
      const keys = { n: () => step(1), p: () => step(-1), o: () => toggle("overlay"), t: () => toggle("tissue") };
      if (keys[e.key]) {
        e.preventDefault();
        keys[e.key]();
      } else if (["+", "=", "-", "0"].includes(e.key) && e.target !== $("view")) {
        viewer.onKey(e); // zoom keys work anywhere; the canvas handles its own
      }
    });
  }

  function openFromHash() {
    const m = /^#slide=(.*)$/.exec(location.hash);
    if (!m) return;
    const id = decodeURIComponent(m[1]);
    const row = rows.find((r) => r.id === id);
    if (row) open(row.index);
  }

  window.WSIReview = { receive: receive, open: open, viewer: viewer };
  buildHeader();
  viewer.setOpacity($("opacity").value / 100);
  listen();
  render();
  openFromHash();
})();
