import { api, ExampleView, FeatureDashboard, FeatureListView, FeatureStoreView, promptBody, TextSearchView, TokenSearchView } from "./api";
import { canvas, el, pagerButton, query, rowKeys, setQuery, show } from "./dom";
import { JobKinds, JobRunner } from "./jobs";
import { saeEvalForm } from "./saeEval";
import type { PageContext } from "./main";

// Feature dashboards from a feature store: a paged, sortable list; per feature its histogram, logit tables, top and
// interval examples shaded token by token; search by text ("which features fire here?") and by token.
// State in the URL: ?store=ID&feature=F&order=density&offset=0&q=TEXT&tok=TOKEN.

const PAGE = 100;

export function featuresPage(ctx: PageContext): void {
  const root = ctx.root;
  root.append(el("h1", {}, "Features"));
  const body = el("div", {});
  const build = el("div", {});
  const evaluate = el("div", {});
  root.append(build, evaluate, body);
  saeEvalForm(evaluate);
  buildForm(build, storeId => {
    setQuery({ store: storeId, feature: null, offset: null, q: null, tok: null }, true);
    root.replaceChildren();
    featuresPage(ctx);
  });
  api<FeatureStoreView[]>("/api/features/stores").then(stores => {
    if (stores.length === 0) {
      body.append(el("p", { class: "placeholder", "data-testid": "no-stores" },
        "No feature stores are served yet. Build one above (needs --sae), or start the server with --features FILE_OR_DIR (features.db files written by `loupe features build`)."));
      return;
    }
    const chosen = stores.find(s => s.id === query().get("store")) ?? stores[0];
    showStore(ctx, body, stores, chosen);
  }, e => body.append(el("p", { class: "error", role: "alert" }, String(e.message ?? e))));
}

function showStore(ctx: PageContext, body: HTMLElement, stores: FeatureStoreView[], store: FeatureStoreView): void {
  const picker = el("select", { "aria-label": "Feature store", "data-testid": "store" },
    ...stores.map(s => el("option", { value: s.id, selected: s.id === store.id }, `${s.name} · ${s.hook} · ${s.d_sae.toLocaleString()} features`)));
  picker.addEventListener("change", () => {
    setQuery({ store: picker.value, feature: null, offset: null }, true);
    body.replaceChildren();
    showStore(ctx, body, stores, stores.find(s => s.id === picker.value)!);
  });
  const info = el("span", { class: "muted" }, `${store.n_tokens.toLocaleString()} tokens · ${store.dead.toLocaleString()} dead`);

  const list = el("div", { class: "feature-list panel" });
  const dashboard = el("div", { class: "dashboard", "aria-live": "polite" });
  const searchOut = el("div", { class: "search-out" });

  const open = (feature: number, push: boolean) => {
    setQuery({ feature: String(feature) }, push);
    markCurrent(feature);
    loadDashboard(store, feature, dashboard);
  };
  const searches = searchForms(ctx, store, searchOut, f => open(f, true));

  body.append(el("div", { class: "row" }, picker, info), searches, searchOut,
    el("div", { class: "features-layout" }, list, dashboard));
  loadList(store, list, open);
  const f = Number(query().get("feature"));
  if (query().get("feature") !== null && Number.isInteger(f) && f >= 0 && f < store.d_sae) open(f, false);
  else dashboard.append(el("p", { class: "muted" }, "Pick a feature from the list, search, or type its number."));
}

function loadList(store: FeatureStoreView, list: HTMLElement, open: (f: number, push: boolean) => void): void {
  const order = query().get("order") ?? "density";
  const offset = Math.max(0, Number(query().get("offset") ?? 0) || 0);
  list.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  api<FeatureListView>(`/api/features/${store.id}?order=${encodeURIComponent(order)}&offset=${offset}&limit=${PAGE}`).then(page => {
    const sortButton = (key: string, label: string) => {
      const b = el("button", { class: "sort", "data-testid": `sort-${key}` }, label);
      b.addEventListener("click", () => { setQuery({ order: key, offset: null }, true); loadList(store, list, open); });
      return el("th", { "aria-sort": order === key ? (key === "feature" ? "ascending" : "descending") : undefined }, b);
    };
    const rows = page.rows.map(r => {
      const tr = el("tr", { tabindex: "0", "data-testid": "feature-row", "data-feature": String(r.feature) },
        el("td", {}, String(r.feature)), el("td", {}, density(r.density)), el("td", {}, r.max_act.toFixed(2)),
        el("td", { class: "label-cell" }, r.explanation ?? (r.top_promoted !== null ? `→ ${show(r.top_promoted)}` : "")));
      tr.addEventListener("click", () => open(r.feature, true));
      rowKeys(tr, () => open(r.feature, true));
      return tr;
    });
    const pager = (delta: number, label: string) => pagerButton(offset, delta, PAGE, page.total, label, to => { setQuery({ offset: String(to) }, true); loadList(store, list, open); });
    const go = el("input", { type: "number", min: "0", max: String(page.total - 1), "aria-label": "Feature number", placeholder: "feature #", "data-testid": "goto" });
    go.addEventListener("keydown", e => { if (e.key === "Enter" && go.value !== "") open(Number(go.value), true); });
    list.replaceChildren(
      el("div", { class: "row pager" }, pager(-1, "‹ prev"), el("span", { class: "muted" },
        `${(offset + 1).toLocaleString()}–${Math.min(page.total, offset + PAGE).toLocaleString()} of ${page.total.toLocaleString()}`), pager(1, "next ›"), go),
      el("table", { "data-testid": "feature-list" },
        el("thead", {}, el("tr", {}, sortButton("feature", "#"), sortButton("density", "density"), sortButton("max_act", "max act"), el("th", {}, "label"))),
        el("tbody", {}, ...rows)));
    if (query().get("feature") !== null) markCurrent(Number(query().get("feature")));
  }, e => list.replaceChildren(el("p", { class: "error", role: "alert" }, String(e.message ?? e))));
}

function density(d: number): string {
  const p = d * 100;
  return d === 0 ? "0" : p >= 0.1 ? `${p.toFixed(2)}%` : p >= 0.001 ? `${p.toPrecision(2)}%` : `${p.toExponential(1)}%`;
}

/** The open feature's row in the list is marked, whichever page or order is showing. */
function markCurrent(feature: number): void {
  document.querySelectorAll<HTMLElement>("[data-testid=feature-row]").forEach(r =>
    r.setAttribute("aria-current", r.dataset.feature === String(feature) ? "true" : "false"));
}

let dashboardRequest = 0;

function loadDashboard(store: FeatureStoreView, feature: number, out: HTMLElement): void {
  const mine = ++dashboardRequest;
  const started = performance.now();
  out.replaceChildren(el("p", { class: "muted" }, `Loading feature ${feature}…`));
  api<FeatureDashboard>(`/api/features/${store.id}/${feature}?top=20`).then(d => {
    if (mine !== dashboardRequest) return; // a later click won
    out.replaceChildren(renderDashboard(store, d));
    const ms = performance.now() - started;
    out.dataset.renderMs = ms.toFixed(1);
    performance.mark("feature-dashboard-rendered", { detail: { feature, ms } });
  }, e => { if (mine === dashboardRequest) out.replaceChildren(el("p", { class: "error", role: "alert" }, String(e.message ?? e))); });
}

function renderDashboard(store: FeatureStoreView, d: FeatureDashboard): HTMLElement {
  const box = el("div", { "data-testid": "dashboard", "data-feature": String(d.feature) });
  const steer = el("a", { href: `/steering?source=${encodeURIComponent(`feature:${store.id}:${d.feature}`)}`, class: "steer-link" }, "steer with this feature →");
  box.append(el("h2", { class: "dash-title", "data-testid": "dashboard-title" }, `Feature ${d.feature}`, el("span", { class: "muted" }, ` of ${d.d_sae.toLocaleString()} · ${d.hook}`), " ", store.has_sae ? steer : null));
  for (const x of d.explanations) {
    const scores = Object.entries(x.scores).map(([scorer, m]) => (scorer === "simulation"
      ? `${scorer}: r ${fmt(m.ev_correlation)} (activating windows ${fmt(m.ev_correlation_activating)})`
      : `${scorer}: acc ${fmt(m.accuracy)} · F1 ${fmt(m.f1)}${m.auroc !== undefined ? ` · AUROC ${fmt(m.auroc)}` : ""}`)
      + (m.similar_negatives === 1 ? " vs similar negatives" : ""));
    box.append(el("div", { class: "explanation", "data-testid": "explanation" }, el("b", {}, x.text),
      el("div", { class: "muted" }, `${x.explainer_model}${scores.length ? " — " + scores.join("; ") : ""}`)));
  }
  box.append(el("div", { class: "stats", "data-testid": "stats" },
    stat("density", density(d.density), "density"), stat("active tokens", d.n_active.toLocaleString(), "n-active"),
    stat("max act", d.max_act.toFixed(3), "max-act"), stat("mean act", d.mean_act === null ? "—" : d.mean_act.toFixed(3), "mean-act"),
    stat("‖W_dec‖", d.decoder_norm.toFixed(3), "decoder-norm")));
  if (d.n_active === 0) box.append(el("p", { class: "muted" }, "Dead: never active on the store's tokens."));

  const side = el("div", { class: "row" });
  if (d.acts_histogram) side.append(el("div", {}, el("h3", {}, "Activation histogram"), histogram(d.acts_histogram.bin_edges, d.acts_histogram.counts, "#e07b16", "activation")));
  if (d.promoted.length + d.suppressed.length > 0) side.append(el("div", {}, el("h3", {}, "Logit effects"), logitTable(d)));
  box.append(side);

  const status = el("div", { class: "status", "data-testid": "token-status" }, "hover a token for its activation");
  box.append(el("h3", {}, "Top activations"), status,
    el("div", { class: "examples", "data-testid": "top-examples" }, ...d.top.map(e => example(e, d.max_act, status))));
  for (const q of d.quantiles.filter(q => q.examples.length > 0))
    box.append(el("h3", {}, `Interval (${q.lower.toFixed(2)}, ${q.upper.toFixed(2)}] — ${q.n_active.toLocaleString()} tokens (${(d.n_active ? 100 * q.n_active / d.n_active : 0).toFixed(1)}% of active)`),
      el("div", { class: "examples" }, ...q.examples.map(e => example(e, d.max_act, status))));
  return box;
}

function fmt(v: number | undefined): string {
  return v === undefined ? "—" : v.toFixed(2);
}

function stat(label: string, value: string, id: string): HTMLElement {
  return el("div", { class: "stat" }, el("div", { class: "muted" }, label), el("div", { class: "value", "data-testid": `stat-${id}` }, value));
}

/** A bar chart on canvas: counts[k] in (edges[k], edges[k+1]]; hover shows the bin. */
function histogram(edges: number[], counts: number[], color: string, what: string): HTMLElement {
  const W = 360, H = 130, pad = 18;
  const [c, g] = canvas(W, H, `${what} histogram`);
  const max = Math.max(1, ...counts), bw = (W - 2) / counts.length;
  g.fillStyle = color;
  counts.forEach((n, k) => { const h = (n / max) * (H - pad - 4); g.fillRect(1 + k * bw, H - pad - h, Math.max(1, bw - 1), h); });
  g.fillStyle = "#556";
  g.font = "11px ui-monospace, monospace";
  g.textBaseline = "top";
  g.textAlign = "left"; g.fillText(edges[0].toFixed(2), 1, H - pad + 3);
  g.textAlign = "right"; g.fillText(edges[edges.length - 1].toFixed(2), W - 1, H - pad + 3);
  const status = el("div", { class: "status" }, " ");
  c.addEventListener("mousemove", e => {
    const k = Math.floor((e.clientX - c.getBoundingClientRect().left - 1) / bw);
    if (k >= 0 && k < counts.length) status.textContent = `(${edges[k].toFixed(3)}, ${edges[k + 1].toFixed(3)}]: ${counts[k].toLocaleString()}`;
  });
  return el("div", {}, c, status);
}

function logitTable(d: FeatureDashboard): HTMLElement {
  const rows = Math.max(d.promoted.length, d.suppressed.length);
  const cell = (x: { token_id: number; token_str: string | null; value: number } | undefined, cls: string) => x
    ? [el("td", { class: `${cls} logit-token` }, show(x.token_str ?? `<${x.token_id}>`)), el("td", { class: cls }, (x.value >= 0 ? "+" : "") + x.value.toFixed(3))]
    : [el("td", {}), el("td", {})];
  return el("table", { "data-testid": "logits" },
    el("thead", {}, el("tr", {}, el("th", {}, "promoted"), el("th", {}, ""), el("th", {}, "suppressed"), el("th", {}, ""))),
    el("tbody", {}, ...Array.from({ length: rows }, (_, i) => el("tr", {}, ...cell(d.promoted[i], "pos"), ...cell(d.suppressed[i], "neg")))));
}

/** An example's window, each token shaded by its activation relative to the feature's max; the example token outlined. */
function example(e: ExampleView, max: number, status: HTMLElement): HTMLElement {
  // Focusable as one line (not one stop per token); ←/→ move along its tokens as hovering does.
  const line = el("div", { class: "example", tabindex: "0", "aria-label": `example, activation ${e.activation.toFixed(2)}; arrow keys read each token's activation` },
    el("span", { class: "act" }, e.activation.toFixed(2)));
  const spans: HTMLElement[] = [];
  const describe = (j: number) => {
    const id = e.tokens[j], text = show(e.token_strs[j] ?? `<${id}>`);
    status.textContent = `${text} (id ${id}, position ${e.window_start + j}): activation ${e.acts[j].toFixed(4)}`;
    spans.forEach((s, k) => s.classList.toggle("cursor", k === j));
  };
  e.tokens.forEach((id, j) => {
    const a = e.acts[j], text = e.token_strs[j] ?? `<${id}>`;
    const span = el("span", { class: e.window_start + j === e.position ? "tok here" : "tok", "data-act": a.toFixed(4), "data-testid": "example-token" }, show(text));
    if (a > 0) span.style.backgroundColor = `rgba(224, 123, 22, ${Math.min(1, a / (max || 1)).toFixed(3)})`;
    span.title = `${show(text)} (id ${id}): ${a.toFixed(4)}`;
    span.addEventListener("mouseenter", () => describe(j));
    spans.push(span);
    line.append(span);
  });
  let cursor = e.position - e.window_start;
  line.addEventListener("focus", () => describe(cursor));
  line.addEventListener("blur", () => spans.forEach(s => s.classList.remove("cursor")));
  line.addEventListener("keydown", ev => {
    const step = ev.key === "ArrowRight" ? 1 : ev.key === "ArrowLeft" ? -1 : 0;
    if (step) { ev.preventDefault(); cursor = Math.max(0, Math.min(spans.length - 1, cursor + step)); describe(cursor); }
  });
  return line;
}

function searchForms(ctx: PageContext, store: FeatureStoreView, out: HTMLElement, open: (f: number) => void): HTMLElement {
  const text = el("input", { "aria-label": "Text to search features in", "data-testid": "search-text", value: query().get("q") ?? "", placeholder: store.has_sae ? "Which features fire here? Type a text" : "text search needs the store's SAE (--sae)", disabled: !store.has_sae });
  const textForm = el("form", {}, text, el("button", { type: "submit", "data-testid": "search-text-run", disabled: !store.has_sae }, "Which features fire?"));
  textForm.addEventListener("submit", e => { e.preventDefault(); setQuery({ q: text.value, tok: null }, true); searchText(ctx, store, text.value, out, open); });
  const tok = el("input", { "aria-label": "Token to search features by", "data-testid": "search-token", value: query().get("tok") ?? "", placeholder: "a token, e.g. ' dog' or id:42" });
  const tokForm = el("form", {}, tok, el("button", { type: "submit", "data-testid": "search-token-run" }, "Features by token"));
  tokForm.addEventListener("submit", e => { e.preventDefault(); setQuery({ tok: tok.value, q: null }, true); searchToken(store, tok.value, out, open); });
  if (query().get("q")) searchText(ctx, store, query().get("q")!, out, open);
  else if (query().get("tok")) searchToken(store, query().get("tok")!, out, open);
  return el("div", { class: "searches" }, textForm, tokForm);
}

function featureChip(f: number, label: string, open: (f: number) => void): HTMLElement {
  const b = el("button", { class: "chip", "data-testid": "feature-chip", "data-feature": String(f) }, `#${f}`, el("span", { class: "muted" }, ` ${label}`));
  b.addEventListener("click", () => open(f));
  return b;
}

function searchText(ctx: PageContext, store: FeatureStoreView, text: string, out: HTMLElement, open: (f: number) => void): void {
  out.replaceChildren(el("p", { class: "muted" }, "Running the model and the SAE…"));
  api<TextSearchView>(`/api/features/${store.id}/search-text`, { ...promptBody(text, ctx.model), per_token: 12 }).then(r => {
    const list = el("div", { class: "chips", "data-testid": "active-features" });
    const max = Math.max(1e-9, ...r.features.flat().map(a => a.activation));
    const tokens = r.tokens.map((t, i) => {
      const top = r.features[i][0]?.activation ?? 0;
      const b = el("button", { class: "token", "data-testid": "search-token-pos", title: `${r.features[i].length} features active` }, show(t.text));
      if (top > 0) b.style.backgroundColor = `rgba(224, 123, 22, ${(top / max).toFixed(3)})`;
      const select = () => {
        tokens.forEach(x => x.setAttribute("aria-pressed", "false"));
        b.setAttribute("aria-pressed", "true");
        list.replaceChildren(el("span", { class: "muted" }, `position ${i} (${show(t.text)}): `),
          ...(r.features[i].length ? r.features[i].map(a => featureChip(a.feature, a.activation.toFixed(2), open)) : [el("span", { class: "muted" }, "no feature active")]));
      };
      b.addEventListener("mouseenter", select);
      b.addEventListener("focus", select);
      b.addEventListener("click", select);
      return b;
    });
    out.replaceChildren(el("div", { class: "panel" }, el("div", { class: "muted" }, "Tokens shaded by their strongest feature; hover or focus one for the features active there (click one to open it)."),
      el("div", { class: "tokens" }, ...tokens), list));
    if (tokens.length) tokens[tokens.length - 1].dispatchEvent(new Event("mouseenter"));
  }, e => out.replaceChildren(el("p", { class: "error", role: "alert" }, String(e.message ?? e))));
}

function searchToken(store: FeatureStoreView, token: string, out: HTMLElement, open: (f: number) => void): void {
  out.replaceChildren(el("p", { class: "muted" }, "Searching…"));
  api<TokenSearchView>(`/api/features/${store.id}/search-token?token=${encodeURIComponent(token)}`).then(r => {
    out.replaceChildren(el("div", { class: "panel" },
      el("div", { class: "muted" }, `Features whose top examples sit on ${r.tokens.map(t => `${show(t.text)} (id ${t.id})`).join(", ")}: ${r.features.length}`),
      el("div", { class: "chips", "data-testid": "token-features" }, ...r.features.map(h => featureChip(h.feature, `${h.examples}× max ${h.max_activation.toFixed(2)}`, open)))));
  }, e => out.replaceChildren(el("p", { class: "error", role: "alert" }, String(e.message ?? e))));
}

interface FeatureStoreJobResult { store_id: string; name: string; hook: string; d_sae: number; tokens: number; dead_features: number; contexts: number; warning?: string | null }

/** "Build a feature store": the --sae dictionary harvested over a served .txt file or pasted texts, as a job; opened when done. */
function buildForm(holder: HTMLElement, opened: (storeId: string) => void): void {
  api<JobKinds>("/api/jobs/kinds").then(kinds => {
    if (!kinds.feature_store.available) {
      holder.replaceChildren(el("details", { class: "job" }, el("summary", {}, "Build a feature store"), el("p", { class: "muted" }, `Not available: ${kinds.feature_store.reason}`)));
      return;
    }
    const source = el("select", { "aria-label": "text source", "data-testid": "build-source" },
      el("option", { value: "" }, "texts typed below (paragraphs separated by a blank line)"),
      ...kinds.texts.map(t => el("option", { value: t.id }, `served file · ${t.name} (${(t.bytes / 1024).toFixed(1)} KiB)`)));
    const texts = el("textarea", { "aria-label": "texts", "data-testid": "build-texts", placeholder: "One document per paragraph…" });
    const name = el("input", { "aria-label": "store name", "data-testid": "build-name", placeholder: "name (letters, digits, - _)", class: "short", autocomplete: "off" });
    const contexts = el("input", { type: "number", min: "1", max: "4096", value: "512", "aria-label": "contexts at most", "data-testid": "build-contexts", class: "short" });
    const size = el("input", { type: "number", min: "2", max: "1024", value: "64", "aria-label": "tokens per context", "data-testid": "build-context-size", class: "short" });
    const run = el("button", { type: "submit", "data-testid": "build-run" }, "Build store");
    const warning = el("p", { class: "warning", role: "status", "data-testid": "build-warning", hidden: true });
    const runner = new JobRunner<FeatureStoreJobResult>(r => {
      warning.textContent = r.warning ? `warning: ${r.warning}` : "";
      warning.hidden = !r.warning;
      opened(r.store_id);
    }, () => { run.disabled = false; });
    const syncSource = () => { texts.hidden = source.value !== ""; };
    source.addEventListener("change", syncSource);
    if (kinds.texts.length > 0) source.value = kinds.texts[0].id;
    syncSource();
    const form = el("form", { class: "job-form panel", "data-testid": "build-form" }, el("label", {}, "from ", source), texts,
      el("label", {}, "name ", name), el("label", {}, "contexts ≤ ", contexts), el("label", {}, "tokens each ", size), run);
    form.addEventListener("submit", e => {
      e.preventDefault();
      run.disabled = true;
      const body: Record<string, unknown> = { max_contexts: Number(contexts.value) || 512, context_size: Number(size.value) || 64 };
      if (source.value) body.artifact = source.value;
      else body.texts = texts.value.split(/\n\s*\n/).filter(t => t.trim().length > 0);
      if (name.value) body.name = name.value;
      runner.start("feature-store", body).catch(() => { run.disabled = false; });
    });
    holder.replaceChildren(el("details", { class: "job", "data-testid": "build-details" },
      el("summary", {}, "Build a feature store"),
      el("p", { class: "muted" }, "Runs the model over the texts and encodes the --sae dictionary at every token, as `loupe features build`: density, top and interval examples, histograms, promoted/suppressed tokens. The store is written next to the served artifacts (stores/NAME.features.db), then listed here; a cancelled build leaves nothing."),
      form, runner.element, warning));
  }, () => undefined);
}
