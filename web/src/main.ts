import "./style.css";
import { api, ModelView } from "./api";
import { el } from "./dom";
import { promptPage } from "./prompt";
import { attentionPage } from "./attention";
import { graphPage } from "./graph";
import { circuitsPage } from "./circuits";
import { featuresPage } from "./features";
import { steeringPage } from "./steering";
import { diffPage } from "./diff";

export interface PageContext { model: ModelView | null; root: HTMLElement; navigate: (path: string) => void }

/** `standalone`: the page needs nothing from /api/model, so it renders at once instead of after the model answers. */
interface Route { path: string; title: string; render: (ctx: PageContext) => void; standalone?: boolean }

const routes: Route[] = [
  { path: "/prompt", title: "Prompt", render: promptPage },
  { path: "/attention", title: "Attention", render: attentionPage },
  { path: "/features", title: "Features", render: featuresPage },
  { path: "/graph", title: "Graph", render: graphPage, standalone: true },
  { path: "/circuits", title: "Circuits", render: circuitsPage, standalone: true },
  { path: "/steering", title: "Steering", render: steeringPage },
  { path: "/diff", title: "Diff", render: diffPage, standalone: true },
];

let model: ModelView | null = null;
const app = document.getElementById("app")!;

function render(): void {
  const route = routes.find(r => r.path === location.pathname) ?? routes[0];
  if (location.pathname !== route.path) history.replaceState(null, "", route.path + location.search);
  document.title = `${route.title} · Loupe`;
  const nav = el("nav", { "aria-label": "Pages" },
    ...routes.map(r => {
      const a = el("a", { href: r.path, "aria-current": r === route ? "page" : undefined }, r.title);
      a.addEventListener("click", e => { e.preventDefault(); navigate(r.path); });
      return a;
    }));
  const header = el("header", {},
    el("span", { class: "brand" }, "Loupe"),
    nav,
    el("span", { class: "model", "data-testid": "model" }, modelLabel()));
  const main = el("main", { id: "main", tabindex: "-1" });
  app.replaceChildren(header, main);
  route.render({ model, root: main, navigate });
}

function modelLabel(): string {
  return model ? `${model.name} · ${model.family} · ${model.layers} layers × ${model.heads} heads · d_model ${model.d_model}` : "model: loading…";
}

function currentRoute(): Route {
  return routes.find(r => r.path === location.pathname) ?? routes[0];
}

function navigate(path: string): void {
  // The prompt travels between pages; page-specific state (a selected head, a position) does not.
  const text = new URLSearchParams(location.search).get("text");
  history.pushState(null, "", path + (text ? `?text=${encodeURIComponent(text)}` : ""));
  render();
  document.getElementById("main")?.focus();
}

window.addEventListener("popstate", render);
// Standalone pages (a large graph) start loading at once; the others wait for the model's description.
if (currentRoute().standalone) render();
api<ModelView>("/api/model").then(m => {
  model = m;
  const label = document.querySelector<HTMLElement>('[data-testid="model"]');
  if (currentRoute().standalone && label) label.textContent = modelLabel();
  else render();
}, () => { if (!currentRoute().standalone) render(); });
