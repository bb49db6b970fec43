import "./style.css";
import { api, ModelView } from "./api";
import { el } from "./dom";
import { promptPage } from "./prompt";
import { attentionPage } from "./attention";
import { graphPage } from "./graph";
import { circuitsPage } from "./circuits";
import { featuresPage } from "./features";
import { steeringPage } from "./steering";

export interface PageContext { model: ModelView | null; root: HTMLElement; navigate: (path: string) => void }

interface Route { path: string; title: string; render: (ctx: PageContext) => void }

const routes: Route[] = [
  { path: "/prompt", title: "Prompt", render: promptPage },
  { path: "/attention", title: "Attention", render: attentionPage },
  { path: "/features", title: "Features", render: featuresPage },
  { path: "/graph", title: "Graph", render: graphPage },
  { path: "/circuits", title: "Circuits", render: circuitsPage },
  { path: "/steering", title: "Steering", render: steeringPage },
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
    el("span", { class: "model", "data-testid": "model" }, model ? `${model.name} · ${model.family} · ${model.layers} layers × ${model.heads} heads · d_model ${model.d_model}` : "model: loading…"));
  const main = el("main", { id: "main", tabindex: "-1" });
  app.replaceChildren(header, main);
  route.render({ model, root: main, navigate });
}

function navigate(path: string): void {
  // The prompt travels between pages; page-specific state (a selected head, a position) does not.
  const text = new URLSearchParams(location.search).get("text");
  history.pushState(null, "", path + (text ? `?text=${encodeURIComponent(text)}` : ""));
  render();
  document.getElementById("main")?.focus();
}

window.addEventListener("popstate", render);
api<ModelView>("/api/model").then(m => { model = m; render(); }, () => render());
