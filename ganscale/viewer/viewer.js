// ganscale atlas viewer: a static page that works from file:// or a bucket. No network, no libraries.
// window.GANSCALE.manifest (inline in index.html) names the data files; each data file, loaded with a
// <script> tag, assigns its layer/grid into window.GANSCALE.data[file]. Cells are [iy, ix] with
// iy = 0 at the bottom of the picture, as in the report's atlases.
(function () {
  "use strict";
  const G = window.GANSCALE, M = G.manifest;
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const SIDE = 640, THUMB = 64, ICON = 96;  // CSS pixels: canvas, example thumbnails, icon in the details
  const view = { scale: 1, x: 0, y: 0 };
  const state = { data: null, iconImage: null, selected: null, hovered: null };
  let canvas, ctx;

  function load(file, done) {
    if (G.data[file]) return done(G.data[file]);
    const script = document.createElement("script");
    script.src = file;
    script.onload = () => done(G.data[file]);
    script.onerror = () => { $("status").textContent = "cannot load " + file; };
    document.head.appendChild(script);
  }

  const pair = () => [+$("a").value, +$("b").value];
  const iconsShown = () => $("mode").value === "icons" && state.data && state.data.icons && state.iconImage;
  const shade = (share) => Math.max(0, Math.min(255, Math.round(share * 255)));  // index into the colormap
  const colour = (share) => M.colormap[shade(share)];
  const dark = M.colormap.map((hex) => {  // colours that need white text
    const v = parseInt(hex.slice(1), 16);
    return 0.299 * (v >> 16) + 0.587 * ((v >> 8) & 255) + 0.114 * (v & 255) < 120;
  });

  function shares(k) {  // each dataset's share of its own total in cell k
    const d = state.data, [a, b] = pair();
    return [d.counts[a][k] / (d.totals[a] || 1), d.counts[b][k] / (d.totals[b] || 1)];
  }

  function draw() {
    const d = state.data;
    if (!d) return;
    const g = d.grid, cell = SIDE / g, dpr = canvas.width / SIDE, [a, b] = pair();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(dpr * view.scale, 0, 0, dpr * view.scale, dpr * view.x, dpr * view.y);
    const icons = iconsShown(), line = 1 / view.scale;
    ctx.imageSmoothingEnabled = true;
    for (let iy = 0; iy < g; iy++) for (let ix = 0; ix < g; ix++) {
      const k = iy * g + ix, [pa, pb] = shares(k), x = ix * cell, y = (g - 1 - iy) * cell;
      if (icons) {
        const s = d.icons.size;
        if (d.icons.cells[k]) ctx.drawImage(state.iconImage, ix * s, (g - 1 - iy) * s, s, s, x, y, cell, cell);
        else { ctx.fillStyle = "#f2f2f2"; ctx.fillRect(x, y, cell, cell); }
        if (pa + pb > 0) {
          ctx.strokeStyle = colour(pa / (pa + pb));
          ctx.lineWidth = Math.min(cell / 8, 3 * line);
          ctx.strokeRect(x + ctx.lineWidth / 2, y + ctx.lineWidth / 2, cell - ctx.lineWidth, cell - ctx.lineWidth);
        }
      } else {
        ctx.fillStyle = pa + pb > 0 ? colour(pa / (pa + pb)) : "#dddddd";
        ctx.fillRect(x, y, cell + line, cell + line);  // + line: no hairline seams between cells
      }
    }
    if (!icons && cell * view.scale >= 30) {  // counts, once cells are big enough to read them
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.font = `${10 / view.scale}px sans-serif`;
      for (let k = 0; k < g * g; k++) {
        const ca = d.counts[a][k], cb = d.counts[b][k];
        if (ca + cb === 0) continue;
        const [pa, pb] = shares(k);
        ctx.fillStyle = dark[shade(pa / (pa + pb))] ? "#ffffff" : "#000000";
        const x = (k % g + 0.5) * cell, y = (g - 1 - Math.floor(k / g) + 0.5) * cell;
        ctx.fillText(String(ca), x, y - 6 / view.scale);
        ctx.fillText(String(cb), x, y + 6 / view.scale);
      }
    }
    for (const [k, style] of [[state.hovered, "#555555"], [state.selected, "#000000"]]) {
      if (k === null) continue;
      ctx.strokeStyle = style;
      ctx.lineWidth = 2.5 * line;
      ctx.strokeRect((k % g) * cell, (g - 1 - Math.floor(k / g)) * cell, cell, cell);
    }
    const names = M.datasets;
    $("status").textContent = `${d.layer}, ${g}x${g}: KL(${names[a]}||${names[b]}) = ${d.kl[a][b].toFixed(4)}, ` +
      `KL(${names[b]}||${names[a]}) = ${d.kl[b][a].toFixed(4)}; ${names[a]} ${d.totals[a]} samples, ${names[b]} ${d.totals[b]}`;
  }

  function canvasPoint(event) {  // CSS pixels inside the canvas's content box (its border excluded)
    const rect = canvas.getBoundingClientRect();
    return [(event.clientX - rect.left - canvas.clientLeft) * SIDE / canvas.clientWidth,
      (event.clientY - rect.top - canvas.clientTop) * SIDE / canvas.clientHeight];
  }

  function cellAt(event) {
    if (!state.data) return null;
    const [px, py] = canvasPoint(event), g = state.data.grid, cell = SIDE / g;
    const x = (px - view.x) / view.scale, y = (py - view.y) / view.scale;
    const ix = Math.floor(x / cell), iy = g - 1 - Math.floor(y / cell);
    return ix >= 0 && ix < g && iy >= 0 && iy < g ? iy * g + ix : null;
  }

  function crop(src, sheetWidth, left, top, width, height, zoom, cls, extra) {  // a window onto a sprite sheet
    return `<span class="${cls}" style="width:${width * zoom}px;height:${height * zoom}px"><img src="${esc(src)}" alt="" ` +
      `style="left:${-left * zoom}px;top:${-top * zoom}px;width:${sheetWidth * zoom}px">${extra || ""}</span>`;
  }

  function exampleHtml(dataset, [index, y0, x0, y1, x1, sample]) {
    const s = M.sprites[dataset], t = s.thumb, slot = index % s.per_sheet, file = s.files[Math.floor(index / s.per_sheet)];
    const left = (slot % s.columns) * t, top = Math.floor(slot / s.columns) * t, f = THUMB / t;
    const box = `<span class="box" style="left:${x0 * f}px;top:${y0 * f}px;width:${(x1 - x0) * f}px;height:${(y1 - y0) * f}px"></span>`;
    const w = x1 - x0, h = y1 - y0, z = THUMB / Math.max(w, h);
    return `<span class="example" data-sample="${sample}" title="${esc(M.datasets[dataset])} sample ${sample}"><span class="pairing">` +
      crop(file, s.columns * t, left, top, t, t, f, "thumb", box) +
      crop(file, s.columns * t, left + x0, top + y0, w, h, z, "patch") + `</span>#${sample}</span>`;
  }

  function details(k) {
    const d = state.data, box = $("details");
    if (!d || k === null) { box.innerHTML = ""; return; }
    const g = d.grid, iy = Math.floor(k / g), ix = k % g, [a, b] = pair(), names = M.datasets;
    let out = `<h3>${esc(d.layer)}, ${g}x${g}: cell iy ${iy}, ix ${ix}${state.selected === k ? " (pinned)" : ""}</h3>` +
      `<table class="cell-counts"><tr><th>dataset</th><th>samples</th><th>share of dataset</th><th>top labels (count)</th></tr>`;
    names.forEach((name, i) => {
      const labels = d.top_labels[i][k].map((l, j) => l < 0 ? null : `${esc(M.class_names[l] ?? l)} (${d.label_counts[i][k][j]})`)
        .filter((x) => x !== null).join(", ");
      out += `<tr data-dataset="${esc(name)}"><td>${esc(name)}</td><td class="count">${d.counts[i][k]}</td>` +
        `<td class="share">${(100 * d.counts[i][k] / (d.totals[i] || 1)).toFixed(2)}%</td><td class="labels">${labels || "-"}</td></tr>`;
    });
    out += "</table>";
    const term = (p, q) => d.kl_cells[p + "_" + q][k];
    const part = (p, q) => d.kl[p][q] > 0 ? ` (${(100 * term(p, q) / d.kl[p][q]).toFixed(1)}% of ${d.kl[p][q].toFixed(4)})` : "";
    if (a !== b) {
      out += `<p class="kl">KL term of this cell: KL(${esc(names[a])}||${esc(names[b])}) <b class="kl-ab">${term(a, b).toExponential(3)}</b>` +
        `${part(a, b)}; KL(${esc(names[b])}||${esc(names[a])}) <b class="kl-ba">${term(b, a).toExponential(3)}</b>${part(b, a)}</p>`;
    } else {
      out += `<p class="kl">Choose two different datasets for the KL terms.</p>`;
    }
    const ic = d.icons;
    if (ic) {
      if (ic.cells[k]) {
        const z = ICON / ic.size, objective = ic.objective[k];
        out += `<div class="cell-icon"><b>icon</b>` + crop(ic.file, g * ic.size, ix * ic.size, (g - 1 - iy) * ic.size,
          ic.size, ic.size, z, "icon") + `<span>${objective === null ? "" : `objective ${+objective.toPrecision(4)}`}</span></div>`;
      } else {
        out += `<p class="none">no icon for this cell</p>`;
      }
    }
    names.forEach((name, i) => {
      const shown = d.examples[i][k], all = d.example_ids[i][k];
      if (!all.length) return;
      out += `<div class="examples" data-dataset="${esc(name)}"><span class="name">${esc(name)}</span>` +
        shown.map((e) => exampleHtml(i, e)).join("");
      const rest = all.filter((s) => !shown.some((e) => e[5] === s));
      if (rest.length) out += `<span class="none"> not drawn: sample ${rest.join(", ")}</span>`;
      out += "</div>";
    });
    box.innerHTML = out;
  }

  function hover(k) {
    const d = state.data;
    if (k === state.hovered) return;
    state.hovered = k;
    if (k === null || !d) { $("hover").textContent = ""; } else {
      const [a, b] = pair(), g = d.grid;
      $("hover").textContent = `cell iy ${Math.floor(k / g)}, ix ${k % g}: ` +
        M.datasets.map((n, i) => `${n} ${d.counts[i][k]}`).join(", ") +
        (a !== b ? `; KL term ${d.kl_cells[a + "_" + b][k].toExponential(2)}` : "");
    }
    if (state.selected === null) details(k);
    draw();
  }

  function select(k) {
    state.selected = k === state.selected ? null : k;
    details(state.selected ?? state.hovered);
    draw();
  }

  function show() {
    const layer = $("layer").value, grid = $("grid").value;
    load(M.files[layer][grid], (d) => {
      if ($("layer").value !== layer || $("grid").value !== grid) return;  // the choice changed meanwhile
      state.data = d;
      state.selected = state.hovered = null;
      state.iconImage = null;
      const option = $("mode").querySelector("option[value=icons]");
      option.disabled = option.hidden = !d.icons;
      if (!d.icons) $("mode").value = "density";
      if (d.icons) {
        const image = new Image();
        image.onload = () => { if (state.data === d) { state.iconImage = image; draw(); } };
        image.src = d.icons.file;
      }
      details(null);
      draw();
    });
  }

  function legend() {
    const [a, b] = pair();
    $("legend-a").textContent = M.datasets[a];
    $("legend-b").textContent = M.datasets[b];
    const stops = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1].map((s) => colour(s)).join(",");
    $("legend-bar").style.background = `linear-gradient(to right, ${stops})`;
  }

  function zoom(factor, event) {
    const [px, py] = event ? canvasPoint(event) : [SIDE / 2, SIDE / 2];
    const scale = Math.max(0.5, Math.min(64, view.scale * factor));
    view.x = px - (px - view.x) * scale / view.scale;
    view.y = py - (py - view.y) * scale / view.scale;
    view.scale = scale;
    draw();
  }

  function init() {
    canvas = $("atlas");
    const dpr = Math.max(1, Math.min(3, window.devicePixelRatio || 1));
    canvas.width = canvas.height = Math.round(SIDE * dpr);
    ctx = canvas.getContext("2d");
    const fill = (id, items, byIndex) => {
      $(id).innerHTML = items.map((v, i) => `<option value="${esc(byIndex ? i : v)}">${esc(v)}</option>`).join("");
    };
    fill("layer", M.layers); fill("grid", M.grids); fill("a", M.datasets, true); fill("b", M.datasets, true);
    $("b").value = M.datasets.length > 1 ? 1 : 0;
    ["layer", "grid"].forEach((id) => $(id).addEventListener("change", show));
    ["a", "b", "mode"].forEach((id) => $(id).addEventListener("change", () => {
      legend(); details(state.selected ?? state.hovered); draw();
    }));
    const drag = { on: false, moved: false, x: 0, y: 0 };
    canvas.addEventListener("mousedown", (e) => { drag.on = true; drag.moved = false; drag.x = e.clientX; drag.y = e.clientY; });
    window.addEventListener("mouseup", () => { drag.on = false; canvas.classList.remove("dragging"); });
    window.addEventListener("mousemove", (e) => {
      if (!drag.on) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (!drag.moved && Math.abs(dx) + Math.abs(dy) <= 3) return;
      drag.moved = true;
      canvas.classList.add("dragging");
      view.x += dx * SIDE / canvas.clientWidth; view.y += dy * SIDE / canvas.clientHeight;
      drag.x = e.clientX; drag.y = e.clientY;
      draw();
    });
    canvas.addEventListener("mousemove", (e) => { if (!drag.on) hover(cellAt(e)); });
    canvas.addEventListener("mouseleave", () => hover(null));
    canvas.addEventListener("click", (e) => { if (!drag.moved) { const k = cellAt(e); if (k !== null) select(k); } });
    canvas.addEventListener("wheel", (e) => { e.preventDefault(); zoom(e.deltaY < 0 ? 1.25 : 0.8, e); }, { passive: false });
    window.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.selected !== null) select(state.selected); });
    $("zoom-in").onclick = () => zoom(1.5);
    $("zoom-out").onclick = () => zoom(1 / 1.5);
    $("reset").onclick = () => { view.scale = 1; view.x = 0; view.y = 0; draw(); };
    legend();
    show();
  }

  window.addEventListener("DOMContentLoaded", init);
})();
