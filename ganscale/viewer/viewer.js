// ganscale atlas viewer: a static page (works from file:// or a bucket). Data files assign into
// window.GANSCALE.data[key]; key = layer + "_g" + grid. No network, no libraries.
(function () {
  const G = window.GANSCALE;
  const $ = (id) => document.getElementById(id);
  let canvas, ctx;
  const view = { scale: 1, x: 0, y: 0 };
  let current = null, selected = null, iconImage = null;

  function load(key, done) {
    if (G.data[key]) return done(G.data[key]);
    const script = document.createElement("script");
    script.src = "data/" + key + ".js";
    script.onload = () => done(G.data[key]);
    script.onerror = () => { $("status").textContent = "cannot load data/" + key + ".js"; };
    document.head.appendChild(script);
  }

  function shareColour(share) {  // red where a is over-represented, blue where b is (RdBu)
    const t = Math.max(-1, Math.min(1, 2 * share - 1));
    const w = 1 - Math.abs(t);
    return t > 0 ? `rgb(${200 + 55 * w},${40 + 215 * w},${40 + 215 * w})` : `rgb(${40 + 215 * w},${90 + 165 * w},${200 + 55 * w})`;
  }

  function pair() { return [+$("a").value, +$("b").value]; }

  function draw() {
    if (!current) return;
    const d = current, g = d.grid, size = canvas.width, cell = size / g;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, size, size);
    ctx.setTransform(view.scale, 0, 0, view.scale, view.x, view.y);
    const [a, b] = pair();
    const ta = d.totals[a] || 1, tb = d.totals[b] || 1;
    const mode = $("mode").value;
    if (mode === "icons" && iconImage) ctx.drawImage(iconImage, 0, 0, size, size);
    for (let iy = 0; iy < g; iy++) for (let ix = 0; ix < g; ix++) {
      const k = iy * g + ix, pa = d.counts[a][k] / ta, pb = d.counts[b][k] / tb;
      const x = ix * cell, y = (g - 1 - iy) * cell;
      if (mode === "icons" && iconImage) {
        if (pa + pb > 0) { ctx.strokeStyle = shareColour(pa / (pa + pb)); ctx.lineWidth = 2 / view.scale; ctx.strokeRect(x + 1, y + 1, cell - 2, cell - 2); }
        continue;
      }
      ctx.fillStyle = pa + pb > 0 ? shareColour(pa / (pa + pb)) : "#dddddd";
      ctx.fillRect(x, y, cell + 0.5, cell + 0.5);
    }
    if (selected !== null) {
      const ix = selected % g, iy = Math.floor(selected / g);
      ctx.strokeStyle = "#000"; ctx.lineWidth = 2 / view.scale;
      ctx.strokeRect(ix * cell, (g - 1 - iy) * cell, cell, cell);
    }
    $("status").textContent = `${d.layer}, ${g}x${g}: KL(${d.datasets[a]}||${d.datasets[b]}) = ${d.kl[a][b].toFixed(4)}, ` +
      `KL(${d.datasets[b]}||${d.datasets[a]}) = ${d.kl[b][a].toFixed(4)}`;
  }

  function cellAt(event) {
    const rect = canvas.getBoundingClientRect();
    const px = (event.clientX - rect.left) * canvas.width / rect.width, py = (event.clientY - rect.top) * canvas.height / rect.height;
    const x = (px - view.x) / view.scale, y = (py - view.y) / view.scale, g = current.grid, cell = canvas.width / g;
    const ix = Math.floor(x / cell), iy = g - 1 - Math.floor(y / cell);
    return ix >= 0 && ix < g && iy >= 0 && iy < g ? iy * g + ix : null;
  }

  function details(k) {
    const d = current, [a, b] = pair(), box = $("details");
    if (k === null) { box.innerHTML = ""; return; }
    const g = d.grid, iy = Math.floor(k / g), ix = k % g;
    let html = `<h3>cell (iy ${iy}, ix ${ix})</h3><table><tr><th>dataset</th><th>count</th><th>top labels</th></tr>`;
    d.datasets.forEach((name, i) => {
      const labels = d.top_labels[i][k].map((l, j) => l < 0 ? "" : `${d.class_names[l] ?? l} (${d.label_counts[i][k][j]})`).filter(Boolean).join(", ");
      html += `<tr class="counts"><td>${name}</td><td data-dataset="${name}">${d.counts[i][k]}</td><td>${labels}</td></tr>`;
    });
    html += `</table><p class="kl">KL term (${d.datasets[a]}||${d.datasets[b]}): <b>${d.kl_cells[a + "_" + b][k].toExponential(3)}</b>; ` +
      `(${d.datasets[b]}||${d.datasets[a]}): ${d.kl_cells[b + "_" + a][k].toExponential(3)}</p>`;
    if (d.icons && d.icon_cells[k]) html += `<p>icon: <span class="icon" style="background-image:url(${d.icons});background-size:${g * 64}px ${g * 64}px;background-position:-${ix * 64}px -${(g - 1 - iy) * 64}px"></span></p>`;
    d.datasets.forEach((name, i) => {
      const examples = (d.examples[i][k] || []);
      if (!examples.length) return;
      html += `<div class="examples"><b>${name}</b> `;
      for (const [index, y0, x0, y1, x1] of examples) {
        const s = d.sprites[i], t = s.thumb, col = index % s.columns, row = Math.floor(index / s.columns), f = 64 / t;
        html += `<span class="thumb" style="background-image:url(${s.file});background-size:${s.columns * 64}px auto;` +
          `background-position:-${col * 64}px -${row * 64}px"><span class="patch" style="left:${x0 * f}px;top:${y0 * f}px;` +
          `width:${(x1 - x0) * f}px;height:${(y1 - y0) * f}px"></span></span>`;
      }
      html += "</div>";
    });
    box.innerHTML = html;
  }

  function show() {
    const key = $("layer").value + "_g" + $("grid").value;
    load(key, (d) => {
      current = d; selected = null; details(null);
      iconImage = null;
      $("mode").disabled = !d.icons;
      if (d.icons) { iconImage = new Image(); iconImage.onload = draw; iconImage.src = d.icons; } else { $("mode").value = "density"; }
      draw();
    });
  }

  function init() {
    canvas = $("atlas");
    ctx = canvas.getContext("2d");
    const m = G.manifest;
    const fill = (id, items, label) => { $(id).innerHTML = items.map((v, i) => `<option value="${label ? i : v}">${v}</option>`).join(""); };
    fill("layer", m.layers); fill("grid", m.grids); fill("a", m.datasets, true); fill("b", m.datasets, true);
    $("b").value = m.datasets.length > 1 ? 1 : 0;
    ["layer", "grid"].forEach((id) => $(id).addEventListener("change", show));
    ["a", "b", "mode"].forEach((id) => $(id).addEventListener("change", () => { draw(); details(selected); }));
    canvas.addEventListener("click", (e) => { if (!drag.moved) { selected = cellAt(e); draw(); details(selected); } });
    canvas.addEventListener("mousemove", (e) => { const k = cellAt(e); if (current && k !== null) $("hover").textContent = "cell " + Math.floor(k / current.grid) + ", " + (k % current.grid) + ": " + current.datasets.map((n, i) => n + " " + current.counts[i][k]).join(", "); });
    canvas.addEventListener("wheel", (e) => { e.preventDefault(); zoom(e.deltaY < 0 ? 1.25 : 0.8, e); }, { passive: false });
    const drag = { on: false, moved: false };
    canvas.addEventListener("mousedown", (e) => { drag.on = true; drag.moved = false; drag.x = e.clientX; drag.y = e.clientY; });
    window.addEventListener("mouseup", () => { drag.on = false; });
    window.addEventListener("mousemove", (e) => {
      if (!drag.on) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.moved) { view.x += dx; view.y += dy; drag.x = e.clientX; drag.y = e.clientY; draw(); }
    });
    $("zoom-in").onclick = () => zoom(1.5); $("zoom-out").onclick = () => zoom(1 / 1.5);
    $("reset").onclick = () => { view.scale = 1; view.x = 0; view.y = 0; draw(); };
    show();
  }

  function zoom(factor, event) {
    const rect = canvas.getBoundingClientRect();
    const px = event ? (event.clientX - rect.left) * canvas.width / rect.width : canvas.width / 2;
    const py = event ? (event.clientY - rect.top) * canvas.height / rect.height : canvas.height / 2;
    view.x = px - (px - view.x) * factor; view.y = py - (py - view.y) * factor; view.scale *= factor;
    draw();
  }

  window.addEventListener("DOMContentLoaded", init);
})();
