// Circuits and patching page: patching sweeps (patch.json from loupe patch) as heat maps, and circuit-discovery
// graphs (circuit.json from loupe circuit: EAP-IG's {cfg, nodes, edges} + Loupe's block) as a layered drawing,
// an edge list and the faithfulness curve.
import { api } from "./api";
import { JobKinds, JobRunner } from "./jobs";
import { canvas, el, latestOnly, query, setQuery, show } from "./dom";
import type { PageContext } from "./main";

interface ArtifactView { id: string; name: string; kind: string; bytes: number; modified: string }
type Num = number | string; // NaN and infinities arrive as strings
interface PatchFile {
  target: string; metric: string; noising: boolean; clean_value: Num; corrupt_value: Num; row_axis: string; column_axis: string;
  row_labels: string[]; column_labels: string[]; values: Num[][]; normalized: Num[][]; forward_passes: number; seconds: number; tokens?: string[] | null;
}
interface CircuitNode { name: string; kind: string; layer: number; head: number; in_graph: boolean }
interface CircuitEdge { name: string; source: string; target: string; slot: string; score: number; in_graph: boolean }
interface FaithPoint { percent: number; edges: number; metric: number; recovered: number }
interface CircuitView {
  id: string; name: string; layers: number; heads: number; nodes: CircuitNode[]; edges: CircuitEdge[]; total_edges: number; edges_in_graph: number;
  loupe: { method?: string; metric?: string; selection?: string; model?: string; evaluation?: { circuit: number; clean: number; corrupted: number; recovered: number }; faithfulness?: FaithPoint[] } | null;
}

const num = (v: Num): number => typeof v === "number" ? v : Number(v);
const fmt = (v: number, d = 3) => Number.isFinite(v) ? v.toFixed(d) : String(v);

/** Blue (negative) – white – red (positive), for a value in [−1, 1]. */
function diverging(v: number): string {
  if (!Number.isFinite(v)) return "#ddd";
  const t = Math.max(-1, Math.min(1, v));
  const [r, g, b] = t >= 0 ? [255, 255 - t * 200, 255 - t * 200] : [255 + t * 200, 255 + t * 150, 255];
  return `rgb(${Math.round(r)},${Math.round(g)},${Math.round(b)})`;
}

export function circuitsPage(ctx: PageContext): void {
  const select = el("select", { "data-testid": "circuit-select", "aria-label": "artifact" });
  const out = el("div", { "aria-live": "polite" });
  const sweep = el("div", {});
  ctx.root.append(el("h1", {}, "Circuits and patching"), sweep, el("label", {}, "Artifact ", select), out);
  sweepForm(sweep, id => {
    // The new patch.json is in the index: list it and open it.
    setQuery({ artifact: id }, true);
    ctx.root.replaceChildren();
    circuitsPage(ctx);
  });
  api<ArtifactView[]>("/api/artifacts").then(all => {
    const list = all.filter(a => a.kind === "patching" || a.kind === "circuit");
    if (list.length === 0) {
      out.replaceChildren(el("p", { class: "muted" }, "No patching sweeps or circuits in the workspace: start the server with --graphs DIR holding loupe patch / loupe circuit output, or run a sweep above."));
      return;
    }
    for (const a of list) select.append(el("option", { value: a.id }, `${a.kind}: ${a.name}`));
    const wanted = query().get("artifact");
    select.value = list.some(a => a.id === wanted) ? wanted! : list[0].id;
    // Only the last artifact asked for is drawn: a slow answer for an earlier choice must not replace it.
    const request = latestOnly();
    const open = (id: string) => {
      const a = list.find(x => x.id === id)!;
      const latest = request();
      out.replaceChildren(el("p", { class: "muted" }, "Loading…"));
      const render = (draw: () => void) => latest(() => { out.replaceChildren(); draw(); });
      const fail = (e: Error) => render(() => out.append(el("p", { class: "error", role: "alert" }, String(e.message ?? e))));
      if (a.kind === "patching") api<PatchFile>(`/api/artifacts/${id}`).then(p => render(() => patching(out, p)), fail);
      else api<CircuitView>(`/api/circuits/${id}`).then(c => render(() => circuit(out, c)), fail);
    };
    select.addEventListener("change", () => { setQuery({ artifact: select.value }, true); open(select.value); });
    open(select.value);
  }, e => out.replaceChildren(el("p", { class: "error" }, String(e.message ?? e))));
}

function patching(out: HTMLElement, p: PatchFile): void {
  const normalized = el("input", { type: "checkbox", checked: true, "data-testid": "patch-normalized" });
  const info = el("p", { class: "status", "data-testid": "patch-cell" }, "Hover a cell.");
  const holder = el("div", {});
  out.append(
    el("p", { "data-testid": "patch-summary" }, `${p.noising ? "Noising" : "Denoising"} ${p.target}: ${p.metric} · clean ${fmt(num(p.clean_value), 4)} · corrupt ${fmt(num(p.corrupt_value), 4)} · ${p.forward_passes} forward passes, ${fmt(p.seconds, 2)} s`),
    el("label", {}, normalized, " normalized (m − m_corrupt)/(m_clean − m_corrupt)"),
    el("p", { class: "muted" }, "Red: the patch moves the metric toward clean (normalized 1 = fully restored); blue: away from it. Raw values are scaled by the largest |value|. Arrow keys walk the cells."),
    info, holder);
  const draw = () => {
    const grid = (normalized.checked ? p.normalized : p.values).map(r => r.map(num));
    let maxAbs = 0;
    for (const r of grid) for (const v of r) if (Number.isFinite(v)) maxAbs = Math.max(maxAbs, Math.abs(v));
    const scaleBy = normalized.checked ? 1 : maxAbs || 1;
    const rows = grid.length, cols = grid[0]?.length ?? 0;
    const cell = Math.max(10, Math.min(44, Math.floor(900 / Math.max(1, cols)))), left = 90, top = 10, bottom = 70;
    const [c, g] = canvas(left + cols * cell + 10, top + rows * cell + bottom, `patching heat map: ${p.row_axis} × ${p.column_axis}`);
    c.setAttribute("data-testid", "patch-heatmap");
    c.tabIndex = 0;
    g.font = "11px system-ui, sans-serif";
    for (let r = 0; r < rows; r++) {
      g.fillStyle = "#334"; g.textAlign = "right"; g.textBaseline = "middle";
      g.fillText(p.row_labels[r] ?? String(r), left - 6, top + (r + 0.5) * cell);
      for (let k = 0; k < cols; k++) { g.fillStyle = diverging(grid[r][k] / scaleBy); g.fillRect(left + k * cell, top + r * cell, cell - 1, cell - 1); }
    }
    g.save();
    for (let k = 0; k < cols; k++) {
      g.translate(left + (k + 0.5) * cell, top + rows * cell + 6); g.rotate(Math.PI / 4);
      g.textAlign = "left"; g.fillStyle = "#334"; g.fillText(show(p.column_labels[k] ?? String(k)).slice(0, 12), 0, 0);
      g.setTransform(window.devicePixelRatio || 1, 0, 0, window.devicePixelRatio || 1, 0, 0);
    }
    g.restore();
    const describe = (r: number, k: number) =>
      `${p.row_axis} ${p.row_labels[r]} × ${p.column_axis} ${show(p.column_labels[k] ?? "")}: normalized ${fmt(num(p.normalized[r][k]))}, ${p.metric} ${fmt(num(p.values[r][k]), 4)}`;
    c.addEventListener("pointermove", e => {
      const rect = c.getBoundingClientRect(), k = Math.floor((e.clientX - rect.left - left) / cell), r = Math.floor((e.clientY - rect.top - top) / cell);
      if (r >= 0 && r < rows && k >= 0 && k < cols) info.textContent = describe(r, k);
    });
    // Keyboard: arrows walk the cells.
    let cr = 0, ck = 0;
    c.addEventListener("keydown", e => {
      const d = ({ ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] } as Record<string, number[]>)[e.key];
      if (!d) return;
      e.preventDefault();
      cr = Math.max(0, Math.min(rows - 1, cr + d[0])); ck = Math.max(0, Math.min(cols - 1, ck + d[1]));
      info.textContent = describe(cr, ck);
    });
    // The largest cells, as text (and for screen readers).
    const cells: [number, number, number][] = [];
    grid.forEach((row, r) => row.forEach((v, k) => cells.push([r, k, v])));
    cells.sort((a, b) => Math.abs(b[2]) - Math.abs(a[2]));
    holder.replaceChildren(c, el("h2", {}, "Largest cells"),
      el("table", { "data-testid": "patch-top" }, el("tr", {}, el("th", {}, p.row_axis), el("th", {}, p.column_axis), el("th", {}, normalized.checked ? "normalized" : p.metric)),
        ...cells.slice(0, 10).map(([r, k, v]) => el("tr", {}, el("td", {}, p.row_labels[r]), el("td", {}, show(p.column_labels[k] ?? "")), el("td", {}, fmt(v, 4))))));
  };
  normalized.addEventListener("change", draw);
  draw();
}

function circuit(out: HTMLElement, v: CircuitView): void {
  const lp = v.loupe ?? {};
  const ev = lp.evaluation;
  out.append(el("p", { "data-testid": "circuit-summary" },
    `${lp.method ?? "scores"} · ${lp.metric ?? ""} · ${lp.selection ?? ""} · ${v.edges_in_graph} of ${v.total_edges} edges in the circuit` +
    (ev ? ` · metric: circuit ${fmt(ev.circuit, 4)}, clean ${fmt(ev.clean, 4)}, corrupted ${fmt(ev.corrupted, 4)} (${fmt(ev.recovered * 100, 1)}% recovered)` : "")));
  const info = el("p", { class: "status", "data-testid": "circuit-hover" }, "Hover a node.");
  const row = el("div", { class: "row" });
  row.append(el("div", {}, el("h2", {}, "Circuit"), drawCircuit(v, info), info));
  if (lp.faithfulness && lp.faithfulness.length > 0) row.append(el("div", {}, el("h2", {}, "Faithfulness"), faithfulness(lp.faithfulness)));
  out.append(row);
  const onlyCircuit = el("input", { type: "checkbox", checked: true, "data-testid": "circuit-only" });
  const table = el("div", {});
  const list = () => {
    const edges = v.edges.filter(e => !onlyCircuit.checked || e.in_graph).slice(0, 200);
    table.replaceChildren(el("table", { "data-testid": "circuit-edges" },
      el("tr", {}, el("th", {}, "edge"), el("th", {}, "score"), el("th", {}, "in circuit")),
      ...edges.map(e => el("tr", {}, el("td", {}, e.name), el("td", { class: e.score >= 0 ? "pos" : "neg" }, e.score.toExponential(3)), el("td", {}, e.in_graph ? "✓" : "")))));
  };
  onlyCircuit.addEventListener("change", list);
  list();
  out.append(el("h2", {}, "Edges by |score|"), el("label", {}, onlyCircuit, " only the circuit's (the 200 largest shown)"), table);
}

function drawCircuit(v: CircuitView, info: HTMLElement): HTMLCanvasElement {
  const L = v.layers, H = v.heads, hasMlp = v.nodes.some(n => n.kind === "mlp");
  const boxW = 40, boxH = 20, gapX = 10, rowH = 62, margin = 30;
  const columns = H + (hasMlp ? 1 : 0);
  const width = Math.max(360, margin * 2 + columns * (boxW + gapX)), height = margin * 2 + (L + 2) * rowH;
  const [c, g] = canvas(width, height, `circuit: ${v.edges_in_graph} edges`);
  c.setAttribute("data-testid", "circuit-canvas");
  const place = new Map<string, [number, number]>();
  const yOf = (layer: number) => height - margin - boxH - (layer + 1) * rowH;
  for (const n of v.nodes) {
    const x = n.kind === "head" ? margin + n.head * (boxW + gapX) : n.kind === "mlp" ? margin + H * (boxW + gapX) : width / 2 - boxW / 2;
    place.set(n.name, [x, yOf(n.layer)]);
  }
  const kept = v.edges.filter(e => e.in_graph);
  const max = Math.max(1e-12, ...kept.map(e => Math.abs(e.score)));
  for (const e of kept) {
    const s = place.get(e.source), t = place.get(e.target);
    if (!s || !t) continue;
    const fx = s[0] + boxW / 2, fy = s[1], tx = t[0] + (e.slot === "q" ? boxW * 0.2 : e.slot === "v" ? boxW * 0.8 : boxW / 2), ty = t[1] + boxH;
    g.strokeStyle = e.score >= 0 ? "rgba(43,108,176,0.75)" : "rgba(197,48,48,0.75)";
    g.lineWidth = 0.6 + 4 * Math.abs(e.score) / max;
    const bend = (fy - ty) / 2;
    g.beginPath(); g.moveTo(fx, fy); g.bezierCurveTo(fx, fy - bend, tx, ty + bend, tx, ty); g.stroke();
  }
  g.font = "10px system-ui, sans-serif"; g.textAlign = "center"; g.textBaseline = "middle";
  for (const n of v.nodes) {
    const [x, y] = place.get(n.name)!;
    g.fillStyle = n.in_graph ? "#ffffff" : "#f3f3f5"; g.strokeStyle = n.in_graph ? "#2d3748" : "#cbd2d9"; g.lineWidth = 1;
    g.fillRect(x, y, boxW, boxH); g.strokeRect(x, y, boxW, boxH);
    g.fillStyle = n.in_graph ? "#1a202c" : "#a0aec0";
    g.fillText(n.name, x + boxW / 2, y + boxH / 2);
  }
  c.addEventListener("pointermove", e => {
    const r = c.getBoundingClientRect(), px = e.clientX - r.left, py = e.clientY - r.top;
    const n = v.nodes.find(n => { const [x, y] = place.get(n.name)!; return px >= x && px <= x + boxW && py >= y && py <= y + boxH; });
    if (!n) return;
    const into = kept.filter(e => e.target === n.name), from = kept.filter(e => e.source === n.name);
    info.textContent = `${n.name}: ${n.in_graph ? "in the circuit" : "not in the circuit"} · ${into.length} edges in (Σ ${into.reduce((a, e) => a + e.score, 0).toExponential(2)}) · ${from.length} out`;
  });
  return c;
}

function faithfulness(points: FaithPoint[]): HTMLCanvasElement {
  const width = 380, height = 240, left = 44, bottom = 34, top = 10, right = 26;
  const [c, g] = canvas(width, height, "faithfulness: share of edges kept against metric recovered");
  c.setAttribute("data-testid", "faithfulness");
  const xs = points.map(p => Math.log10(p.percent)), ys = points.map(p => p.recovered);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(0, ...ys), y1 = Math.max(1, ...ys);
  const X = (x: number) => left + (x - x0) / Math.max(1e-9, x1 - x0) * (width - left - right), Y = (y: number) => height - bottom - (y - y0) / (y1 - y0) * (height - bottom - top);
  g.strokeStyle = "#99a"; g.lineWidth = 1; g.beginPath(); g.moveTo(left, top); g.lineTo(left, height - bottom); g.lineTo(width - right, height - bottom); g.stroke();
  g.setLineDash([3, 3]); g.beginPath(); g.moveTo(left, Y(1)); g.lineTo(width - right, Y(1)); g.stroke(); g.setLineDash([]);
  g.strokeStyle = "#2b6cb0"; g.lineWidth = 2; g.beginPath();
  points.forEach((p, k) => k === 0 ? g.moveTo(X(xs[k]), Y(p.recovered)) : g.lineTo(X(xs[k]), Y(p.recovered)));
  g.stroke();
  g.fillStyle = "#2b6cb0";
  points.forEach((p, k) => { g.beginPath(); g.arc(X(xs[k]), Y(p.recovered), 3, 0, 2 * Math.PI); g.fill(); });
  g.fillStyle = "#334"; g.font = "11px system-ui, sans-serif"; g.textAlign = "center";
  for (const p of points) g.fillText(`${p.percent}%`, X(Math.log10(p.percent)), height - bottom + 14);
  g.fillText("edges kept (log scale)", left + (width - left) / 2, height - 4);
  g.textAlign = "right";
  for (const y of [0, 0.5, 1]) g.fillText(y.toFixed(1), left - 4, Y(y) + 4);
  return c;
}

interface PatchingJobResult { artifact_id: string; name: string; metric: string; clean_value: number; corrupt_value: number; cells: number }

/** "Run a patching sweep": clean/corrupt prompts, answer/wrong tokens, a target; streamed as a job, opened when done. */
function sweepForm(holder: HTMLElement, opened: (artifactId: string) => void): void {
  api<JobKinds>("/api/jobs/kinds").then(kinds => {
    const field = (name: string, label: string, value: string, cls = "") =>
      el("input", { "aria-label": label, "data-testid": `sweep-${name}`, value, placeholder: label, class: cls, autocomplete: "off" });
    const clean = field("clean", "clean prompt", "Once upon a time, there was a little girl named Lily. One day,");
    const corrupt = field("corrupt", "corrupt prompt (as many tokens)", "Once upon a time, there was a little girl named Tim. One day,");
    const answer = field("answer", "answer token", "Lily", "short");
    const wrong = field("wrong", "wrong token (blank: log p)", "Tim", "short");
    const target = el("select", { "aria-label": "target", "data-testid": "sweep-target" }, ...kinds.targets.map(t => el("option", { value: t }, t)));
    const noising = el("input", { type: "checkbox", "data-testid": "sweep-noising" });
    const run = el("button", { type: "submit", "data-testid": "sweep-run", disabled: !kinds.patching_sweep.available }, "Run sweep");
    const runner = new JobRunner<PatchingJobResult>(r => opened(r.artifact_id), () => { run.disabled = !kinds.patching_sweep.available; });
    const form = el("form", { class: "job-form panel", "data-testid": "sweep-form" }, clean, corrupt,
      el("label", {}, "answer ", answer), el("label", {}, "vs ", wrong), el("label", {}, "target ", target),
      el("label", {}, noising, "noising"), run);
    form.addEventListener("submit", e => {
      e.preventDefault();
      run.disabled = true;
      const body: Record<string, unknown> = { clean: clean.value, corrupt: corrupt.value, answer: answer.value, target: target.value, noising: noising.checked };
      if (wrong.value) body.wrong = wrong.value;
      runner.start("patching-sweep", body).catch(() => { run.disabled = false; });
    });
    const details = el("details", { class: "job", "data-testid": "sweep-details" },
      el("summary", {}, "Run a patching sweep"),
      el("p", { class: "muted" }, "Activation patching as `loupe patch`: each cell of the target (resid_pre: layer × position; head_out: layer × head) patched from the clean run into the corrupt one, measuring logit(answer) − logit(wrong) at the last position. The result is written under the served folder and opened here."),
      kinds.patching_sweep.available ? form : el("p", { class: "muted" }, `Not available: ${kinds.patching_sweep.reason}`), runner.element);
    holder.replaceChildren(details);
  }, () => undefined);
}
