/*
 * viewer.js: the review page's deep-zoom slide viewer (wsi-ncmi's own code, no library).
 *
 * Draws one slide on a <canvas>: its Deep Zoom (DZI) pyramid as written by
 * wsi_ncmi.slides.deepzoom, the attention overlay (one square per tile, coloured by the
 * tile's attention percentile within the slide), the tissue outline, a highlighted tile and
 * a scale bar. All geometry is in level-0 pixels. The view is {ox, oy, s}: the level-0 point
 * at the canvas's top-left corner and the CSS px per level-0 px.
 *
 * Image tiles load lazily: only those the view and the gallery thumbnails need, at most
 * MAX_LOADS at a time, kept in a bounded least-recently-used cache. Coarser levels already
 * loaded are drawn under the level in use, so zooming never shows holes.
 *
 * The canvas's data-idle attribute is "1" once every tile the view needs is drawn, when the
 * performance mark "review:tiles-drawn" is also set, and data-level is the pyramid level the
 * view draws from (empty without a pyramid); both for tests and benchmarks.
 *
 * Input on the canvas: drag to pan, wheel to zoom at the pointer, double-click to zoom in
 * (shift: out); keys (canvas focused): arrows pan, + / - zoom, 0 fits the slide.
 * Exposes window.SlideViewer.
 */
(function () {
  "use strict";

  const MAX_LOADS = 8;
  const CACHE_TILES = 600;
  const KEY_ZOOM = 1.5;
  const PAN_SHARE = 0.15;
  const NO_IMAGE = "#e4e4e8";

  function clamp(v, lo, hi) {
    return Math.min(hi, Math.max(lo, v));
  }

  /** A DZI pyramid: geometry, tile cache and loader. `p` is a slide's `pyramid` record. */
  class TileSource {
    constructor(p, onLoad) {
      this.p = p;
      this.top = p.levels - 1;
      this.onLoad = onLoad;
      this.cache = new Map(); // "level/col_row" -> {img, ok}
      this.want = [];
      this.loading = 0;
      const fitsOneTile = Math.ceil(Math.log2(Math.max(p.width, p.height) / p.tile_size));
      this.baseLevel = clamp(this.top - fitsOneTile, 0, this.top);
    }

    /** Level-0 px per px of level `l`. */
    factor(l) {
      return this.p.downsample * Math.pow(2, this.top - l);
    }

    /** The coarsest level whose px are no larger than a device px at `dev` device px per
     * level-0 px (never coarser than the one-tile level). */
    levelFor(dev) {
      const fullPerDevice = 1 / (dev * this.p.downsample);
      const l = this.top - Math.floor(Math.log2(Math.max(fullPerDevice, 1e-9)));
      return clamp(l, this.baseLevel, this.top);
    }

    /** Draw the levels up to the one `view` needs into `ctx` (w × h CSS px); push the keys
     * of missing tiles of that level and of the base level onto `wanted`. */
    paint(ctx, view, w, h, dpr, wanted) {
      const needed = this.levelFor(view.s * dpr);
      for (let l = this.baseLevel; l <= needed; l++) {
        const ask = l === needed || l === this.baseLevel;
        this.paintLevel(ctx, l, view, w, h, ask ? wanted : null);
      }
    }

    paintLevel(ctx, l, view, w, h, wanted) {
      const p = this.p, ts = p.tile_size, f = this.factor(l);
      const lw = Math.ceil(p.width / Math.pow(2, this.top - l));
      const lh = Math.ceil(p.height / Math.pow(2, this.top - l));
      const x0 = view.ox / f, y0 = view.oy / f;
      const x1 = (view.ox + w / view.s) / f, y1 = (view.oy + h / view.s) / f;
      if (x1 < 0 || y1 < 0 || x0 > lw || y0 > lh) return;
      const cols = Math.ceil(lw / ts), rows = Math.ceil(lh / ts);
      const c0 = clamp(Math.floor(x0 / ts), 0, cols - 1), c1 = clamp(Math.floor(x1 / ts), 0, cols - 1);
      const r0 = clamp(Math.floor(y0 / ts), 0, rows - 1), r1 = clamp(Math.floor(y1 / ts), 0, rows - 1);
      for (let r = r0; r <= r1; r++) {
        for (let c = c0; c <= c1; c++) {
          const key = l + "/" + c + "_" + r;
          const entry = this.cache.get(key);
          if (entry && entry.ok) {
            this.cache.delete(key); // re-insert: most recently used last
            this.cache.set(key, entry);
            const left = (c * ts - (c ? p.overlap : 0)) * f, up = (r * ts - (r ? p.overlap : 0)) * f;
            ctx.drawImage(entry.img, (left - view.ox) * view.s, (up - view.oy) * view.s,
              entry.img.naturalWidth * f * view.s, entry.img.naturalHeight * f * view.s);
          } else if (!entry && wanted) {
            wanted.push(key);
          }
        }
      }
    }

    /** Replace the pending requests by `keys` and start loads up to MAX_LOADS. */
    request(keys) {
      this.want = keys;
      this.pump();
    }

    pump() {
      while (this.loading < MAX_LOADS && this.want.length) {
        const key = this.want.shift();
        if (this.cache.has(key)) continue;
        const img = new Image();
        const entry = { img: img, ok: false };
        this.cache.set(key, entry);
        this.loading++;
        img.onload = () => { entry.ok = true; this.done(); };
        img.onerror = () => { this.done(); };
        img.src = this.p.url + key + "." + this.p.format;
      }
      this.evict();
    }

    done() {
      this.loading--;
      this.onLoad();
      this.pump();
    }

    /** True when no tile is loading or waiting. */
    idle() {
      return this.loading === 0 && this.want.length === 0;
    }

    evict() {
      for (const [key, entry] of this.cache) {
        if (this.cache.size <= CACHE_TILES) break;
        if (entry.ok && !key.startsWith(this.baseLevel + "/")) this.cache.delete(key);
      }
    }
  }

  /** The viewer on `canvas`; `show(slide, colormap)` displays a slide's data record. */
  class SlideViewer {
    constructor(canvas) {
      this.canvas = canvas;
      this.ctx = canvas.getContext("2d");
      this.slide = null;
      this.source = null;
      this.view = { ox: 0, oy: 0, s: 1 };
      this.overlay = true;
      this.opacity = 0.45;
      this.tissue = true;
      this.selected = -1;
      this.thumbs = [];
      this.fitted = false;
      this.frame = 0;
      new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
      this.listen();
    }

    /** Show `slide` (a data/slide_<n>.js record); `colormap`: 256 CSS colours. */
    show(slide, colormap) {
      this.slide = slide;
      this.colormap = colormap;
      this.selected = -1;
      this.thumbs = [];
      this.source = slide.pyramid ? new TileSource(slide.pyramid, () => this.requestDraw()) : null;
      this.buckets = bucketTiles(slide.tiles.percentile, colormap.length);
      this.resize();
      this.fit();
    }

    /** Paint tile `i`'s square into the gallery canvas `canvas` (kept up to date). */
    addThumb(canvas, i) {
      this.thumbs.push({ canvas: canvas, i: i });
      this.requestDraw();
    }

    resize() {
      const box = this.canvas.parentElement.getBoundingClientRect();
      this.dpr = window.devicePixelRatio || 1;
      this.w = Math.max(1, box.width);
      this.h = Math.max(1, box.height);
      this.canvas.width = Math.round(this.w * this.dpr);
      this.canvas.height = Math.round(this.h * this.dpr);
      this.canvas.style.width = this.w + "px";
      this.canvas.style.height = this.h + "px";
      if (this.fitted) this.fit();
      this.requestDraw();
    }

    fitScale() {
      const [W, H] = this.slide.level0;
      return Math.min(this.w / W, this.h / H) * 0.96;
    }

    /** Zoom limits in CSS px per level-0 px: a quarter of the fit, 4 px per finest px. */
    limits() {
      const finest = this.source ? this.source.p.downsample : 1;
      const fit = this.fitScale();
      return [fit / 4, Math.max(4 / finest, fit * 2)];
    }

    fit() {
      if (!this.slide) return;
      const [W, H] = this.slide.level0;
      const s = this.fitScale();
      this.view = { ox: W / 2 - this.w / (2 * s), oy: H / 2 - this.h / (2 * s), s: s };
      this.fitted = true;
      this.requestDraw();
    }

    /** Zoom by `k` keeping the level-0 point under canvas point (cx, cy) in place. */
    zoomAt(k, cx, cy) {
      if (!this.slide) return;
      const v = this.view, [lo, hi] = this.limits();
      const s = clamp(v.s * k, lo, hi);
      const px = v.ox + cx / v.s, py = v.oy + cy / v.s;
      this.setView(px - cx / s, py - cy / s, s);
    }

    /** Show the level-0 rectangle (x, y, w, h) as large as fits. */
    zoomToRect(x, y, w, h) {
      const [lo, hi] = this.limits();
      const s = clamp(Math.min(this.w / w, this.h / h), lo, hi);
      this.setView(x + w / 2 - this.w / (2 * s), y + h / 2 - this.h / (2 * s), s);
    }

    panBy(dx, dy) {
      const v = this.view;
      this.setView(v.ox - dx / v.s, v.oy - dy / v.s, v.s);
    }

    /** Set the view, keeping its centre on the slide; the view then stays put on resizes. */
    setView(ox, oy, s) {
      const [W, H] = this.slide.level0;
      this.fitted = false;
      const hw = this.w / (2 * s), hh = this.h / (2 * s);
      this.view = { ox: clamp(ox + hw, 0, W) - hw, oy: clamp(oy + hh, 0, H) - hh, s: s };
      this.requestDraw();
    }

    setOverlay(on) { this.overlay = on; this.requestDraw(); }
    setOpacity(a) { this.opacity = a; this.requestDraw(); }
    setTissue(on) { this.tissue = on; this.requestDraw(); }
    highlight(i) { this.selected = i; this.requestDraw(); }

    requestDraw() {
      if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.draw(); });
    }

    draw() {
      const ctx = this.ctx;
      ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
      ctx.clearRect(0, 0, this.w, this.h);
      if (!this.slide) return;
      const wanted = [];
      this.paintImage(ctx, this.view, this.w, this.h, wanted);
      if (this.overlay) this.paintOverlay(ctx, this.view, this.w, this.h);
      if (this.tissue) this.paintTissue(ctx, this.view);
      if (this.selected >= 0) this.paintSelection(ctx, this.view);
      this.paintScaleBar(ctx);
      for (const t of this.thumbs) this.paintThumb(t, wanted);
      if (this.source) this.source.request(wanted);
      const idle = !this.source || this.source.idle() ? "1" : "0";
      if (idle === "1" && this.canvas.dataset.idle !== "1") performance.mark("review:tiles-drawn");
      this.canvas.dataset.idle = idle;
    }

    paintImage(ctx, view, w, h, wanted) {
      const [W, H] = this.slide.level0;
      ctx.fillStyle = NO_IMAGE;
      ctx.fillRect((0 - view.ox) * view.s, (0 - view.oy) * view.s, W * view.s, H * view.s);
      if (this.source) this.source.paint(ctx, view, w, h, this.dpr, wanted);
      this.canvas.dataset.level = this.source ? this.source.levelFor(view.s * this.dpr) : "";
    }

    /** Tile squares bucketed by colour: one path and one fill per colour. */
    paintOverlay(ctx, view, w, h) {
      const t = this.slide.tiles, x1 = view.ox + w / view.s, y1 = view.oy + h / view.s;
      ctx.globalAlpha = this.opacity;
      for (let b = 0; b < this.buckets.length; b++) {
        const members = this.buckets[b];
        if (!members.length) continue;
        ctx.beginPath();
        for (const i of members) {
          const x = t.x[i], y = t.y[i], side = t.side[i];
          if (x > x1 || y > y1 || x + side < view.ox || y + side < view.oy) continue;
          ctx.rect((x - view.ox) * view.s, (y - view.oy) * view.s, side * view.s, side * view.s);
        }
        ctx.fillStyle = this.colormap[b];
        ctx.fill();
      }
      ctx.globalAlpha = 1;
    }

    paintTissue(ctx, view) {
      ctx.lineWidth = 1.5;
      for (const region of this.slide.tissue) {
        region.forEach((ring, k) => {
          ctx.beginPath();
          for (let j = 0; j < ring.length; j += 2) {
            ctx.lineTo((ring[j] - view.ox) * view.s, (ring[j + 1] - view.oy) * view.s);
          }
          ctx.closePath();
          ctx.strokeStyle = k ? "#1e5adc" : "#28a03c";
          ctx.stroke();
        });
      }
    }

    paintSelection(ctx, view) {
      const t = this.slide.tiles, i = this.selected;
      const x = (t.x[i] - view.ox) * view.s, y = (t.y[i] - view.oy) * view.s, d = t.side[i] * view.s;
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#ffffff";
      ctx.strokeRect(x - 2, y - 2, d + 4, d + 4);
      ctx.lineWidth = 1;
      ctx.strokeStyle = "#000000";
      ctx.strokeRect(x - 3.5, y - 3.5, d + 7, d + 7);
    }

    /** A bar of a round length in µm, about 100 CSS px long (only with a known µm/px). */
    paintScaleBar(ctx) {
      if (!this.slide.mpp) return;
      const umPerPx = this.slide.mpp / this.view.s;
      const raw = 100 * umPerPx, unit = Math.pow(10, Math.floor(Math.log10(raw)));
      const um = [5, 2, 1].map((m) => m * unit).find((v) => v <= raw);
      const len = um / umPerPx, x = 12, y = this.h - 14;
      ctx.fillStyle = "rgba(255,255,255,0.8)";
      ctx.fillRect(x - 6, y - 18, len + 12, 26);
      ctx.fillStyle = "#111";
      ctx.fillRect(x, y, len, 3);
      ctx.font = "12px sans-serif";
      ctx.fillText(um >= 1000 ? um / 1000 + " mm" : um + " µm", x, y - 5);
    }

    /** A gallery thumbnail: the tile's square from the pyramid, framed in its colour. */
    paintThumb(thumb, wanted) {
      const c = thumb.canvas, t = this.slide.tiles, i = thumb.i;
      const dpr = this.dpr, size = c.clientWidth || 96;
      if (c.width !== Math.round(size * dpr)) { c.width = c.height = Math.round(size * dpr); }
      const g = c.getContext("2d");
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      const view = { ox: t.x[i], oy: t.y[i], s: size / t.side[i] };
      g.fillStyle = NO_IMAGE;
      g.fillRect(0, 0, size, size);
      if (this.source) this.source.paint(g, view, size, size, dpr, wanted);
      g.lineWidth = 4;
      g.strokeStyle = this.colormap[Math.min(this.colormap.length - 1,
        Math.floor(t.percentile[i] / 100 * this.colormap.length))];
      g.strokeRect(2, 2, size - 4, size - 4);
    }

    listen() {
      const c = this.canvas;
      let drag = null;
      c.addEventListener("pointerdown", (e) => {
        c.setPointerCapture(e.pointerId);
        drag = { x: e.clientX, y: e.clientY };
        c.focus();
      });
      c.addEventListener("pointermove", (e) => {
        if (!drag) return;
        this.panBy(e.clientX - drag.x, e.clientY - drag.y);
        drag = { x: e.clientX, y: e.clientY };
      });
      const end = () => { drag = null; };
      c.addEventListener("pointerup", end);
      c.addEventListener("pointercancel", end);
      c.addEventListener("wheel", (e) => {
        e.preventDefault();
        const box = c.getBoundingClientRect(), unit = e.deltaMode ? 0.05 : 0.002;
        this.zoomAt(Math.exp(-e.deltaY * unit), e.clientX - box.left, e.clientY - box.top);
      }, { passive: false });
      c.addEventListener("dblclick", (e) => {
        const box = c.getBoundingClientRect();
        this.zoomAt(e.shiftKey ? 0.5 : 2, e.clientX - box.left, e.clientY - box.top);
      });
      c.addEventListener("keydown", (e) => this.onKey(e));
    }

    onKey(e) {
      const step = PAN_SHARE * Math.min(this.w, this.h);
      const actions = {
        ArrowLeft: () => this.panBy(step, 0), ArrowRight: () => this.panBy(-step, 0),
        ArrowUp: () => this.panBy(0, step), ArrowDown: () => this.panBy(0, -step),
        "+": () => this.zoomAt(KEY_ZOOM, this.w / 2, this.h / 2),
        "=": () => this.zoomAt(KEY_ZOOM, this.w / 2, this.h / 2),
        "-": () => this.zoomAt(1 / KEY_ZOOM, this.w / 2, this.h / 2),
        "0": () => this.fit(),
      };
      if (actions[e.key] && this.slide && !e.ctrlKey && !e.metaKey && !e.altKey) {
        e.preventDefault();
        actions[e.key]();
      }
    }
  }

  /** Tile indices grouped by colour: bucket b holds the tiles whose percentile maps to
   * colour b of an n-colour map. */
  function bucketTiles(percentile, n) {
    const buckets = Array.from({ length: n }, () => []);
    percentile.forEach((p, i) => buckets[Math.min(n - 1, Math.floor(p / 100 * n))].push(i));
    return buckets;
  }

  window.SlideViewer = SlideViewer;
})();
