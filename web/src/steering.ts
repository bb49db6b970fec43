import { api, SteeringSourcesView } from "./api";
import { el, query, setQuery } from "./dom";
import { defaultPrompt } from "./prompt";
import type { PageContext } from "./main";

// Steered vs. unsteered continuations side by side, streamed token by token (server-sent events); Stop closes the
// stream, which cancels the generation on the server. State in the URL: ?text=&source=&hook=&coeff=&n=&positions=&project_out=&temperature=&seed=.

interface TokenEvent { side: "unsteered" | "steered"; index: number; id: number; text: string }
interface StartEvent { hook: string; description: string; positions: string; max_new_tokens: number; prompt: { id: number; text: string }[]; prompt_text: string }
interface DoneEvent { unsteered: number[]; steered: number[]; unsteered_text: string; steered_text: string; trait: { hook: string; threshold: number; unsteered: number; steered: number } | null }

export function steeringPage(ctx: PageContext): void {
  ctx.root.append(el("h1", {}, "Steering"));
  const body = el("div", {});
  ctx.root.append(body);
  api<SteeringSourcesView>("/api/steering/sources").then(s => build(body, s),
    e => body.append(el("p", { class: "error", role: "alert" }, String(e.message ?? e))));
}

function build(body: HTMLElement, sources: SteeringSourcesView): void {
  const q = query();
  const prompt = el("input", { "aria-label": "Prompt", "data-testid": "steer-prompt", value: q.get("text") ?? defaultPrompt, autocomplete: "off" });

  // Source: a vector file, or a feature of a store (its decoder direction); kept as "vector:ID" / "feature:STORE:F".
  const initial = q.get("source") ?? "";
  const kind = el("select", { "aria-label": "Steer with", "data-testid": "steer-kind" },
    ...sources.stores.map(s => el("option", { value: `feature:${s.id}` }, `SAE feature · ${s.name} (${s.hook})`)),
    ...sources.vectors.map(v => el("option", { value: `vector:${v.id}` }, `vector · ${v.name}${v.hook ? ` (${v.hook})` : ""} ‖v‖ ${v.norm.toFixed(2)}`)));
  const feature = el("input", { type: "number", min: "0", "aria-label": "Feature", "data-testid": "steer-feature", value: "0" });
  const m = initial.match(/^feature:([0-9a-f]+):(\d+)$/);
  if (m) { kind.value = `feature:${m[1]}`; feature.value = m[2]; }
  else if (initial.startsWith("vector:")) kind.value = initial;
  const featureField = el("label", {}, "feature ", feature);
  const syncKind = () => { featureField.hidden = !kind.value.startsWith("feature:"); };
  kind.addEventListener("change", syncKind);
  syncKind();

  const hook = el("select", { "aria-label": "Hook", "data-testid": "steer-hook" },
    el("option", { value: "" }, "the source's own hook"), ...sources.hooks.map(h => el("option", { value: h }, h)));
  hook.value = q.get("hook") ?? "";
  const coeff = el("input", { type: "number", step: "0.5", "aria-label": "Coefficient", "data-testid": "steer-coeff", value: q.get("coeff") ?? "8" });
  const count = el("input", { type: "number", min: "1", max: "256", "aria-label": "New tokens", "data-testid": "steer-n", value: q.get("n") ?? "40" });
  // How the direction is applied (SteeringRun.Edit): add c·v, or remove c × the component along v; where (all positions, only
  // the generated tokens, or from a position on); and sampling (temperature 0 = greedy; a seed makes a sample repeatable).
  const mode = el("select", { "aria-label": "Mode", "data-testid": "steer-mode" },
    el("option", { value: "add" }, "add c·v"), el("option", { value: "project_out", title: "remove c × the component along v" }, "project out (−c × component along v)"));
  mode.value = q.get("project_out") === "true" ? "project_out" : "add";
  const positions = el("select", { "aria-label": "Positions", "data-testid": "steer-positions" },
    el("option", { value: "all" }, "all positions"), el("option", { value: "new" }, "generated tokens only"), el("option", { value: "from" }, "from position…"));
  const from = el("input", { type: "number", min: "0", "aria-label": "From position", "data-testid": "steer-from", value: "0" });
  const givenPositions = q.get("positions") ?? "all";
  const fromMatch = givenPositions.match(/^from:(\d+)$/);
  positions.value = fromMatch ? "from" : givenPositions === "new" ? "new" : "all";
  if (fromMatch) from.value = fromMatch[1];
  const fromField = el("label", {}, "position ", from);
  const syncPositions = () => { fromField.hidden = positions.value !== "from"; };
  positions.addEventListener("change", syncPositions);
  syncPositions();
  const temperature = el("input", { type: "number", min: "0", max: "2", step: "0.1", "aria-label": "Temperature", "data-testid": "steer-temperature", value: q.get("temperature") ?? "0" });
  const seed = el("input", { type: "number", step: "1", "aria-label": "Seed", "data-testid": "steer-seed", value: q.get("seed") ?? "0" });
  const run = el("button", { type: "submit", "data-testid": "steer-run" }, "Generate");
  const stop = el("button", { type: "button", "data-testid": "steer-stop", disabled: true }, "Stop");
  const form = el("form", { class: "steer-form" }, prompt,
    el("div", { class: "row" }, el("label", {}, "steer with ", kind), featureField, el("label", {}, "at ", hook),
      el("label", {}, "coefficient ", coeff), el("label", {}, "tokens ", count)),
    el("div", { class: "row" }, el("label", {}, "mode ", mode), el("label", {}, "positions ", positions), fromField,
      el("label", { title: "0 = greedy" }, "temperature ", temperature), el("label", {}, "seed ", seed), run, stop));

  const status = el("div", { class: "status", "data-testid": "steer-status", "aria-live": "polite" }, sources.stores.length + sources.vectors.length === 0
    ? "Nothing to steer with: serve a feature store with its SAE (--features, --sae) or put steering/persona vector files (.safetensors) under --graphs."
    : "Pick a source and a coefficient, then Generate.");
  const column = (side: string, title: string) => el("div", { class: "steer-col panel" }, el("h2", {}, title), el("div", { class: "steer-text", "data-testid": `steer-${side}` }));
  const left = column("unsteered", "Unsteered"), right = column("steered", "Steered");
  body.append(form, status, el("div", { class: "steer-cols" }, left, right));

  let stream: EventSource | null = null;
  const finish = (message: string) => {
    stream?.close();
    stream = null;
    run.disabled = false;
    stop.disabled = true;
    status.textContent = message;
  };
  stop.addEventListener("click", () => finish("stopped (the server cancels the generation)"));

  form.addEventListener("submit", e => {
    e.preventDefault();
    if (!kind.value) return;
    stream?.close();
    const source = kind.value.startsWith("feature:") ? `${kind.value}:${Number(feature.value) || 0}` : kind.value;
    const where = positions.value === "from" ? `from:${Math.max(0, Number(from.value) || 0)}` : positions.value;
    const temp = Math.max(0, Number(temperature.value) || 0);
    const params: Record<string, string> = { text: prompt.value, source, coeff: coeff.value, n: count.value, positions: where };
    if (hook.value) params.hook = hook.value;
    if (mode.value === "project_out") params.project_out = "true";
    if (temp > 0) { params.temperature = String(temp); params.seed = String(Math.trunc(Number(seed.value) || 0)); }
    setQuery({
      text: prompt.value, source, coeff: coeff.value, n: count.value, hook: hook.value || null, positions: where === "all" ? null : where,
      project_out: mode.value === "project_out" ? "true" : null, temperature: temp > 0 ? String(temp) : null, seed: temp > 0 ? params.seed : null,
    }, true);
    const url = `/api/steering/stream?${new URLSearchParams(params).toString()}`;
    const texts = { unsteered: left.querySelector(".steer-text")!, steered: right.querySelector(".steer-text")! };
    const counts = { unsteered: 0, steered: 0 };
    let total = 0;
    run.disabled = true;
    stop.disabled = false;
    status.textContent = "starting…";
    delete status.dataset.done; // the previous run's; set again when this one ends
    stream = new EventSource(url);
    stream.addEventListener("start", ev => {
      const s = JSON.parse((ev as MessageEvent).data) as StartEvent;
      total = s.max_new_tokens;
      for (const t of Object.values(texts)) t.replaceChildren(el("span", { class: "steer-prompt" }, s.prompt_text));
      for (const col of [left, right]) col.querySelector(".trait")?.remove();
      status.textContent = `${s.description} at ${s.hook}, positions ${s.positions}: streaming…`;
      status.dataset.description = s.description;
      status.dataset.where = `${s.hook}, positions ${s.positions}${params.temperature ? `, temperature ${params.temperature}, seed ${params.seed}` : ", greedy"}`;
    });
    stream.addEventListener("token", ev => {
      const t = JSON.parse((ev as MessageEvent).data) as TokenEvent;
      counts[t.side]++;
      const span = el("span", { class: `steer-tok ${t.side}`, "data-id": String(t.id), "data-testid": `tok-${t.side}`, title: `id ${t.id}` }, t.text);
      texts[t.side].append(span);
      status.textContent = `streaming ${t.side}: ${counts[t.side]} of at most ${total} tokens`;
    });
    stream.addEventListener("done", ev => {
      const d = JSON.parse((ev as MessageEvent).data) as DoneEvent;
      finish(`done: ${d.unsteered.length} unsteered and ${d.steered.length} steered tokens · ${status.dataset.description ?? ""} at ${status.dataset.where ?? ""}`);
      for (const side of ["unsteered", "steered"] as const) {
        const col = side === "steered" ? right : left;
        col.querySelector(".trait")?.remove();
        if (d.trait) col.append(el("div", { class: "trait muted", "data-testid": `trait-${side}`, "data-value": String(d.trait[side]) },
          `persona projection of the continuation: ${d.trait[side].toFixed(3)} (threshold ${d.trait.threshold.toFixed(3)}: ${d.trait[side] > d.trait.threshold ? "expresses the trait" : "does not"})`));
      }
      status.dataset.done = "true";
    });
    stream.addEventListener("failure", ev => finish(`error: ${JSON.parse((ev as MessageEvent).data).error}`));
    stream.onerror = () => {
      if (!stream) return;
      // A refused request (400) arrives as a plain error: ask again for its message.
      const failed = stream;
      finish("the stream ended");
      failed.close();
      const probe = new AbortController();
      fetch(url, { signal: probe.signal }).then(r => { if (r.ok) { probe.abort(); return null; } return r.json(); })
        .then(j => { if (j?.error) status.textContent = `error: ${j.error}`; }, () => undefined);
    };
  });
}
