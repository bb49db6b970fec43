// Graph page: an attribution-graph explorer on one canvas. Nodes sit by layer (rows, embeddings at the bottom,
// logits at the top) × position (columns); edges are drawn strongest first, culled to the view and batched into
// one path per colour/width bucket, so a 20,000-node / 100,000-edge graph pans at frame rate.
import { api, ApiError, NextTokenView } from "./api";
import { el, latestOnly, pct, query, setQuery, show } from "./dom";
import type { PageContext } from "./main";
import { graphJobForm } from "./graphJob";

interface ArtifactView { id: string; name: string; kind: string; bytes: number; modified: string }
interface CompactGraph {
  id: string; name: string; slug: string; prompt_tokens: string[]; token_ids: number[]; layers: number;
  nodes: { node_id: string[]; kind: number[]; layer: number[]; position: number[]; feature: number[]; activation: number[]; influence: number[]; token_prob: number[]; clerp: string[] };
  edges: { source: number[]; target: number[]; weight: number[] };
}
interface Capabilities { interventions: boolean; transcoder_layers: number; feature_stores: { name: string; hook: string; d_sae: number }[] }
interface Dashboard { store: string; layer: number; feature: number; density: number; max_act: number; explanation: string | null; examples: { activation: number; tokens: string[]; acts: number[]; focus: number }[] }
interface InterventionView { before: NextTokenView[]; after: NextTokenView[]; tokens: { id: number; text: string; before: number | null; after: number | null; delta_logit: number }[] }

const TOKEN = 0, FEATURE = 1, ERROR = 2, LOGIT = 3;
const KIND_NAMES = ["token", "feature", "error", "logit"];
const KIND_COLOURS = ["#6b7280", "#2f855a", "#a0aec0", "#d69e2e"];
const COL_W = 80, MIN_ROW_H = 40;
/** The most edges drawn per frame (strongest first); zooming in shows the rest. */
const MAX_DRAWN_EDGES = 8000;
const LEVELS = 4;
const WIDTHS = [0.5, 0.9, 1.5, 2.4];
const ALPHAS = [0.14, 0.28, 0.5, 0.8];

/** The graph with its layout, in typed arrays. */
class Model {
  n: number; m: number; rows: number; positions: number;
  kind: Uint8Array; layer: Int16Array; pos: Int32Array; x: Float32Array; y: Float32Array;
  src: Int32Array; dst: Int32Array; w: Float32Array; level: Uint8Array; order: Uint32Array; maxAbs: number;
  outStart: Int32Array; outEdges: Int32Array; inStart: Int32Array; inEdges: Int32Array;
  idIndex = new Map<string, number>();
  grid: { size: number; cols: number; rows: number; start: Int32Array; items: Int32Array };

  rowH: number;

  /** aspect: the plot's height / width, so the graph fills it (rows grow taller, never shorter than MIN_ROW_H). */
  constructor(public g: CompactGraph, aspect = 0.65) {
    const nodes = g.nodes, n = nodes.kind.length, m = g.edges.source.length;
    this.n = n; this.m = m;
    this.kind = Uint8Array.from(nodes.kind);
    this.layer = Int16Array.from(nodes.layer);
    this.pos = Int32Array.from(nodes.position);
    this.rows = g.layers + 2;
    let maxPos = g.token_ids.length - 1;
    for (let i = 0; i < n; i++) if (this.pos[i] > maxPos) maxPos = this.pos[i];
    this.positions = maxPos + 1;
    for (let i = 0; i < n; i++) this.idIndex.set(nodes.node_id[i], i);
    this.rowH = Math.max(MIN_ROW_H, this.positions * COL_W * aspect / this.rows);
    this.x = new Float32Array(n); this.y = new Float32Array(n);
    this.layout();
    this.src = Int32Array.from(g.edges.source); this.dst = Int32Array.from(g.edges.target); this.w = Float32Array.from(g.edges.weight);
    let maxAbs = 0;
    for (let e = 0; e < m; e++) maxAbs = Math.max(maxAbs, Math.abs(this.w[e]));
    this.maxAbs = maxAbs || 1;
    this.level = new Uint8Array(m);
    // Levels on a square-root scale: attribution weights span orders of magnitude.
    for (let e = 0; e < m; e++) this.level[e] = Math.min(LEVELS - 1, Math.floor(Math.sqrt(Math.abs(this.w[e]) / this.maxAbs) * LEVELS));
    const abs = new Float32Array(m);
    for (let e = 0; e < m; e++) abs[e] = -Math.abs(this.w[e]);
    this.order = new Uint32Array(m);
    for (let e = 0; e < m; e++) this.order[e] = e;
    this.order.sort((a, b) => abs[a] - abs[b]);
    [this.outStart, this.outEdges] = csr(n, this.src, this.order);
    [this.inStart, this.inEdges] = csr(n, this.dst, this.order);
    this.grid = this.buildGrid();
  }

  rowOf(i: number): number { return this.kind[i] === TOKEN ? 0 : this.kind[i] === LOGIT ? this.rows - 1 : this.layer[i] + 1; }

  // Each layer × position cell holds its nodes in a small grid, the most influential first.
  private layout(): void {
    const cells = new Map<number, number[]>();
    for (let i = 0; i < this.n; i++) {
      const key = this.rowOf(i) * this.positions + this.pos[i];
      let list = cells.get(key);
      if (!list) cells.set(key, list = []);
      list.push(i);
    }
    const infl = this.g.nodes.influence;
    for (const [key, list] of cells) {
      list.sort((a, b) => Math.abs(infl[b]) - Math.abs(infl[a]) || a - b);
      const row = Math.floor(key / this.positions), p = key % this.positions;
      const cx = (p + 0.5) * COL_W, cy = (this.rows - 1 - row + 0.5) * this.rowH;
      const perRow = Math.max(1, Math.ceil(Math.sqrt(list.length * 1.6)));
      const lines = Math.ceil(list.length / perRow);
      const sx = (COL_W * 0.8) / perRow, sy = Math.min(16, (this.rowH * 0.7) / lines);
      list.forEach((i, k) => {
        this.x[i] = cx - COL_W * 0.4 + (k % perRow + 0.5) * sx;
        this.y[i] = cy - (lines * sy) / 2 + (Math.floor(k / perRow) + 0.5) * sy;
      });
    }
  }

  private buildGrid() {
    const size = 12, cols = Math.ceil(this.positions * COL_W / size) + 1, rows = Math.ceil(this.rows * this.rowH / size) + 1;
    const cellOf = new Int32Array(this.n), count = new Int32Array(cols * rows + 1);
    for (let i = 0; i < this.n; i++) {
      const c = Math.min(rows - 1, Math.max(0, Math.floor(this.y[i] / size))) * cols + Math.min(cols - 1, Math.max(0, Math.floor(this.x[i] / size)));
      cellOf[i] = c; count[c + 1]++;
    }
    for (let c = 0; c < cols * rows; c++) count[c + 1] += count[c];
    const fill = count.slice(), items = new Int32Array(this.n);
    for (let i = 0; i < this.n; i++) items[fill[cellOf[i]]++] = i;
    return { size, cols, rows, start: count, items };
  }

  /** The nearest node within r (world units) of (x, y), or −1. */
  nearest(x: number, y: number, r: number): number {
    const { size, cols, rows, start, items } = this.grid;
    let best = -1, bestD = r * r;
    for (let gy = Math.max(0, Math.floor((y - r) / size)); gy <= Math.min(rows - 1, Math.floor((y + r) / size)); gy++)
      for (let gx = Math.max(0, Math.floor((x - r) / size)); gx <= Math.min(cols - 1, Math.floor((x + r) / size)); gx++) {
        const c = gy * cols + gx;
        for (let k = start[c]; k < start[c + 1]; k++) {
          const i = items[k], d = (this.x[i] - x) ** 2 + (this.y[i] - y) ** 2;
          if (d <= bestD) { bestD = d; best = i; }
        }
      }
    return best;
  }

  tokenText(p: number): string { return this.g.prompt_tokens[p] ?? `#${p}`; }

  label(i: number): string {
    const nodes = this.g.nodes, p = this.pos[i];
    switch (this.kind[i]) {
      case FEATURE: return `L${this.layer[i]} F${nodes.feature[i]} @${p}`;
      case ERROR: return `error L${this.layer[i]} @${p}`;
      case TOKEN: return `token ${show(this.tokenText(p))} @${p}`;
      default: return nodes.clerp[i] || `logit ${nodes.feature[i]}`;
    }
  }
}

/** Compressed adjacency: for each node, its edges (strongest first). */
function csr(n: number, endpoint: Int32Array, order: Uint32Array): [Int32Array, Int32Array] {
  const start = new Int32Array(n + 1);
  for (let e = 0; e < endpoint.length; e++) start[endpoint[e] + 1]++;
  for (let i = 0; i < n; i++) start[i + 1] += start[i];
  const fill = start.slice(0, n), edges = new Int32Array(endpoint.length);
  for (const e of order) edges[fill[endpoint[e]]++] = e;
  return [start, edges];
}

interface Supernode { name: string; members: number[] }

function parseSupernodes(model: Model, text: string | null): Supernode[] {
  if (!text) return [];
  return text.split(";").map(part => {
    const [name, ids] = part.split(":");
    return { name: decodeURIComponent(name ?? ""), members: (ids ?? "").split(",").map(id => model.idIndex.get(id) ?? -1).filter(i => i >= 0) };
  }).filter(s => s.name && s.members.length > 0);
}

function formatSupernodes(model: Model, list: Supernode[]): string | null {
  if (list.length === 0) return null;
  return list.map(s => `${encodeURIComponent(s.name).replace(/%20/g, " ")}:${s.members.map(i => model.g.nodes.node_id[i]).join(",")}`).join(";");
}

export function graphPage(ctx: PageContext): void {
  const select = el("select", { "data-testid": "graph-select", "aria-label": "graph" });
  const status = el("p", { class: "status", "data-testid": "graph-status", "aria-live": "polite" }, "Loading the workspace…");
  const body = el("div", {});
  const trace = el("div", {});
  ctx.root.append(el("h1", {}, "Graph"), trace, el("div", { class: "graph-toolbar" }, el("label", {}, "Graph ", select)), status, body);
  graphJobForm(trace, () => { ctx.root.replaceChildren(); graphPage(ctx); });
  Promise.all([api<ArtifactView[]>("/api/artifacts"), api<Capabilities>("/api/graph/capabilities")]).then(([artifacts, caps]) => {
    const graphs = artifacts.filter(a => a.kind === "graph");
    if (graphs.length === 0) { status.textContent = "No graphs in the workspace: start the server with --graphs DIR holding graph JSON (loupe attribute writes it)."; return; }
    for (const a of graphs) select.append(el("option", { value: a.id }, `${a.name} (${(a.bytes / 1e6).toFixed(1)} MB)`));
    const wanted = query().get("graph");
    select.value = graphs.some(a => a.id === wanted) ? wanted! : graphs[0].id;
    const open = (id: string) => {
      status.textContent = "Loading the graph…";
      body.replaceChildren();
      const t0 = performance.now();
      api<CompactGraph>(`/api/graph/${id}`).then(g => {
        const t1 = performance.now(), model = new Model(g, (620 - 42) / Math.max(400, Math.min(1400, body.clientWidth || 1000) - 400 - 64)), t2 = performance.now();
        explorer(body, status, model, caps);
        const canvas = body.querySelector("canvas");
        if (canvas) { canvas.dataset.fetchMs = (t1 - t0).toFixed(0); canvas.dataset.buildMs = (t2 - t1).toFixed(0); canvas.dataset.fetchStart = t0.toFixed(0); }
      }, e => { status.textContent = String(e.message ?? e); });
    };
    select.addEventListener("change", () => { setQuery({ graph: select.value, pin: null, sn: null }, true); open(select.value); });
    open(select.value);
  }, e => { status.textContent = String(e.message ?? e); });
}

function explorer(body: HTMLElement, status: HTMLElement, model: Model, caps: Capabilities): void {
  const g = model.g;
  setQuery({ graph: g.id });
  const width = Math.max(480, Math.min(1400, body.clientWidth || 1000) - 400), height = 620;
  const ratio = window.devicePixelRatio || 1;
  const canvas = el("canvas", { tabindex: "0", role: "application", "data-testid": "graph-canvas",
    "aria-label": "attribution graph: arrow keys move between nodes, Enter pins, shift-click or shift-drag selects, drag pans, wheel zooms" });
  canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
  canvas.style.width = `${width}px`; canvas.style.height = `${height}px`;
  const c = canvas.getContext("2d", { alpha: false })!;
  const tip = el("div", { class: "graph-tip", "data-testid": "graph-tip", hidden: true });
  const details = el("div", { class: "panel graph-details", "data-testid": "node-details" }, el("p", { class: "muted" }, "Hover a node for its details; click (or Enter) pins it."));
  const groupName = el("input", { "data-testid": "group-name", placeholder: "supernode name", "aria-label": "supernode name" });
  const groupButton = el("button", { "data-testid": "group", type: "button" }, "Group selection");
  const clearButton = el("button", { type: "button" }, "Clear selection");
  const fitButton = el("button", { type: "button" }, "Fit");
  const selectionInfo = el("span", { class: "muted", "data-testid": "selection" }, "no selection (shift-click or shift-drag)");
  const superList = el("div", { "data-testid": "supernodes" });
  body.append(
    el("div", { class: "graph-toolbar" }, groupName, groupButton, clearButton, fitButton, selectionInfo),
    el("div", { class: "graph-layout" }, el("div", { class: "graph-stage" }, canvas, tip), el("aside", { class: "graph-side" }, superList, details)));

  // View: screen = world · scale + offset. Margins leave room for row labels (left) and tokens (bottom).
  const LEFT = 56, BOTTOM = 34;
  let scale = 1, ox = 0, oy = 0;
  const fit = () => {
    scale = Math.min((width - LEFT - 8) / (model.positions * COL_W), (height - BOTTOM - 8) / (model.rows * model.rowH));
    ox = LEFT + Math.max(0, (width - LEFT - 8 - model.positions * COL_W * scale) / 2);
    oy = height - BOTTOM - 4 - model.rows * model.rowH * scale;
  };
  fit();

  let hovered = -1, pinned = model.idIndex.get(query().get("pin") ?? "") ?? -1, focus = pinned;
  const selection = new Set<number>();
  let supernodes = parseSupernodes(model, query().get("sn"));
  let band: { x0: number; y0: number; x1: number; y1: number } | null = null;
  let drawnEdges = 0, pending = false, firstRender = true;
  const t0 = performance.now();

  const schedule = () => { if (!pending) { pending = true; requestAnimationFrame(draw); } };

  // The edges and nodes are drawn into a bitmap larger than the view (MARGIN on each side); panning blits it, zooming
  // scales it until the wheel settles, and it is redrawn only when the view leaves it. Overlays (hover, pin,
  // selection, supernodes) are drawn on top every frame.
  const MARGIN = 320;
  const base = document.createElement("canvas");
  base.width = Math.round((width + 2 * MARGIN) * ratio); base.height = Math.round((height + 2 * MARGIN) * ratio);
  const b = base.getContext("2d", { alpha: false })!;
  let baseValid = false, baseScale = 1, baseOx = 0, baseOy = 0, zooming = 0;

  function renderBase(): void {
    baseScale = scale; baseOx = ox; baseOy = oy; baseValid = true;
    b.setTransform(ratio, 0, 0, ratio, MARGIN * ratio, MARGIN * ratio);
    b.fillStyle = "#ffffff"; b.fillRect(-MARGIN, -MARGIN, width + 2 * MARGIN, height + 2 * MARGIN);
    const vx0 = (-MARGIN - ox) / scale, vx1 = (width + MARGIN - ox) / scale, vy0 = (-MARGIN - oy) / scale, vy1 = (height + MARGIN - oy) / scale;
    for (let r = 0; r < model.rows; r += 2) {
      const y = (model.rows - 1 - r) * model.rowH * scale + oy;
      b.fillStyle = "#f6f7f9"; b.fillRect(-MARGIN, y, width + 2 * MARGIN, model.rowH * scale);
    }
    // Edges: strongest first, culled, one path per sign × level.
    const paths: Path2D[] = Array.from({ length: 2 * LEVELS }, () => new Path2D());
    const { src, dst, x, y, order, level, w } = model;
    drawnEdges = 0;
    for (let k = 0; k < order.length && drawnEdges < MAX_DRAWN_EDGES; k++) {
      const e = order[k], i = src[e], j = dst[e];
      const x1 = x[i], y1 = y[i], x2 = x[j], y2 = y[j];
      if ((x1 < vx0 && x2 < vx0) || (x1 > vx1 && x2 > vx1) || (y1 < vy0 && y2 < vy0) || (y1 > vy1 && y2 > vy1)) continue;
      const p = paths[(w[e] >= 0 ? 0 : LEVELS) + level[e]];
      p.moveTo(x1 * scale + ox, y1 * scale + oy);
      p.lineTo(x2 * scale + ox, y2 * scale + oy);
      drawnEdges++;
    }
    // Weakest level first, both signs per level, so the strongest edges end on top whatever their sign.
    for (let l = 0; l < LEVELS; l++)
      for (let sgn = 0; sgn < 2; sgn++) {
        b.strokeStyle = sgn === 0 ? `rgba(43,108,176,${ALPHAS[l]})` : `rgba(197,48,48,${ALPHAS[l]})`;
        b.lineWidth = WIDTHS[l];
        b.stroke(paths[sgn * LEVELS + l]);
      }
    // Nodes: one path per kind.
    const radius = nodeRadius();
    const nodePaths = KIND_NAMES.map(() => new Path2D());
    for (let i = 0; i < model.n; i++) {
      if (x[i] < vx0 || x[i] > vx1 || y[i] < vy0 || y[i] > vy1) continue;
      nodePaths[model.kind[i]].rect(x[i] * scale + ox - radius, y[i] * scale + oy - radius, 2 * radius, 2 * radius);
    }
    nodePaths.forEach((p, k) => { b.fillStyle = KIND_COLOURS[k]; b.fill(p); });
  }

  const nodeRadius = () => Math.max(1.5, Math.min(6, 5 * scale));

  function draw(): void {
    pending = false;
    const stale = !baseValid || (scale !== baseScale && !zooming) || Math.abs(ox - baseOx) > MARGIN || Math.abs(oy - baseOy) > MARGIN;
    if (stale && !(zooming && baseValid)) renderBase();
    c.setTransform(ratio, 0, 0, ratio, 0, 0);
    c.fillStyle = "#ffffff"; c.fillRect(0, 0, width, height);
    c.save();
    c.beginPath(); c.rect(LEFT, 0, width - LEFT, height - BOTTOM); c.clip();
    const f = scale / baseScale;
    c.drawImage(base, ox - (MARGIN + baseOx) * f, oy - (MARGIN + baseOy) * f, (width + 2 * MARGIN) * f, (height + 2 * MARGIN) * f);
    const { x, y } = model;
    const focusNode = pinned >= 0 ? pinned : hovered;
    if (focusNode >= 0) { c.fillStyle = "rgba(255,255,255,0.6)"; c.fillRect(0, 0, width, height); }
    for (const node of new Set([pinned, hovered])) if (node >= 0) drawNodeEdges(node);
    const radius = nodeRadius();
    // Supernodes: a labelled box around their members.
    c.font = "12px system-ui, sans-serif";
    for (const sn of supernodes) {
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      for (const i of sn.members) { x0 = Math.min(x0, x[i]); x1 = Math.max(x1, x[i]); y0 = Math.min(y0, y[i]); y1 = Math.max(y1, y[i]); }
      const bx = x0 * scale + ox - radius - 4, by = y0 * scale + oy - radius - 4, bw = (x1 - x0) * scale + 2 * radius + 8, bh = (y1 - y0) * scale + 2 * radius + 8;
      c.fillStyle = "rgba(128,90,213,0.08)"; c.fillRect(bx, by, bw, bh);
      c.strokeStyle = "#805ad5"; c.lineWidth = 2; c.setLineDash([5, 3]); c.strokeRect(bx, by, bw, bh); c.setLineDash([]);
      c.fillStyle = "#553c9a"; c.fillText(sn.name, bx, by - 3);
    }
    // Selection, hover, pin, keyboard focus.
    c.lineWidth = 2;
    c.strokeStyle = "#dd6b20";
    for (const i of selection) c.strokeRect(x[i] * scale + ox - radius - 2, y[i] * scale + oy - radius - 2, 2 * radius + 4, 2 * radius + 4);
    const ring = (i: number, colour: string, r: number) => {
      if (i < 0) return;
      c.fillStyle = KIND_COLOURS[model.kind[i]]; c.fillRect(x[i] * scale + ox - radius, y[i] * scale + oy - radius, 2 * radius, 2 * radius);
      c.strokeStyle = colour; c.beginPath(); c.arc(x[i] * scale + ox, y[i] * scale + oy, radius + r, 0, 2 * Math.PI); c.stroke();
    };
    ring(hovered, "#1a202c", 3);
    ring(pinned, "#000000", 6);
    if (focus >= 0 && focus !== pinned) { c.setLineDash([3, 2]); ring(focus, "#4a8af4", 5); c.setLineDash([]); }
    if (band) {
      c.strokeStyle = "#dd6b20"; c.lineWidth = 1; c.setLineDash([4, 3]);
      c.strokeRect(Math.min(band.x0, band.x1), Math.min(band.y0, band.y1), Math.abs(band.x1 - band.x0), Math.abs(band.y1 - band.y0));
      c.setLineDash([]);
    }
    c.restore();
    drawAxes();
    if (firstRender) {
      firstRender = false;
      canvas.dataset.firstRenderMs = performance.now().toFixed(1);
      canvas.dataset.loadMs = (performance.now() - t0).toFixed(1);
    }
    canvas.dataset.drawnEdges = String(drawnEdges);
    status.textContent = `${g.name}: ${model.n.toLocaleString("en")} nodes · ${model.m.toLocaleString("en")} edges · ` +
      (drawnEdges >= MAX_DRAWN_EDGES ? `drawing the ${MAX_DRAWN_EDGES.toLocaleString("en")} strongest near the view (zoom in for more)` : `${drawnEdges.toLocaleString("en")} near the view`);
  }

  function drawNodeEdges(node: number): void {
    const lines: [number, number, number][] = [];
    for (let k = model.outStart[node]; k < model.outStart[node + 1] && lines.length < 400; k++) { const e = model.outEdges[k]; lines.push([node, model.dst[e], model.w[e]]); }
    for (let k = model.inStart[node]; k < model.inStart[node + 1] && lines.length < 800; k++) { const e = model.inEdges[k]; lines.push([model.src[e], node, model.w[e]]); }
    for (const [a, b, w] of lines) {
      c.strokeStyle = w >= 0 ? "rgba(43,108,176,0.95)" : "rgba(197,48,48,0.95)";
      c.lineWidth = 1 + 3 * Math.sqrt(Math.abs(w) / model.maxAbs);
      c.beginPath(); c.moveTo(model.x[a] * scale + ox, model.y[a] * scale + oy); c.lineTo(model.x[b] * scale + ox, model.y[b] * scale + oy); c.stroke();
    }
    const r = nodeRadius();
    for (const [a, b] of lines) for (const i of [a, b]) { c.fillStyle = KIND_COLOURS[model.kind[i]]; c.fillRect(model.x[i] * scale + ox - r, model.y[i] * scale + oy - r, 2 * r, 2 * r); }
  }

  function drawAxes(): void {
    c.fillStyle = "#ffffff"; c.fillRect(0, 0, LEFT, height); c.fillRect(0, height - BOTTOM, width, BOTTOM);
    c.fillStyle = "#445"; c.font = "11px system-ui, sans-serif"; c.textBaseline = "middle"; c.textAlign = "right";
    const rowNames = (r: number) => r === 0 ? "emb" : r === model.rows - 1 ? "logits" : `L${r - 1}`;
    const step = Math.max(1, Math.ceil(14 / (model.rowH * scale)));
    for (let r = 0; r < model.rows; r += step) c.fillText(rowNames(r), LEFT - 6, (model.rows - 1 - r + 0.5) * model.rowH * scale + oy);
    // Tokens along the bottom, as many as fit.
    c.textAlign = "center"; c.font = "11px ui-monospace, monospace";
    const colPx = COL_W * scale, every = Math.max(1, Math.ceil(36 / colPx));
    for (let p = 0; p < model.positions; p += every) {
      const cx = (p + 0.5) * colPx + ox;
      if (cx < LEFT || cx > width) continue;
      let text = show(model.tokenText(p));
      const room = Math.max(3, Math.floor(colPx * every / 7));
      if (text.length > room) text = text.slice(0, room - 1) + "…";
      c.fillText(text, cx, height - BOTTOM / 2);
    }
    c.textAlign = "start"; c.textBaseline = "alphabetic";
  }

  const toWorld = (sx: number, sy: number): [number, number] => [(sx - ox) / scale, (sy - oy) / scale];
  const hit = (sx: number, sy: number) => { const [wx, wy] = toWorld(sx, sy); return model.nearest(wx, wy, Math.min(8 / scale, COL_W / 2)); };

  function showTip(i: number, sx: number, sy: number): void {
    if (i < 0) { tip.hidden = true; return; }
    tip.hidden = false;
    tip.replaceChildren(el("b", {}, model.label(i)), el("br"), nodeNumbers(i));
    tip.style.left = `${Math.min(width - 220, sx + 14)}px`; tip.style.top = `${Math.max(0, sy - 10)}px`;
  }

  function nodeNumbers(i: number): string {
    const nodes = g.nodes, parts = [`${KIND_NAMES[model.kind[i]]}`];
    if (model.kind[i] === FEATURE) parts.push(`act ${nodes.activation[i].toFixed(3)}`);
    if (model.kind[i] === LOGIT) parts.push(`p ${pct(nodes.token_prob[i])}`);
    else parts.push(`influence ${nodes.influence[i].toFixed(3)}`);
    parts.push(`${model.outStart[i + 1] - model.outStart[i]} out · ${model.inStart[i + 1] - model.inStart[i]} in`);
    return parts.join(" · ");
  }

  // Pointer: drag pans; shift-drag selects a rectangle; a click pins (shift-click toggles selection).
  let drag: { sx: number; sy: number; ox: number; oy: number; shift: boolean; moved: boolean } | null = null;
  const local = (e: PointerEvent | WheelEvent) => { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  canvas.addEventListener("pointerdown", e => {
    const [sx, sy] = local(e);
    drag = { sx, sy, ox, oy, shift: e.shiftKey, moved: false };
    canvas.setPointerCapture?.(e.pointerId);
  });
  canvas.addEventListener("pointermove", e => {
    const [sx, sy] = local(e);
    if (drag) {
      if (Math.abs(sx - drag.sx) + Math.abs(sy - drag.sy) > 3) drag.moved = true;
      if (drag.shift) band = { x0: drag.sx, y0: drag.sy, x1: sx, y1: sy };
      else { ox = drag.ox + sx - drag.sx; oy = drag.oy + sy - drag.sy; }
      tip.hidden = true;
      schedule();
      return;
    }
    const i = hit(sx, sy);
    if (i !== hovered) { hovered = i; schedule(); if (pinned < 0) showDetails(i); }
    showTip(i, sx, sy);
  });
  canvas.addEventListener("pointerup", e => {
    const [sx, sy] = local(e);
    const d = drag; drag = null;
    if (!d) return;
    if (d.shift && d.moved && band) {
      const [ax, ay] = toWorld(Math.min(band.x0, band.x1), Math.min(band.y0, band.y1)), [bx, by] = toWorld(Math.max(band.x0, band.x1), Math.max(band.y0, band.y1));
      for (let i = 0; i < model.n; i++) if (model.x[i] >= ax && model.x[i] <= bx && model.y[i] >= ay && model.y[i] <= by) selection.add(i);
      band = null; selectionChanged(); return;
    }
    if (d.moved) return;
    const i = hit(sx, sy);
    if (d.shift) { if (i >= 0) { if (selection.has(i)) selection.delete(i); else selection.add(i); selectionChanged(); } return; }
    pin(i === pinned ? -1 : i);
  });
  canvas.addEventListener("pointerleave", () => { if (!drag) { hovered = -1; tip.hidden = true; schedule(); } });
  canvas.addEventListener("wheel", e => {
    e.preventDefault();
    const [sx, sy] = local(e), f = Math.exp(-e.deltaY * 0.0015);
    ox = sx - (sx - ox) * f; oy = sy - (sy - oy) * f; scale *= f;
    settleZoom();
  }, { passive: false });
  function settleZoom(): void {
    clearTimeout(zooming);
    zooming = window.setTimeout(() => { zooming = 0; baseValid = false; schedule(); }, 160);
    schedule();
  }

  // Keyboard: arrows move between nodes (left/right along the row, up/down to the next row), Enter pins.
  canvas.addEventListener("keydown", e => {
    if (e.key === "Enter") { e.preventDefault(); if (focus >= 0) pin(focus === pinned ? -1 : focus); return; }
    if (e.key === "Escape") { pin(-1); return; }
    if (e.key === "+" || e.key === "=" || e.key === "-") {
      const f = e.key === "-" ? 0.8 : 1.25; ox = width / 2 - (width / 2 - ox) * f; oy = height / 2 - (height / 2 - oy) * f; scale *= f; settleZoom(); return;
    }
    const dir = ({ ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] } as Record<string, number[]>)[e.key];
    if (!dir) return;
    e.preventDefault();
    if (focus < 0) focus = startNode();
    else focus = step(focus, dir[0], dir[1]);
    if (focus >= 0) { ensureVisible(focus); showDetails(focus); }
    schedule();
  });

  function startNode(): number {
    let best = -1;
    for (let i = 0; i < model.n; i++) if (model.kind[i] === LOGIT && (best < 0 || g.nodes.token_prob[i] > g.nodes.token_prob[best])) best = i;
    return best >= 0 ? best : model.n > 0 ? 0 : -1;
  }

  function step(from: number, dx: number, drow: number): number {
    const row = model.rowOf(from), fx = model.x[from], fy = model.y[from];
    let best = from, bestScore = Infinity;
    for (let i = 0; i < model.n; i++) {
      if (i === from) continue;
      const r = model.rowOf(i), ddx = model.x[i] - fx;
      let score: number;
      if (drow !== 0) {
        if (r !== row + drow) continue;
        score = Math.abs(ddx) + Math.abs(model.y[i] - fy) * 0.01;
      } else {
        if (r !== row || ddx * dx <= 0 && !(ddx === 0 && (model.y[i] - fy) * dx > 0)) continue;
        score = Math.abs(ddx) + Math.abs(model.y[i] - fy) * 0.5;
      }
      if (score < bestScore) { bestScore = score; best = i; }
    }
    return best;
  }

  function ensureVisible(i: number): void {
    const sx = model.x[i] * scale + ox, sy = model.y[i] * scale + oy;
    if (sx < LEFT + 20 || sx > width - 20) ox += (LEFT + (width - LEFT) / 2) - sx;
    if (sy < 20 || sy > height - BOTTOM - 20) oy += (height - BOTTOM) / 2 - sy;
  }

  function pin(i: number): void {
    pinned = i;
    if (i >= 0) focus = i;
    setQuery({ pin: i >= 0 ? g.nodes.node_id[i] : null });
    showDetails(i);
    schedule();
  }

  function selectionChanged(): void {
    selectionInfo.textContent = selection.size === 0 ? "no selection (shift-click or shift-drag)" : `${selection.size} node${selection.size === 1 ? "" : "s"} selected`;
    schedule();
  }

  groupButton.addEventListener("click", () => {
    if (selection.size === 0) { selectionInfo.textContent = "select nodes first (shift-click or shift-drag)"; return; }
    const name = groupName.value.trim().replace(/[:;,]/g, " ") || `group ${supernodes.length + 1}`;
    supernodes = [...supernodes.filter(s => s.name !== name), { name, members: [...selection] }];
    selection.clear(); groupName.value = "";
    setQuery({ sn: formatSupernodes(model, supernodes) });
    selectionChanged(); showSupernodes();
  });
  clearButton.addEventListener("click", () => { selection.clear(); selectionChanged(); });
  fitButton.addEventListener("click", () => { fit(); baseValid = false; schedule(); });

  function showSupernodes(): void {
    if (supernodes.length === 0) { superList.replaceChildren(); return; }
    const member = new Set<number>();
    const rows = supernodes.map(s => {
      const inside = new Set(s.members);
      let into = 0, out = 0;
      for (const i of s.members) {
        member.add(i);
        for (let k = model.inStart[i]; k < model.inStart[i + 1]; k++) { const e = model.inEdges[k]; if (!inside.has(model.src[e])) into += model.w[e]; }
        for (let k = model.outStart[i]; k < model.outStart[i + 1]; k++) { const e = model.outEdges[k]; if (!inside.has(model.dst[e])) out += model.w[e]; }
      }
      const remove = el("button", { type: "button", "aria-label": `remove supernode ${s.name}` }, "×");
      remove.addEventListener("click", () => { supernodes = supernodes.filter(x => x !== s); setQuery({ sn: formatSupernodes(model, supernodes) }); showSupernodes(); schedule(); });
      return el("tr", { "data-testid": "supernode" }, el("td", {}, s.name), el("td", {}, String(s.members.length)), el("td", {}, into.toFixed(3)), el("td", {}, out.toFixed(3)), el("td", {}, remove));
    });
    superList.replaceChildren(el("h2", {}, "Supernodes"),
      el("table", { class: "panel" }, el("tr", {}, el("th", {}, "name"), el("th", {}, "nodes"), el("th", {}, "Σ in"), el("th", {}, "Σ out"), el("th", {})), ...rows));
  }

  function edgeTable(i: number, incoming: boolean): HTMLElement {
    const start = incoming ? model.inStart : model.outStart, list = incoming ? model.inEdges : model.outEdges;
    const rows: HTMLElement[] = [];
    for (let k = start[i]; k < Math.min(start[i + 1], start[i] + 6); k++) {
      const e = list[k], other = incoming ? model.src[e] : model.dst[e];
      const link = el("button", { type: "button", class: "linkish" }, model.label(other));
      link.addEventListener("click", () => { pin(other); ensureVisible(other); schedule(); });
      rows.push(el("tr", {}, el("td", {}, link), el("td", { class: model.w[e] >= 0 ? "pos" : "neg" }, model.w[e].toFixed(4))));
    }
    if (rows.length === 0) return el("p", { class: "muted" }, incoming ? "no incoming edges" : "no outgoing edges");
    return el("table", {}, el("tr", {}, el("th", {}, incoming ? "from" : "to"), el("th", {}, "weight")), ...rows);
  }

  function showDetails(i: number): void {
    if (i < 0) { details.replaceChildren(el("p", { class: "muted" }, "Hover a node for its details; click (or Enter) pins it.")); return; }
    const nodes = g.nodes;
    const facts: [string, string][] = [
      ["node", nodes.node_id[i]], ["kind", KIND_NAMES[model.kind[i]]], ["layer", model.kind[i] === TOKEN ? "embedding" : model.kind[i] === LOGIT ? "output" : String(model.layer[i])],
      ["position", `${model.pos[i]} (${show(model.tokenText(model.pos[i]))})`],
    ];
    if (model.kind[i] === FEATURE) facts.push(["feature", String(nodes.feature[i])], ["activation", nodes.activation[i].toFixed(4)]);
    if (model.kind[i] === LOGIT) facts.push(["token", String(nodes.feature[i])], ["probability", pct(nodes.token_prob[i])]);
    if (model.kind[i] !== LOGIT) facts.push(["influence", nodes.influence[i].toFixed(4)]);
    details.replaceChildren(
      el("h2", { "data-testid": "node-title" }, `${i === pinned ? "pinned: " : ""}${model.label(i)}`),
      el("table", { "data-testid": "node-facts" }, ...facts.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { "data-fact": k }, v)))),
      ...(i === pinned && model.kind[i] === FEATURE ? [intervenePanel(i)] : []),
      ...(i === pinned && model.kind[i] === FEATURE && caps.feature_stores.length > 0 ? [dashboardPanel(i)] : []),
      el("h2", {}, "Top incoming"), edgeTable(i, true), el("h2", {}, "Top outgoing"), edgeTable(i, false));
  }

  function dashboardPanel(i: number): HTMLElement {
    const box = el("div", { "data-testid": "feature-dashboard" }, el("h2", {}, "Feature dashboard"), el("p", { class: "muted" }, "Loading…"));
    api<Dashboard>(`/api/graph/feature/${model.layer[i]}/${g.nodes.feature[i]}`).then(d => {
      const maxAct = Math.max(1e-9, d.max_act);
      box.replaceChildren(el("h2", {}, `Feature dashboard (${d.store})`),
        el("p", { class: "muted" }, `density ${pct(d.density)} · max activation ${d.max_act.toFixed(3)}`),
        d.explanation ? el("p", { "data-testid": "explanation" }, d.explanation) : el("p", { class: "muted" }, "no explanation stored"),
        ...d.examples.map(x => el("div", { class: "graph-example", "data-testid": "feature-example" },
          el("span", { class: "muted" }, `${x.activation.toFixed(2)} `),
          ...x.tokens.map((t, k) => {
            const span = el("span", { class: k === x.focus ? "tok focus" : "tok" }, show(t));
            const a = Math.max(0, Math.min(1, x.acts[k] / maxAct));
            span.style.background = `rgba(47,133,90,${(a * 0.8).toFixed(2)})`;
            return span;
          }))));
    }, e => box.replaceChildren(el("h2", {}, "Feature dashboard"), el("p", { class: "muted" }, String(e.message ?? e))));
    return box;
  }

  function intervenePanel(i: number): HTMLElement {
    const box = el("div", { class: "graph-intervene", "data-testid": "intervene-panel" }, el("h2", {}, "Intervene"));
    if (!caps.interventions) {
      box.append(el("p", { class: "muted", "data-testid": "intervene-unavailable" }, "Interventions need transcoders: start the server with --transcoders DIR (as for loupe intervene)."));
      return box;
    }
    if (g.token_ids.some(t => t < 0)) { box.append(el("p", { class: "muted" }, "This graph does not list every prompt token, so it cannot be rerun.")); return box; }
    const mode = el("select", { "data-testid": "intervene-mode", "aria-label": "edit" },
      el("option", { value: "ablate" }, "ablate (×0)"), el("option", { value: "scale" }, "scale ×"), el("option", { value: "set" }, "set to"));
    const value = el("input", { "data-testid": "intervene-value", type: "number", step: "any", value: "2", "aria-label": "factor or value", size: 6 });
    const everywhere = el("input", { type: "checkbox", "data-testid": "intervene-all" });
    const sync = () => { value.disabled = mode.value === "ablate"; };
    mode.addEventListener("change", sync);
    sync();
    const run = el("button", { type: "button", "data-testid": "intervene" }, "Run");
    const out = el("div", { "aria-live": "polite" });
    const request = latestOnly(); // only the last Run's answer is shown
    run.addEventListener("click", () => {
      const latest = request();
      const m = mode.value;
      const edit = { layer: model.layer[i], position: everywhere.checked ? -1 : model.pos[i], feature: g.nodes.feature[i], value: m === "ablate" ? 0 : Number(value.value), mode: m === "set" ? "set" : "scale" };
      out.replaceChildren(el("p", { class: "muted" }, "Running…"));
      api<InterventionView>("/api/graph/intervene", { tokens: g.token_ids, edits: [edit], top_k: 8 }).then(r => latest(() => {
        const top = r.after[0];
        out.replaceChildren(
          el("p", {}, "new top token: ", el("b", { "data-testid": "after-top", "data-token-id": String(top.id) }, show(top.text)), ` (${pct(top.prob)}; before: ${show(r.before[0].text)} ${pct(r.before[0].prob)})`),
          el("table", { "data-testid": "intervene-result", "data-after": r.after.map(t => t.id).join(",") }, el("tr", {}, el("th", {}, "token"), el("th", {}, "before"), el("th", {}, "after"), el("th", {}, "Δ logit")),
            ...r.tokens.map(t => el("tr", {}, el("td", {}, show(t.text)), el("td", {}, t.before === null ? "" : pct(t.before)), el("td", {}, t.after === null ? "" : pct(t.after)),
              el("td", { class: t.delta_logit >= 0 ? "pos" : "neg" }, t.delta_logit.toFixed(3))))));
      }), e => latest(() => out.replaceChildren(el("p", { class: "error", role: "alert" }, e instanceof ApiError ? e.message : String(e)))));
    });
    box.append(el("div", { class: "graph-toolbar" }, mode, value, el("label", {}, everywhere, " every position"), run), out);
    return box;
  }

  // For automation (the browser tests): where a node is on screen, in canvas pixels.
  (window as unknown as { loupeGraph: unknown }).loupeGraph = {
    screenOf: (nodeId: string) => { const i = model.idIndex.get(nodeId) ?? -1; return i < 0 ? null : [model.x[i] * scale + ox, model.y[i] * scale + oy]; },
  };
  showDetails(pinned);
  showSupernodes();
  draw();
}
