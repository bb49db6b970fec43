import { el, setQuery } from "./dom";
import { JobKinds, JobRunner } from "./jobs";

// "Trace a prompt": an attribution graph made by the server as a job (POST /api/jobs/graph, as `loupe attribute`),
// written into the served folder and opened here when done.

interface GraphJobResult { artifact_id: string; name: string; active_features: number; feature_nodes: number; kept_nodes: number; replacement_score: number; completeness_score: number; seconds: number }

/** The form and its job runner inside a collapsed section; <paramref name="opened"/> is called with the new graph's id. */
export function graphJobForm(holder: HTMLElement, opened: (artifactId: string) => void): void {
  fetch("/api/jobs/kinds").then(r => r.json() as Promise<JobKinds & { graph?: { available: boolean; reason: string | null } }>).then(kinds => {
    if (!kinds.graph) return;
    if (!kinds.graph.available) {
      holder.replaceChildren(el("details", { class: "job", "data-testid": "trace-details" }, el("summary", {}, "Trace a prompt"), el("p", { class: "muted" }, `Not available: ${kinds.graph.reason}`)));
      return;
    }
    const prompt = el("input", { "aria-label": "prompt to trace", "data-testid": "trace-prompt", placeholder: "a prompt", class: "wide", autocomplete: "off" });
    const nodes = el("input", { type: "number", min: "1", max: "65536", value: "4096", "aria-label": "feature nodes at most", "data-testid": "trace-nodes", class: "short" });
    const targets = el("input", { "aria-label": "tokens to explain", "data-testid": "trace-targets", placeholder: "top tokens, or e.g. \" Paris\"|\" London\"", class: "short", autocomplete: "off",
      title: "Empty: the most likely next tokens. One token's text to explain that token; two separated by | to explain logit(first) − logit(second)." });
    const name = el("input", { "aria-label": "graph name", "data-testid": "trace-name", placeholder: "name (letters, digits, - _)", class: "short", autocomplete: "off" });
    const run = el("button", { type: "submit", "data-testid": "trace-run" }, "Trace");
    const runner = new JobRunner<GraphJobResult>(r => {
      setQuery({ graph: r.artifact_id, pin: null, sn: null }, true);
      opened(r.artifact_id);
    }, () => { run.disabled = false; });
    const form = el("form", { class: "job-form panel", "data-testid": "trace-form" }, el("label", {}, "prompt ", prompt),
      el("label", {}, "feature nodes ≤ ", nodes), el("label", {}, "explain ", targets), el("label", {}, "name ", name), run);
    form.addEventListener("submit", e => {
      e.preventDefault();
      if (!prompt.value.trim()) return;
      run.disabled = true;
      const body: Record<string, unknown> = { prompt: prompt.value, max_feature_nodes: Number(nodes.value) || 4096 };
      if (name.value) body.name = name.value;
      // one token: explain it; "X|Y": explain logit(X) − logit(Y)
      const parts = targets.value ? targets.value.split("|") : [];
      if (parts.length === 1) body.targets = parts;
      else if (parts.length === 2) body.logit_diff = parts;
      else if (parts.length > 2) { runner.fail("explain: one token, or two separated by |"); run.disabled = false; return; }
      runner.start("graph", body).catch(() => { run.disabled = false; });
    });
    holder.replaceChildren(el("details", { class: "job", "data-testid": "trace-details" },
      el("summary", {}, "Trace a prompt"),
      el("p", { class: "muted" }, "Attributes the prompt through the --transcoders replacement, as `loupe attribute`: features, error nodes, tokens and top logits with their direct effects, pruned at circuit-tracer's thresholds. The graph is written to graphs/NAME.json in the served folder and opened here."),
      form, runner.element));
  }, () => undefined);
}
